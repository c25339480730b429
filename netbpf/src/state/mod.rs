//! The daemon's on-disk state: networks, containers and their endpoints (which are the
//! address leases).
//!
//! Layout of `--state-dir`:
//!
//! ```text
//! state.json              this module's `State`, the only source of truth for restarts
//! netns/<container id>    bind mounts keeping container network namespaces alive
//! containers/<id>/log     stdout and stderr of the container's command
//! ```
//!
//! Why a JSON file and not an embedded database: the state is small (kilobytes), changes a
//! few times a second at most, and is always written whole under the controller's lock. A
//! write goes to `state.json.tmp`, is fsynced, renamed over `state.json`, and the directory
//! is fsynced; `rename` is atomic, so after a crash or `kill -9` the file is either the old
//! or the new state, never a torn mix. Users can read it with `jq`. See docs/architecture.md.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    net::Ipv4Addr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// By name.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// By name.
    pub containers: BTreeMap<String, ContainerRecord>,
    /// The next numeric network index for the BPF maps; never reused, so a stale map entry
    /// left by a crash can never be mistaken for a new network's.
    pub next_network_index: u32,
    /// Docker networks named by `-o netbpf.name=NAME` (an overlay's: the same on every
    /// host), by Docker's network id; the others are `docker-<12 hex>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub docker_networks: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    /// Key of this network in the BPF maps.
    pub index: u32,
    /// Name of the Linux bridge device (empty for macvlan and ipvlan networks).
    pub bridge: String,
    pub created: String,
    /// macvlan and ipvlan networks: the interface their containers sit on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRecord>,
    /// This host's part of an overlay network: `subnet` is then the host's block of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayRecord>,
}

/// The overlay network a local bridge network is this host's block of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRecord {
    /// The whole overlay subnet, across hosts.
    pub subnet: Ipv4Net,
    pub vni: u32,
    pub port: u16,
}

/// What kind of network a record is, read from the fields that say so (the state file keeps
/// its shape: `parent` and `overlay` are optional fields, not a tag).
#[derive(Debug, Clone, Copy)]
pub enum NetworkKind<'a> {
    /// A Linux bridge of this host; containers join through a veth with the fast path.
    Bridge,
    /// This host's block of an overlay network: a local bridge on the block, with VXLAN to
    /// the other hosts' blocks.
    OverlayBlock(&'a OverlayRecord),
    /// macvlan or ipvlan: containers sit on the parent interface, outside the fast path.
    Direct(&'a ParentRecord),
}

impl NetworkKind<'_> {
    /// Whether containers join through a veth on a bridge, where the BPF fast path runs.
    pub fn has_bridge(self) -> bool {
        !matches!(self, NetworkKind::Direct(_))
    }
}

impl NetworkRecord {
    pub fn kind(&self) -> NetworkKind<'_> {
        match (&self.parent, &self.overlay) {
            (Some(parent), _) => NetworkKind::Direct(parent),
            (None, Some(overlay)) => NetworkKind::OverlayBlock(overlay),
            (None, None) => NetworkKind::Bridge,
        }
    }
}

/// Finds a record by its name, or else by a unique prefix of its id, as Docker does.
fn by_name_or_id_prefix<'a, T>(
    records: &'a BTreeMap<String, T>,
    key: &str,
    id: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    records.get(key).or_else(|| {
        let mut hits = records.values().filter(|r| id(r).starts_with(key));
        match (hits.next(), hits.next()) {
            (Some(r), None) if !key.is_empty() => Some(r),
            _ => None,
        }
    })
}

impl State {
    /// A network by name or unique id prefix.
    pub fn network(&self, key: &str) -> Option<&NetworkRecord> {
        by_name_or_id_prefix(&self.networks, key, |n| &n.id)
    }

    /// A container by name or unique id prefix.
    pub fn container(&self, key: &str) -> Option<&ContainerRecord> {
        by_name_or_id_prefix(&self.containers, key, |c| &c.id)
    }

    /// Names of the containers with an endpoint request on `network`.
    pub fn users_of(&self, network: &str) -> Vec<&str> {
        self.containers
            .values()
            .filter(|c| c.networks.iter().any(|r| r.network == network))
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// The parent interface of a macvlan or ipvlan network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRecord {
    /// `eth1`, or `eth1.60` for a VLAN sub-interface.
    pub name: String,
    /// The VLAN sub-interface was made with the network and goes with it.
    pub created_vlan: bool,
    /// `macvlan_mode` (bridge, private, vepa, passthru) or `ipvlan_mode` (l2, l3, l3s).
    pub mode: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

/// How a container gets its network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum NetworkMode {
    /// Its own namespace, wired into one or more networks of any kind (bridge, overlay,
    /// macvlan, ipvlan). Recorded as `bridge`, Docker's name for the default mode.
    #[serde(rename = "bridge")]
    Networks,
    /// The daemon's ("host") namespace.
    Host,
    /// Its own namespace with only `lo`.
    None,
    /// The namespace of another container (by name).
    Container(String),
}

impl NetworkMode {
    /// As `--network` names it.
    pub fn name(&self) -> String {
        match self {
            NetworkMode::Networks => "bridge".into(),
            NetworkMode::Host => "host".into(),
            NetworkMode::None => "none".into(),
            NetworkMode::Container(name) => format!("container:{name}"),
        }
    }
}

/// A network the container should be on while it runs, as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    pub network: String,
    /// A fixed address (`--ip`), kept across stop/start.
    pub ip: Option<Ipv4Addr>,
    /// `--network-alias` names on this network, for the embedded DNS.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The interface's name in the container, when its runtime chose one (a CNI
    /// runtime's `CNI_IFNAME`); the next free `ethN` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The interface's MAC, when its runtime chose one (Docker's `CreateEndpoint`); else
    /// the one derived from the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
}

/// One interface of a running container on one network; its `ip` is the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network: String,
    pub id: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// Name inside the container (`eth0`, `eth1`, ...).
    pub ifname: String,
    /// Name of the host-side veth, plugged into the bridge (empty on macvlan and ipvlan
    /// networks, whose interfaces have no host side).
    pub host_veth: String,
    /// Its ifindex: the key of its entries in the BPF maps.
    pub host_ifindex: u32,
    /// A runtime moved the container end into its sandbox (Docker's `Join`), so netbpf
    /// cannot give it the XDP receiver: published ports skip the XDP stage for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_xdp_receiver: bool,
}

impl ContainerRecord {
    /// The `--network-alias` names it asked for on `network`.
    pub fn aliases_on(&self, network: &str) -> Vec<String> {
        self.networks
            .iter()
            .find(|r| r.network == network)
            .map(|r| r.aliases.clone())
            .unwrap_or_default()
    }
}

impl EndpointRecord {
    /// Whether the endpoint has a host veth (and so the fast path and its map entries).
    pub fn has_veth(&self) -> bool {
        !self.host_veth.is_empty()
    }
}

/// A CNI runtime's name for one attachment: its container id and the interface it asked
/// for. CNI calls `DEL` and `CHECK` by these, never by netbpf's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniKey {
    pub container_id: String,
    pub ifname: String,
}

/// Docker's name for one endpoint of the remote driver: its network and endpoint ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerKey {
    pub network_id: String,
    pub endpoint_id: String,
}

/// Where the namespace of an attached (not daemon-started) container comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedTo {
    Pid,
    Netns,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub cmd: Vec<String>,
    pub mode: NetworkMode,
    pub networks: Vec<NetworkRequest>,
    pub endpoints: Vec<EndpointRecord>,
    pub status: Status,
    pub pid: Option<i32>,
    /// Start time of `pid` (field 22 of /proc/PID/stat), so that a recycled pid is never
    /// mistaken for the container after a restart.
    pub pid_start_time: Option<u64>,
    pub exit_code: Option<i32>,
    /// The namespace the endpoints live in while running: a bind mount the daemon made, or
    /// the `--netns` path given to `attach`.
    pub netns: Option<PathBuf>,
    /// Set for `attach`: the daemon wired the namespace but did not start the process.
    pub attached: Option<AttachedTo>,
    pub auto_remove: bool,
    pub created: String,
    /// `-p` specs as given; kept across stop/start.
    #[serde(default)]
    pub ports: Vec<crate::publish::PortSpec>,
    /// Ports published while it runs (host ports may differ after each start).
    #[serde(default)]
    pub published: Vec<crate::publish::PublishedPort>,
    /// `--link NAME:ALIAS`: (container name, alias) written to its /etc/hosts.
    #[serde(default)]
    pub links: Vec<(String, String)>,
    /// `--dns` servers: its upstreams instead of the host's.
    #[serde(default)]
    pub dns: Vec<std::net::IpAddr>,
    /// `--dns-search` domains for its resolv.conf.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// Set when a CNI runtime attached it (`netbpf` invoked as a CNI plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniKey>,
    /// Set for an endpoint of the Docker remote driver (Docker wires the sandbox itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerKey>,
}

impl ContainerRecord {
    /// A record for a new container: nothing published, no endpoints, not yet started.
    pub fn new(name: &str, mode: NetworkMode, networks: Vec<NetworkRequest>) -> Self {
        Self {
            id: random_id(),
            name: name.to_owned(),
            cmd: vec![],
            mode,
            networks,
            endpoints: vec![],
            status: Status::Created,
            pid: None,
            pid_start_time: None,
            exit_code: None,
            netns: None,
            attached: None,
            auto_remove: false,
            created: now_rfc3339(),
            ports: vec![],
            published: vec![],
            links: vec![],
            dns: vec![],
            dns_search: vec![],
            cni: None,
            docker: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.status == Status::Running
    }

    /// Its process is gone: no pid (nor its start time, which would otherwise vouch for a
    /// recycled pid), and `code` if it is known.
    pub fn mark_exited(&mut self, code: Option<i32>) {
        self.status = Status::Exited;
        self.exit_code = code;
        self.pid = None;
        self.pid_start_time = None;
    }

    /// Whether it has a namespace of its own that the daemon made (and so removes).
    pub fn owns_netns(&self) -> bool {
        matches!(self.mode, NetworkMode::Networks | NetworkMode::None) && self.attached.is_none()
    }

    /// The short id Docker shows and its embedded DNS answers for.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

/// Reads and writes `state.json` atomically.
pub struct Store {
    path: PathBuf,
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("state.json"),
            dir: dir.to_owned(),
        }
    }

    pub fn load(&self) -> Result<State, StateError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StateError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        // 0600: the state names every container, address and namespace.
        let mut file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }
}

/// Current time as RFC 3339 UTC, for `Created` fields.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm; avoids a date crate for one timestamp.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A random 64-hex id like Docker's, from the kernel's random source.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    // /dev/urandom never blocks once the kernel is initialised, which it is by now.
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records for unit tests that need a state but no kernel.
#[cfg(test)]
pub mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
    }

    #[test]
    fn records_are_found_by_name_or_unique_id_prefix() {
        let mut state = State::default();
        for (name, id) in [("web", "abc1"), ("db", "abc2")] {
            state
                .containers
                .insert(name.into(), fixtures::container(name, id, &[]));
        }
        assert_eq!(state.container("web").unwrap().name, "web");
        assert_eq!(state.container("abc2").unwrap().name, "db");
        assert!(state.container("abc").is_none(), "ambiguous prefix");
        assert!(state.container("").is_none());
        state
            .networks
            .insert("app".into(), fixtures::network("app", "10.9.0.0/24", 1));
        assert_eq!(state.network("app0").unwrap().name, "app");
    }

    #[test]
    fn the_network_mode_keeps_its_recorded_name() {
        // State files written before the rename say `bridge`; they must still load.
        let json = serde_json::to_string(&NetworkMode::Networks).unwrap();
        assert_eq!(json, r#"{"kind":"bridge"}"#);
        let mode: NetworkMode = serde_json::from_str(r#"{"kind":"bridge"}"#).unwrap();
        assert_eq!(mode, NetworkMode::Networks);
    }

    #[test]
    fn state_round_trips_through_the_store() {
        let dir = std::env::temp_dir().join(format!("netbpf-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        assert!(store.load().unwrap().networks.is_empty());
        let mut state = State {
            next_network_index: 7,
            ..State::default()
        };
        state.networks.insert(
            "n".into(),
            NetworkRecord {
                id: random_id(),
                name: "n".into(),
                driver: "bridge".into(),
                subnet: "10.9.0.0/24".parse().unwrap(),
                gateway: "10.9.0.1".parse().unwrap(),
                ip_range: None,
                internal: false,
                index: 3,
                bridge: "br-x".into(),
                created: now_rfc3339(),
                parent: None,
                overlay: None,
            },
        );
        store.save(&state).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.next_network_index, 7);
        assert_eq!(loaded.networks["n"].index, 3);
        fs::remove_dir_all(&dir).unwrap();
    }
}
