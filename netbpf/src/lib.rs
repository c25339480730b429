//! netbpf: container networking with the hot path in eBPF.
//!
//! # Layout
//!
//! Data flows one way: [`cli`] → [`api`] (HTTP+JSON over a Unix socket) → [`controller`] →
//! services → [`netlink`]/[`netns`]/[`datapath`]. Nothing below the API knows HTTP; nothing
//! above the services touches the kernel. docs/architecture.md has the full map.
//!
//! - [`cli`]: the commands; [`cli::daemon`] runs the daemon, the rest are thin API clients
//!   ([`cli::cni`] too: the CNI plugin).
//! - [`docker`]: Docker's remote network driver protocol, served by the daemon.
//! - [`api`]: routes, request and view types, body → typed spec, pure views of the state.
//! - [`controller`]: the one place that changes networks and containers, in order, with one
//!   undo list per operation; the endpoint operation every front-end uses.
//! - Services, each owning its state: [`publish`] (`Ports`), [`names`] (`Names`),
//!   [`uplink`] (`Uplink`), [`overlay`] (`Overlay`), [`exits`] (`Exits`).
//! - Mechanisms: [`network`] (bridges), [`endpoint`] (veth pairs), [`macvlan`] (macvlan and
//!   ipvlan), [`container`] (processes), [`dns`] (the embedded DNS), [`ipam`] (pure address
//!   allocation), [`datapath`] (the only aya user), [`netlink`], [`netns`], [`sysctl`].
//! - [`state`]: the records and the crash-safe state file; [`lock`]: taking locks.

pub mod api;
pub mod cli;
pub mod container;
pub mod controller;
pub mod datapath;
pub mod dns;
pub mod docker;
pub mod endpoint;
pub mod exits;
pub mod ipam;
pub mod lock;
pub mod macvlan;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod overlay;
pub mod publish;
pub mod state;
pub mod sysctl;
pub mod uplink;
