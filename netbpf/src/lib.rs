//! netbpf: container networking with the hot path in eBPF.
//!
//! # Layout
//!
//! Data flows one way: [`cli`] → [`api`] (HTTP+JSON over a Unix socket) → [`controller`] →
//! [`netlink`]/[`netns`]/[`datapath`].
//!
//! - [`cli`]: the `netbpf` commands; everything but `daemon` is a thin API client.
//! - [`daemon`]: host preparation, the API server's lifetime, clean shutdown.
//! - [`api`]: request/response types, the server routes, the client.
//! - [`controller`]: the one place that changes networks and containers, in order.
//! - [`network`]: bridge devices and the Docker-shaped network view.
//! - [`endpoint`]: a veth pair wiring a container namespace to a bridge.
//! - [`container`]: container processes: spawn, watch, signal, exec.
//! - [`ipam`]: pure address allocation.
//! - [`publish`]: `-p` specs, host port choice and reservation.
//! - [`datapath`]: the only aya user: load, attach, pin, typed map updates.
//! - [`dns`]: the embedded DNS at 127.0.0.11, resolv.conf and hosts files.
//! - [`netlink`], [`netns`]: typed netlink verbs; running code in a namespace.
//! - [`state`]: the crash-safe state file.

pub mod api;
pub mod cli;
pub mod container;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod dns;
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
pub mod uplink;
