//! What `network ls/inspect`, `ps`, `inspect`, `stats` and `info` show, as pure functions
//! of the recorded state, the cluster view and the counters the caller reads from the
//! maps. Nothing here touches the kernel, so unit tests cover every view without root.

use std::collections::BTreeMap;

use netbpf_common::{DropReason, EndpointCounters, Hook};

use super::{
    ClusterStoreInfo, ContainerEndpointView, ContainerStateView, ContainerSummary, ContainerView,
    CountersView, DaemonInfo, EndpointStats, IpamConfigView, IpamView, NetworkEndpointView,
    NetworkView, PeerView, StatsView,
};
use crate::{
    ipam::format_mac,
    overlay::{BlockLease, ClusterView, OverlaySpec},
    state::{ContainerRecord, NetworkKind, NetworkMode, NetworkRecord, State, Status},
};

/// A local network, shaped like `docker network inspect`.
pub fn network(network: &NetworkRecord, state: &State) -> NetworkView {
    let mut endpoints = BTreeMap::new();
    for container in state.containers.values() {
        for ep in container
            .endpoints
            .iter()
            .filter(|ep| ep.network == network.name)
        {
            endpoints.insert(
                container.id.clone(),
                NetworkEndpointView {
                    name: container.name.clone(),
                    endpoint_id: ep.id.clone(),
                    mac_address: format_mac(ep.mac),
                    ipv4_address: format!("{}/{}", ep.ip, network.subnet.prefix_len()),
                    ipv6_address: String::new(),
                },
            );
        }
    }
    NetworkView {
        name: network.name.clone(),
        id: network.id.clone(),
        created: network.created.clone(),
        scope: "local".into(),
        driver: network.driver.clone(),
        enable_ipv6: false,
        ipam: IpamView {
            driver: "default".into(),
            config: vec![IpamConfigView {
                subnet: network.subnet.to_string(),
                gateway: network.gateway.to_string(),
                ip_range: network.ip_range.map(|r| r.to_string()),
            }],
        },
        internal: network.internal,
        containers: endpoints,
        options: match network.kind() {
            NetworkKind::Direct(parent) => BTreeMap::from([
                ("parent".to_owned(), parent.name.clone()),
                (format!("{}_mode", network.driver), parent.mode.clone()),
            ]),
            NetworkKind::Bridge | NetworkKind::OverlayBlock(_) => BTreeMap::from([(
                "com.docker.network.bridge.name".to_owned(),
                network.bridge.clone(),
            )]),
        },
        peers: vec![],
    }
}

/// An overlay network with every host's block as a peer, and this host's containers on it
/// and its block when it has one.
pub fn overlay(spec: &OverlaySpec, blocks: &[BlockLease], state: &State) -> NetworkView {
    let mut view = NetworkView {
        name: spec.name.clone(),
        id: spec.id.clone(),
        created: spec.created.clone(),
        scope: "global".into(),
        driver: "overlay".into(),
        enable_ipv6: false,
        ipam: IpamView {
            driver: "default".into(),
            config: vec![IpamConfigView {
                subnet: spec.subnet.to_string(),
                gateway: String::new(),
                ip_range: None,
            }],
        },
        internal: false,
        containers: BTreeMap::new(),
        options: BTreeMap::from([
            ("vni".to_owned(), spec.vni.to_string()),
            ("port".to_owned(), spec.port.to_string()),
        ]),
        peers: blocks
            .iter()
            .map(|b| PeerView {
                name: b.host.clone(),
                ip: b.vtep.to_string(),
                block: b.block.to_string(),
            })
            .collect(),
    };
    if let Some(local) = state.networks.get(&spec.name) {
        view.containers = network(local, state).containers;
        view.options
            .insert("block".into(), local.subnet.to_string());
    }
    view
}

fn blocks_of<'a>(cluster: &'a ClusterView, name: &str) -> &'a [BlockLease] {
    cluster
        .blocks
        .get(name)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `network ls`: local networks, then overlay networks (whose local blocks are not listed
/// on their own).
pub fn network_list(state: &State, cluster: &ClusterView) -> Vec<NetworkView> {
    let local = state
        .networks
        .values()
        .filter(|n| !matches!(n.kind(), NetworkKind::OverlayBlock(_)))
        .map(|n| network(n, state));
    let overlays = cluster.networks.values().map(|spec| {
        let mut view = overlay(spec, blocks_of(cluster, &spec.name), state);
        // The list shows the network as the store defines it.
        view.containers.clear();
        view.options.remove("block");
        view
    });
    local.chain(overlays).collect()
}

/// `network inspect NAME`: an overlay network by name, else a local one by name or id
/// prefix.
pub fn network_inspect(state: &State, cluster: &ClusterView, key: &str) -> Option<NetworkView> {
    if let Some(spec) = cluster.networks.get(key) {
        return Some(overlay(spec, blocks_of(cluster, key), state));
    }
    state.network(key).map(|n| network(n, state))
}

fn counters(c: &EndpointCounters) -> CountersView {
    CountersView {
        fast_packets: c.fast_packets,
        fast_bytes: c.fast_bytes,
        passed_packets: c.passed_packets,
        passed_bytes: c.passed_bytes,
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), c.drops[*r as usize]))
            .collect(),
    }
}

/// `inspect`: `sandbox` is where its namespace is (the caller asks the kernel), and
/// `counters_of` reads an endpoint's counters by host ifindex.
pub fn container(
    c: &ContainerRecord,
    state: &State,
    sandbox: Option<String>,
    counters_of: impl Fn(u32) -> EndpointCounters,
) -> ContainerView {
    let mut networks = BTreeMap::new();
    for req in &c.networks {
        let Some(net) = state.networks.get(&req.network) else {
            continue;
        };
        let ep = c.endpoints.iter().find(|ep| ep.network == req.network);
        networks.insert(
            req.network.clone(),
            ContainerEndpointView {
                network_id: net.id.clone(),
                endpoint_id: ep.map(|ep| ep.id.clone()).unwrap_or_default(),
                gateway: ep.map(|_| net.gateway.to_string()).unwrap_or_default(),
                ip_address: ep.map(|ep| ep.ip.to_string()).unwrap_or_default(),
                ip_prefix_len: ep.map_or(0, |_| net.subnet.prefix_len()),
                mac_address: ep.map(|ep| format_mac(ep.mac)).unwrap_or_default(),
                interface: ep.map(|ep| ep.ifname.clone()).unwrap_or_default(),
                host_interface: ep.map(|ep| ep.host_veth.clone()).unwrap_or_default(),
                counters: ep.map(|ep| counters(&counters_of(ep.host_ifindex))),
            },
        );
    }
    ContainerView {
        id: c.id.clone(),
        name: c.name.clone(),
        created: c.created.clone(),
        cmd: c.cmd.clone(),
        state: ContainerStateView {
            status: c.status.name().into(),
            running: c.is_running(),
            pid: c.pid.unwrap_or(0),
            exit_code: c.exit_code,
            attached: c.attached.as_ref().map(|a| format!("{a:?}").to_lowercase()),
        },
        network_mode: c.mode.name(),
        sandbox_key: sandbox.filter(|_| c.is_running()),
        networks,
        ports: c.published.iter().map(|p| p.to_string()).collect(),
    }
}

/// One row of `ps`.
pub fn summary(c: &ContainerRecord) -> ContainerSummary {
    ContainerSummary {
        id: c.id.clone(),
        name: c.name.clone(),
        command: c.cmd.join(" "),
        status: match (c.status, c.exit_code) {
            (Status::Exited, Some(code)) => format!("exited ({code})"),
            (Status::Running, _) if c.attached.is_some() => "running (attached)".into(),
            (status, _) => status.name().into(),
        },
        networks: match &c.mode {
            NetworkMode::Networks => c.networks.iter().map(|r| r.network.clone()).collect(),
            other => vec![other.name()],
        },
    }
}

/// `ps` (`all`: stopped containers too).
pub fn container_list(state: &State, all: bool) -> Vec<ContainerSummary> {
    state
        .containers
        .values()
        .filter(|c| all || c.is_running())
        .map(summary)
        .collect()
}

/// `stats`: one row per endpoint with a veth (macvlan and ipvlan endpoints are outside the
/// fast path: nothing counts them).
/// `stats`: every veth endpoint's counters, and every hook's drops by reason (those
/// that are not zero, as `drops` lists them).
pub fn stats(
    state: &State,
    counters_of: impl Fn(u32) -> EndpointCounters,
    drops: &[(Hook, DropReason, u64)],
) -> StatsView {
    let endpoints = state
        .containers
        .values()
        .flat_map(|c| c.endpoints.iter().map(move |ep| (c, ep)))
        .filter(|(_, ep)| ep.has_veth())
        .map(|(c, ep)| EndpointStats {
            container: c.name.clone(),
            network: ep.network.clone(),
            interface: ep.ifname.clone(),
            host_interface: ep.host_veth.clone(),
            counters: counters(&counters_of(ep.host_ifindex)),
        })
        .collect();
    let mut by_hook: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (hook, reason, n) in drops {
        by_hook
            .entry(hook.name().to_owned())
            .or_default()
            .insert(reason.name().to_owned(), *n);
    }
    StatsView {
        endpoints,
        drops: by_hook,
    }
}

/// What `info` reports about the daemon, from what the controller and datapath say.
pub struct DaemonFacts {
    pub state_dir: String,
    pub bpffs: String,
    pub uplink: Option<String>,
    pub nat_mode: Option<crate::uplink::NatMode>,
    pub xdp_redirects: u64,
    pub tracked_flows: crate::datapath::TrackedFlows,
    pub cgroup: String,
    pub ids: crate::datapath::DatapathIds,
    pub unreconciled: Vec<String>,
    pub cluster_store: Option<crate::overlay::store::StoreFacts>,
}

pub fn info(facts: DaemonFacts) -> DaemonInfo {
    DaemonInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        state_dir: facts.state_dir,
        bpffs: facts.bpffs,
        uplink: facts.uplink,
        nat_mode: facts.nat_mode.map(|m| m.name().to_owned()),
        xdp_redirects: facts.xdp_redirects,
        tracked_flows: facts.tracked_flows.confirmed,
        unconfirmed_flows: facts.tracked_flows.unconfirmed,
        masquerade_ports: format!(
            "{}-{}",
            crate::uplink::MASQUERADE_PORTS.0,
            crate::uplink::MASQUERADE_PORTS.1
        ),
        cgroup: facts.cgroup,
        program_ids: facts.ids.program_ids,
        map_ids: facts.ids.map_ids,
        unreconciled: facts.unreconciled,
        cluster_store: facts.cluster_store.map(|store| ClusterStoreInfo {
            url: store.url,
            tls: store.tls,
            user: store.user,
            vtep: store.vtep.to_string(),
            connected: store.status.connected,
            since: store.status.since,
            lease: store.status.lease.map(|lease| format!("{lease:x}")),
            member: store.status.member,
            error: store.status.error,
            hint: store.status.hint.map(str::to_owned),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        overlay,
        state::{AttachedTo, fixtures},
    };

    fn state() -> State {
        let mut state = State::default();
        state
            .networks
            .insert("app".into(), fixtures::network("app", "10.9.0.0/24", 1));
        state
            .networks
            .insert("db".into(), fixtures::network("db", "10.8.0.0/24", 2));
        for c in [
            fixtures::container(
                "web",
                "aaa",
                &[("app", "10.9.0.2", &[]), ("db", "10.8.0.2", &[])],
            ),
            fixtures::container("api", "bbb", &[("app", "10.9.0.3", &["backend"])]),
        ] {
            state.containers.insert(c.name.clone(), c);
        }
        let mut stopped = fixtures::container("old", "ccc", &[]);
        stopped.networks = vec![crate::state::NetworkRequest {
            ifname: None,
            mac: None,
            network: "app".into(),
            ip: None,
            aliases: vec![],
        }];
        stopped.mark_exited(Some(2));
        state.containers.insert("old".into(), stopped);
        state
    }

    fn counted(ifindex: u32) -> EndpointCounters {
        let mut c = EndpointCounters {
            fast_packets: u64::from(ifindex) * 100,
            ..EndpointCounters::default()
        };
        c.drops[DropReason::Isolation as usize] = 3;
        c
    }

    #[test]
    fn a_network_lists_its_endpoints_like_docker() {
        let s = state();
        let view = network(&s.networks["app"], &s);
        assert_eq!(view.scope, "local");
        assert_eq!(view.ipam.config[0].gateway, "10.9.0.1");
        assert_eq!(view.options["com.docker.network.bridge.name"], "br-app");
        let names: Vec<&str> = view.containers.values().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
        let web = &view.containers[&s.containers["web"].id];
        assert_eq!(web.ipv4_address, "10.9.0.2/24");
        assert_eq!(
            web.mac_address,
            format_mac(crate::ipam::mac_for("10.9.0.2".parse().unwrap()))
        );
    }

    #[test]
    fn a_direct_network_shows_its_parent() {
        let mut s = state();
        let mv = s.networks.get_mut("db").unwrap();
        mv.driver = "macvlan".into();
        mv.parent = Some(crate::state::ParentRecord {
            name: "eth1.60".into(),
            created_vlan: true,
            mode: "bridge".into(),
        });
        let view = network(&s.networks["db"], &s);
        assert_eq!(view.options["parent"], "eth1.60");
        assert_eq!(view.options["macvlan_mode"], "bridge");
    }

    #[test]
    fn overlay_networks_are_listed_once_and_inspected_with_the_local_block() {
        let mut s = state();
        s.networks.insert(
            "ovl".into(),
            overlay::fixtures::local_block("10.200.3.0/24", 3),
        );
        s.containers.insert(
            "o1".into(),
            fixtures::container("o1", "ddd", &[("ovl", "10.200.3.2", &[])]),
        );
        let cluster = overlay::fixtures::view(&[("10.200.3.0/24", "10.0.0.1")]);
        let list = network_list(&s, &cluster);
        let names: Vec<&str> = list.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["app", "db", "ovl"]);
        assert_eq!(list[2].scope, "global");
        let ovl = network_inspect(&s, &cluster, "ovl").unwrap();
        assert_eq!(ovl.options["block"], "10.200.3.0/24");
        assert_eq!(ovl.options["vni"], "42");
        assert_eq!(ovl.peers[0].ip, "10.0.0.1");
        assert_eq!(ovl.containers.len(), 1);
        assert!(network_inspect(&s, &cluster, "nope").is_none());
        assert_eq!(network_inspect(&s, &cluster, "app0").unwrap().name, "app");
    }

    #[test]
    fn inspect_shows_endpoints_counters_and_a_sandbox_only_while_running() {
        let s = state();
        let view = container(
            &s.containers["web"],
            &s,
            Some("/proc/1/ns/net".into()),
            counted,
        );
        assert_eq!(view.state.status, "running");
        assert_eq!(view.network_mode, "bridge");
        assert_eq!(view.sandbox_key.as_deref(), Some("/proc/1/ns/net"));
        let app = &view.networks["app"];
        assert_eq!(
            (app.ip_address.as_str(), app.ip_prefix_len),
            ("10.9.0.2", 24)
        );
        assert_eq!(app.gateway, "10.9.0.1");
        let counters = app.counters.as_ref().unwrap();
        assert_eq!(counters.fast_packets, 1000);
        assert_eq!(counters.drops["isolation"], 3);
        let old = container(&s.containers["old"], &s, Some("/x".into()), counted);
        assert_eq!(old.sandbox_key, None);
        let app = &old.networks["app"];
        assert_eq!((app.ip_address.as_str(), app.gateway.as_str()), ("", ""));
        assert!(app.counters.is_none());
    }

    #[test]
    fn ps_shows_running_ones_unless_all_and_says_how_they_ended() {
        let mut s = state();
        let attached = s.containers.get_mut("api").unwrap();
        attached.attached = Some(AttachedTo::Pid);
        let running: Vec<String> = container_list(&s, false)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(running, ["api", "web"]);
        let all = container_list(&s, true);
        let status: Vec<&str> = all.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(status, ["running (attached)", "exited (2)", "running"]);
        assert_eq!(all[2].networks, ["app", "db"]);
        let mut host = fixtures::container("h", "eee", &[]);
        host.mode = NetworkMode::Host;
        assert_eq!(summary(&host).networks, ["host"]);
    }

    #[test]
    fn stats_has_a_row_per_veth_endpoint() {
        let mut s = state();
        s.containers.get_mut("api").unwrap().endpoints[0]
            .host_veth
            .clear();
        let view = stats(&s, counted, &[]);
        let rows: Vec<(&str, &str, u64)> = view
            .endpoints
            .iter()
            .map(|r| {
                (
                    r.container.as_str(),
                    r.network.as_str(),
                    r.counters.fast_packets,
                )
            })
            .collect();
        assert_eq!(rows, [("web", "app", 1000), ("web", "db", 1100)]);
    }

    #[test]
    fn stats_lists_drops_by_hook_and_reason() {
        let drops = [
            (Hook::UplinkIngress, DropReason::NotPublished, 7),
            (Hook::UplinkIngress, DropReason::LoopbackDestination, 2),
            (Hook::FromContainer, DropReason::SpoofedSource, 1),
        ];
        let view = stats(&state(), counted, &drops);
        assert_eq!(view.drops["uplink_ingress"]["not_published"], 7);
        assert_eq!(view.drops["uplink_ingress"]["loopback_destination"], 2);
        assert_eq!(view.drops["from_container"]["spoofed_source"], 1);
        assert_eq!(view.drops.len(), 2);
    }
}
