//! The daemon's local API: HTTP+JSON over a Unix socket, so `curl --unix-socket` works too.
//!
//! Routes (all JSON; errors are `{"message": "..."}` with 400, 404, 409 or 500):
//!
//! ```text
//! GET    /info                           daemon, uplink, pin dir, program and map ids
//! GET    /networks                       POST /networks                 (NetworkCreate)
//! GET    /networks/{name}                DELETE /networks/{name}
//! POST   /networks/{name}/connect        (ConnectRequest)
//! POST   /networks/{name}/disconnect     (DisconnectRequest)
//! POST   /networks/prune
//! GET    /containers?all=true            POST /containers               (ContainerCreate)
//! POST   /containers/attach              (AttachRequest)
//! GET    /containers/{name}              DELETE /containers/{name}?force=true
//! POST   /containers/{name}/start        POST /containers/{name}/stop?timeout=10
//! POST   /containers/{name}/exec         (ExecRequest) -> ExecResponse
//! POST   /containers/{name}/wait         -> WaitResponse
//! GET    /containers/{name}/logs?follow=true    raw bytes, streamed while it runs
//! GET    /containers/{name}/port         published ports, as `docker port` prints them
//! GET    /stats                          per-endpoint counters from the BPF maps
//! POST   /cni/{add,del,check,gc}         the CNI plugin's calls ([`cni`])
//! ```

pub mod client;
pub mod cni;
pub mod peer;
pub mod requests;
pub mod server;
pub mod views;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An error as the API reports it: an HTTP status and a one-line message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self {
            status: 500,
            message: message.to_string(),
        }
    }
}

impl From<crate::controller::Error> for ApiError {
    fn from(e: crate::controller::Error) -> Self {
        use crate::controller::Error;
        let status = match &e {
            Error::Invalid(_) => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::NotYet(_) => 503,
            _ => 500,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    pub driver: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    #[serde(default)]
    pub internal: bool,
    /// Driver options (`-o KEY=VALUE`): `parent`, `macvlan_mode`, `ipvlan_mode`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub container: String,
    pub ip: Option<String>,
    /// `--alias` names on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DisconnectRequest {
    pub container: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerCreate {
    pub name: String,
    pub cmd: Vec<String>,
    /// `bridge` (default), a network name, `host`, `none` or `container:NAME`.
    pub network: Option<String>,
    pub ip: Option<String>,
    /// Remove the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// `-p` specs.
    #[serde(default)]
    pub ports: Vec<String>,
    /// `--network-alias` names on its network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--link NAME[:ALIAS]`.
    #[serde(default)]
    pub links: Vec<String>,
    /// `--dns` servers.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--dns-search` domains.
    #[serde(default)]
    pub dns_search: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttachRequest {
    pub name: String,
    pub pid: Option<i32>,
    pub netns: Option<String>,
    pub network: Option<String>,
    pub ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecResponse {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WaitResponse {
    /// `None` when the exit status is unknown (the process ended while the daemon was down,
    /// or it was attached rather than started by the daemon).
    pub exit_code: Option<i32>,
}

/// `netbpf network inspect`, shaped like `docker network inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkView {
    pub name: String,
    pub id: String,
    pub created: String,
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: IpamView,
    pub internal: bool,
    pub containers: BTreeMap<String, NetworkEndpointView>,
    pub options: BTreeMap<String, String>,
    /// Overlay networks: every host with a block of the subnet (Docker shows `Peers` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerView {
    pub name: String,
    /// Its VTEP (underlay) address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Its block of the overlay subnet.
    pub block: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamView {
    pub driver: String,
    pub config: Vec<IpamConfigView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigView {
    pub subnet: String,
    pub gateway: String,
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkEndpointView {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// `netbpf inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub created: String,
    pub cmd: Vec<String>,
    pub state: ContainerStateView,
    pub network_mode: String,
    /// The network namespace (`SandboxKey` in Docker).
    pub sandbox_key: Option<String>,
    pub networks: BTreeMap<String, ContainerEndpointView>,
    /// Published ports, as `docker port` prints them.
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerStateView {
    pub status: String,
    pub running: bool,
    pub pid: i32,
    pub exit_code: Option<i32>,
    /// `pid` or `netns` when the container was attached rather than started.
    pub attached: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerEndpointView {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub gateway: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    pub ip_prefix_len: u8,
    pub mac_address: String,
    /// Name inside the container.
    pub interface: String,
    /// The host-side veth, where the fast path is attached.
    pub host_interface: String,
    pub counters: Option<CountersView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CountersView {
    pub fast_packets: u64,
    pub fast_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    /// By drop reason name.
    pub drops: BTreeMap<String, u64>,
}

/// `netbpf stats`: per endpoint, and per hook (`from_container`, `uplink_ingress`, ...)
/// the drops by reason that are not zero.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatsView {
    pub endpoints: Vec<EndpointStats>,
    pub drops: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `/stats` as any daemon answers it: a daemon of the first release sent the endpoint rows
/// alone, so a client talking to one during an upgrade still reads its answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatsAnswer {
    View(StatsView),
    Rows(Vec<EndpointStats>),
}

impl From<StatsAnswer> for StatsView {
    fn from(answer: StatsAnswer) -> Self {
        match answer {
            StatsAnswer::View(view) => view,
            StatsAnswer::Rows(endpoints) => StatsView {
                endpoints,
                drops: BTreeMap::new(),
            },
        }
    }
}

/// One row of `netbpf stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStats {
    pub container: String,
    pub network: String,
    pub interface: String,
    pub host_interface: String,
    #[serde(flatten)]
    pub counters: CountersView,
}

/// One row of `netbpf ps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub command: String,
    pub status: String,
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub pid: u32,
    pub state_dir: String,
    pub bpffs: String,
    pub uplink: Option<String>,
    /// How published ports from outside are translated on the uplink: `xdp` (an XDP stage
    /// in front of the tcx programs) or `tc` (tcx programs only).
    pub nat_mode: Option<String>,
    /// Packets the uplink XDP stage translated and redirected.
    pub xdp_redirects: u64,
    /// Tracked NAT flows at the last expiry pass: masqueraded and confirmed ones...
    pub tracked_flows: usize,
    /// ...and flows from outside whose client has not confirmed them yet (where a flood of
    /// spoofed SYNs lands).
    #[serde(default)]
    pub unconfirmed_flows: usize,
    /// The source ports masquerade uses (`MIN-MAX`), reserved in
    /// `net.ipv4.ip_local_reserved_ports` so the host's own sockets never take one. (Fields
    /// added after the first release have defaults, so this client reads an older
    /// daemon's answer.)
    #[serde(default)]
    pub masquerade_ports: String,
    pub cgroup: String,
    pub program_ids: BTreeMap<String, u32>,
    pub map_ids: BTreeMap<String, u32>,
    /// Networks and containers the last takeover could not reconcile: left as they were
    /// (their pinned programs keep serving), each with the reason.
    #[serde(default)]
    pub unreconciled: Vec<String>,
    /// With `--cluster-store`: the store and how this host's session with it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_store: Option<ClusterStoreInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStoreInfo {
    pub url: String,
    pub tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// This host's tunnel endpoint.
    pub vtep: String,
    /// A session is up (lease kept alive, watch running); overlay changes work.
    pub connected: bool,
    /// Since when it is (or is not) up, RFC 3339.
    pub since: String,
    /// The etcd lease this host's blocks and names live under, in hex (`etcdctl lease
    /// timetolive ID`); a new session, or the next daemon, takes it up again while it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The member of the store's cluster the session runs on (the next one is tried when
    /// it fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Why the last session ended or could not start, and what may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}
