//! The name table: which names resolve to which addresses, for whom. Pure data rebuilt from
//! the state after every change, so answers follow stop/start, connect/disconnect and rm
//! with nothing stale. Unit-tested without sockets.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use crate::{
    network::DEFAULT_NETWORK,
    state::{ContainerRecord, NetworkMode, State},
};

/// One name on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    ip: Ipv4Addr,
    /// The container's name, for PTR answers.
    container: String,
}

/// What the server needs to know about the container asking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asker {
    /// User-defined networks it is on: the only ones whose names it can resolve.
    pub networks: BTreeSet<String>,
    /// Where to forward other names: its `--dns` servers, or the host's.
    pub upstreams: Vec<SocketAddr>,
}

#[derive(Debug, Default)]
pub struct Table {
    /// Network name → entries on it.
    names: BTreeMap<String, Vec<Entry>>,
    /// Container id → who it is as an asker.
    askers: BTreeMap<String, Asker>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name is a container's here: these addresses (none for record types containers
    /// do not have, such as AAAA: "no data", not "no such name").
    Local(Vec<Ipv4Addr>),
    /// A PTR for a container address.
    Pointer(String),
    /// Not ours: ask upstream.
    Forward,
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    /// Builds the table from the recorded state: running containers' endpoints on
    /// user-defined networks, under their name, short id and aliases on that network.
    pub fn from_state(state: &State, host_upstreams: &[SocketAddr]) -> Self {
        let mut table = Table::default();
        for c in state.containers.values().filter(|c| c.is_running()) {
            let mut asker = Asker {
                networks: BTreeSet::new(),
                upstreams: if only_internal(state, c) {
                    // Docker ≥ 26: a container only on `--internal` networks gets no
                    // names from outside, so DNS cannot tunnel data out of it.
                    vec![]
                } else if c.dns.is_empty() {
                    host_upstreams.to_vec()
                } else {
                    c.dns.iter().map(|ip| SocketAddr::new(*ip, 53)).collect()
                },
            };
            for ep in c
                .endpoints
                .iter()
                .filter(|ep| ep.network != DEFAULT_NETWORK)
            {
                asker.networks.insert(ep.network.clone());
                let aliases = c.aliases_on(&ep.network);
                let entries = table.names.entry(ep.network.clone()).or_default();
                for name in [c.name.clone(), c.short_id().to_owned()]
                    .into_iter()
                    .chain(aliases)
                {
                    entries.push(Entry {
                        name: normalise(&name),
                        ip: ep.ip,
                        container: c.name.clone(),
                    });
                }
            }
            if c.mode == NetworkMode::Networks {
                table.askers.insert(c.id.clone(), asker);
            }
        }
        table
    }

    /// Adds a name another host published for a container of its own on `network`.
    pub fn add_remote(&mut self, network: &str, name: &str, ip: Ipv4Addr) {
        self.names
            .entry(network.to_owned())
            .or_default()
            .push(Entry {
                name: normalise(name),
                ip,
                container: name.to_owned(),
            });
    }

    pub fn asker(&self, container_id: &str) -> Option<&Asker> {
        self.askers.get(container_id)
    }

    /// A/AAAA lookup of `name` for a container on `networks`.
    pub fn lookup(&self, networks: &BTreeSet<String>, name: &str, want_v4: bool) -> Answer {
        let name = normalise(name);
        let mut found: Vec<Ipv4Addr> = vec![];
        let mut known = false;
        for network in networks {
            for entry in self.names.get(network).into_iter().flatten() {
                if entry.name == name {
                    known = true;
                    if want_v4 && !found.contains(&entry.ip) {
                        found.push(entry.ip);
                    }
                }
            }
        }
        if known {
            Answer::Local(found)
        } else {
            Answer::Forward
        }
    }

    /// PTR lookup of `name` (`d.c.b.a.in-addr.arpa`) for a container on `networks`.
    pub fn reverse(&self, networks: &BTreeSet<String>, name: &str) -> Answer {
        let Some(ip) = parse_in_addr_arpa(&normalise(name)) else {
            return Answer::Forward;
        };
        for network in networks {
            if let Some(entry) = self
                .names
                .get(network)
                .into_iter()
                .flatten()
                .find(|e| e.ip == ip)
            {
                return Answer::Pointer(entry.container.clone());
            }
        }
        Answer::Forward
    }
}

fn parse_in_addr_arpa(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let octets: Vec<u8> = rest
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    match octets.as_slice() {
        [d, c, b, a] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// Whether every network `c` has an endpoint on is `--internal` (and it has one).
fn only_internal(state: &State, c: &ContainerRecord) -> bool {
    !c.endpoints.is_empty()
        && c.endpoints
            .iter()
            .all(|ep| state.networks.get(&ep.network).is_some_and(|n| n.internal))
}

/// The public resolvers used when a host names none at all, as Docker does.
const FALLBACK: [&str; 2] = ["8.8.8.8:53", "8.8.4.4:53"];

fn nameservers(resolv_conf: &str) -> impl Iterator<Item = IpAddr> + '_ {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
}

fn or_fallback(found: Vec<SocketAddr>) -> Vec<SocketAddr> {
    if found.is_empty() {
        FALLBACK.iter().map(|a| a.parse().expect("valid")).collect()
    } else {
        found
    }
}

/// Where the embedded DNS forwards: every resolver of the host's resolv.conf, loopback
/// ones included — the forwarder runs in the host's namespace, so a local stub such as
/// systemd-resolved's 127.0.0.53 (and the split or corporate DNS behind it) is reachable.
/// The public fallback only when the host names none.
pub fn host_upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    or_fallback(
        nameservers(resolv_conf)
            .map(|ip| SocketAddr::new(ip, 53))
            .collect(),
    )
}

/// The resolvers a container asks itself (no embedded DNS: the default bridge), from its
/// own namespace, where the host's loopback is not the host's: the host's non-loopback
/// ones, else those of `upstream_conf` (systemd-resolved's list of real servers, which
/// Docker reads in that case), else the public fallback.
pub fn direct_nameservers(resolv_conf: &str, upstream_conf: &str) -> Vec<SocketAddr> {
    let reachable = |conf| -> Vec<SocketAddr> {
        nameservers(conf)
            .filter(|ip| !ip.is_loopback())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    };
    let own = reachable(resolv_conf);
    or_fallback(if own.is_empty() {
        reachable(upstream_conf)
    } else {
        own
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ContainerRecord, Status};

    fn container(name: &str, id: &str, eps: &[(&str, &str, &[&str])]) -> ContainerRecord {
        crate::state::fixtures::container(name, id, eps)
    }

    fn state() -> State {
        let mut state = State::default();
        for c in [
            container(
                "c1",
                "aaa",
                &[("front", "10.1.0.2", &["db"]), ("back", "10.2.0.2", &[])],
            ),
            container("c2", "bbb", &[("front", "10.1.0.3", &[])]),
            container("lonely", "ccc", &[("other", "10.3.0.2", &[])]),
            container("plain", "ddd", &[("bridge", "10.213.0.2", &[])]),
        ] {
            state.containers.insert(c.name.clone(), c);
        }
        state
    }

    fn nets(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).into()).collect()
    }

    #[test]
    fn names_and_aliases_resolve_on_shared_networks_only() {
        let table = Table::from_state(&state(), &[]);
        let front = nets(&["front"]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            table.lookup(&front, "c1", true),
            Answer::Local(vec![ip("10.1.0.2")])
        );
        assert_eq!(
            table.lookup(&front, "C1.", true),
            Answer::Local(vec![ip("10.1.0.2")])
        );
        assert_eq!(
            table.lookup(&front, "db", true),
            Answer::Local(vec![ip("10.1.0.2")])
        );
        assert_eq!(
            table.lookup(&front, "aaa000000000", true),
            Answer::Local(vec![ip("10.1.0.2")])
        );
        // The alias belongs to the network it was given on.
        assert_eq!(table.lookup(&nets(&["back"]), "db", true), Answer::Forward);
        assert_eq!(table.lookup(&front, "lonely", true), Answer::Forward);
        // The default bridge has no names.
        assert_eq!(
            table.lookup(&nets(&["bridge"]), "plain", true),
            Answer::Forward
        );
        assert_eq!(
            table.asker(&format!("{:0<64}", "ccc")).unwrap().networks,
            nets(&["other"])
        );
        // AAAA for a container name: known, no data.
        assert_eq!(table.lookup(&front, "c2", false), Answer::Local(vec![]));
    }

    #[test]
    fn pointers_for_container_addresses() {
        let table = Table::from_state(&state(), &[]);
        assert_eq!(
            table.reverse(&nets(&["front"]), "3.0.1.10.in-addr.arpa."),
            Answer::Pointer("c2".into())
        );
        assert_eq!(
            table.reverse(&nets(&["other"]), "3.0.1.10.in-addr.arpa"),
            Answer::Forward
        );
        assert_eq!(
            table.reverse(&nets(&["front"]), "9.9.9.9.in-addr.arpa"),
            Answer::Forward
        );
    }

    #[test]
    fn containers_only_on_internal_networks_get_no_upstreams() {
        let mut state = state();
        for (name, index, internal) in [("front", 1, false), ("back", 2, true), ("other", 3, true)]
        {
            let mut net = crate::state::fixtures::network(name, "10.9.0.0/24", index);
            net.internal = internal;
            state.networks.insert(name.into(), net);
        }
        let upstream: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let table = Table::from_state(&state, &[upstream]);
        let upstreams_of = |id: &str| {
            table
                .asker(&format!("{id:0<64}"))
                .unwrap()
                .upstreams
                .clone()
        };
        assert_eq!(upstreams_of("ccc"), vec![], "only on an internal network");
        assert_eq!(
            upstreams_of("aaa"),
            vec![upstream],
            "also on a network with a way out"
        );
    }

    #[test]
    fn stopped_containers_have_no_names() {
        let mut state = state();
        state.containers.get_mut("c2").unwrap().status = Status::Exited;
        let table = Table::from_state(&state, &[]);
        assert_eq!(table.lookup(&nets(&["front"]), "c2", true), Answer::Forward);
    }

    #[test]
    fn the_forwarder_keeps_loopback_stubs_and_containers_get_reachable_servers() {
        let stub = "nameserver 127.0.0.53\n";
        let addr = |a: &str| -> SocketAddr { a.parse().unwrap() };
        assert_eq!(host_upstreams(stub), vec![addr("127.0.0.53:53")]);
        assert_eq!(host_upstreams("search x\n"), FALLBACK.map(addr).to_vec());
        let resolved = "nameserver 10.20.0.2\nnameserver 127.0.0.1\n";
        assert_eq!(
            direct_nameservers(stub, resolved),
            vec![addr("10.20.0.2:53")]
        );
        assert_eq!(direct_nameservers(stub, ""), FALLBACK.map(addr).to_vec());
        let both = "nameserver 127.0.0.53\nnameserver 192.0.2.1\n";
        assert_eq!(
            direct_nameservers(both, resolved),
            vec![addr("192.0.2.1:53")]
        );
    }
}
