//! macvlan and ipvlan networks: containers on two hosts sitting directly on the hosts'
//! second NICs (veths into one shared segment), with and without a VLAN sub-interface.

use netbpf_tests::{TestHost, Underlay, kernel_has_link_kind, must};

/// Two hosts whose `eth1` share a segment.
fn two_hosts() -> (Underlay, TestHost, TestHost) {
    let underlay = Underlay::new();
    let (a, b) = (TestHost::new(), TestHost::new());
    underlay.plug(&a, "eth1");
    underlay.plug(&b, "eth1");
    (underlay, a, b)
}

fn run_on(host: &TestHost, name: &str, network: &str, ip: &str) {
    host.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--ip",
        ip,
        "--",
        "sleep",
        "600",
    ]);
}

/// `ip -d link show eth0` inside a container.
fn link_details(host: &TestHost, container: &str) -> String {
    host.ok(&["exec", container, "--", "ip", "-d", "link", "show", "eth0"])
}

#[test]
fn macvlan_containers_on_two_hosts_reach_each_other_on_the_parent_and_on_a_vlan() {
    let (_underlay, a, b) = two_hosts();
    for host in [&a, &b] {
        host.ok(&[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "192.168.50.0/24",
            "--gateway",
            "192.168.50.1",
            "-o",
            "parent=eth1",
            "mv",
        ]);
    }
    run_on(&a, "web", "mv", "192.168.50.10");
    run_on(&b, "client", "mv", "192.168.50.20");
    assert!(
        b.pings("client", "192.168.50.10"),
        "macvlan containers on two hosts cannot reach each other"
    );
    assert!(
        link_details(&a, "web").contains("macvlan mode bridge"),
        "{}",
        link_details(&a, "web")
    );
    // Same host, same network: by name through the embedded DNS.
    run_on(&a, "peer", "mv", "192.168.50.11");
    assert!(
        a.pings("peer", "web"),
        "no name resolution on a macvlan network"
    );
    // No veth and no bridge: the containers sit on eth1 itself.
    let host_links = a.links(&a.host_ns);
    assert!(
        !host_links
            .iter()
            .any(|l| l.starts_with("veth") || l.starts_with("br-")),
        "{host_links:?}"
    );
    let view = a.json(&["network", "inspect", "mv"]);
    assert_eq!(view[0]["Driver"], "macvlan", "{view}");
    assert_eq!(view[0]["Options"]["parent"], "eth1", "{view}");

    // A VLAN sub-interface is made with the network and removed with it, on kernels with
    // 802.1Q support; elsewhere the network is refused with the reason, leaving nothing.
    let create_vlan_network = |host: &TestHost| {
        host.netbpf(&[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "192.168.60.0/24",
            "-o",
            "parent=eth1.60",
            "mv60",
        ])
    };
    if !kernel_has_link_kind("vlan") {
        let run = create_vlan_network(&a);
        assert_ne!(run.code, 0);
        assert!(
            run.stderr
                .contains("cannot make VLAN sub-interfaces (CONFIG_VLAN_8021Q)"),
            "{}",
            run.stderr
        );
        assert!(!a.links(&a.host_ns).iter().any(|l| l == "eth1.60"));
        assert_ne!(a.netbpf(&["network", "inspect", "mv60"]).code, 0);
        return;
    }
    for host in [&a, &b] {
        let run = create_vlan_network(host);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let vlan = must(
            "ip",
            &["-n", &host.host_ns, "-d", "link", "show", "eth1.60"],
        );
        assert!(vlan.contains("vlan protocol 802.1Q id 60"), "{vlan}");
    }
    run_on(&a, "web60", "mv60", "192.168.60.10");
    run_on(&b, "client60", "mv60", "192.168.60.20");
    assert!(
        b.pings("client60", "192.168.60.10"),
        "macvlan containers on VLAN 60 cannot reach each other"
    );
    // Tagged: the frames on the segment carry VLAN 60, so the untagged macvlan network
    // does not see them (the kernel keeps the two apart).
    assert!(
        !b.pings("client", "192.168.60.10"),
        "the untagged network reaches VLAN 60"
    );
    for host in [&a, &b] {
        for c in ["web60", "client60"] {
            let _ = host.netbpf(&["rm", "-f", c]);
        }
        host.ok(&["network", "rm", "mv60"]);
        assert!(
            !host.links(&host.host_ns).iter().any(|l| l == "eth1.60"),
            "eth1.60 outlived its network"
        );
    }
}

/// On kernels without ipvlan (this project's CI kernel is one), the network is refused
/// with the reason and nothing is made.
#[test]
fn ipvlan_containers_on_two_hosts_reach_each_other_where_the_kernel_has_ipvlan() {
    let (_underlay, a, b) = two_hosts();
    let create = |host: &TestHost| {
        host.netbpf(&[
            "network",
            "create",
            "-d",
            "ipvlan",
            "--subnet",
            "192.168.70.0/24",
            "-o",
            "parent=eth1",
            "-o",
            "ipvlan_mode=l2",
            "ipv",
        ])
    };
    if !kernel_has_link_kind("ipvlan") {
        let before = a.links(&a.host_ns);
        let run = create(&a);
        assert_ne!(run.code, 0);
        assert!(
            run.stderr
                .contains("this kernel has no ipvlan support (CONFIG_IPVLAN)"),
            "{}",
            run.stderr
        );
        assert_eq!(before, a.links(&a.host_ns));
        assert_ne!(a.netbpf(&["network", "inspect", "ipv"]).code, 0);
        return;
    }
    for host in [&a, &b] {
        let run = create(host);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    run_on(&a, "web", "ipv", "192.168.70.10");
    run_on(&b, "client", "ipv", "192.168.70.20");
    assert!(
        b.pings("client", "192.168.70.10"),
        "ipvlan containers on two hosts cannot reach each other"
    );
    let details = link_details(&a, "web");
    assert!(details.contains("ipvlan"), "{details}");
    // ipvlan interfaces share the parent's MAC address, and inspect says so.
    let eth1: serde_json::Value = serde_json::from_str(&must(
        "ip",
        &["-n", &a.host_ns, "-j", "link", "show", "eth1"],
    ))
    .unwrap();
    let parent_mac = eth1[0]["address"].as_str().unwrap();
    let view = a.json(&["inspect", "web"]);
    assert_eq!(view["Networks"]["ipv"]["MacAddress"], parent_mac, "{view}");
}

#[test]
fn bad_parents_and_options_are_refused_and_change_nothing() {
    let host = TestHost::new();
    let before = host.links(&host.host_ns);
    // An interface that exists but is down.
    must(
        "ip",
        &[
            "-n",
            &host.host_ns,
            "link",
            "add",
            "eth9",
            "type",
            "veth",
            "peer",
            "name",
            "eth9p",
        ],
    );
    let cases: [(&[&str], &str); 6] = [
        (
            &["-o", "parent=eth7"],
            "parent interface eth7 does not exist",
        ),
        (
            &["-o", "parent=eth7.5"],
            "parent interface eth7 (for VLAN 5",
        ),
        (&["-o", "parent=eth9"], "parent interface eth9 is down"),
        (&["-o", "parent=eth9.5"], "parent interface eth9 is down"),
        (
            &["-o", "parent=up0", "-o", "macvlan_mode=l3"],
            "invalid macvlan_mode",
        ),
        (&[], "needs -o parent"),
    ];
    for (opts, message) in cases {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "192.168.80.0/24",
        ];
        args.extend(opts);
        args.push("bad");
        let err = host.fails(&args);
        assert!(err.contains(message), "{opts:?}: {err}");
    }
    let err = host.fails(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=up0",
        "bad",
    ]);
    assert!(err.contains("needs --subnet"), "{err}");
    let err = host.fails(&["network", "create", "-d", "overlay2", "bad"]);
    assert!(err.contains("not supported"), "{err}");
    assert!(host.fails(&["network", "inspect", "bad"]).contains("bad"));
    let mut after = host.links(&host.host_ns);
    after.retain(|l| l != "eth9" && l != "eth9p");
    assert_eq!(before, after, "a refused network left interfaces behind");

    // Published ports need a bridge network: the BPF DNAT delivers into a host veth.
    host.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "192.168.81.0/24",
        "-o",
        "parent=up0",
        "lan",
    ]);
    let err = host.fails(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "lan",
        "-p",
        "8080:80",
        "--",
        "sleep",
        "60",
    ]);
    assert!(err.contains("cannot"), "{err}");
}
