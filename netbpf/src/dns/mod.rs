//! The embedded DNS at 127.0.0.11 for containers on user-defined networks, as Docker's.
//!
//! - [`table`]: pure name data, rebuilt from the state after every change;
//! - [`server`]: listeners inside each container namespace, and forwarding upstream;
//! - [`files`]: each container's `/etc/resolv.conf` and `/etc/hosts`.

pub mod files;
pub mod server;
pub mod table;
