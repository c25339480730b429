//! Overlay networks across hosts: membership in a real etcd. Hosts are namespaces whose
//! `eth1` share an underlay segment with the etcd server.

use netbpf_tests::{
    Etcd, TestHost, Underlay,
    cluster::{create_overlay, host_on, host_with, peers},
    eventually, must,
};

#[test]
fn an_overlay_network_is_defined_once_and_every_host_leases_a_block_until_it_dies() {
    let underlay = Underlay::new();
    let mut etcd = Etcd::start(&underlay, "10.0.0.1");
    let a = host_on(&underlay, &etcd, 11);
    let mut b = host_on(&underlay, &etcd, 12);
    let mut c = host_on(&underlay, &etcd, 13);

    a.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.200.0.0/16",
        "-o",
        "vni=42",
        "ovl",
    ]);
    // Defined once, visible everywhere, with the same id and options.
    let id = a.json(&["network", "inspect", "ovl"])[0]["Id"].clone();
    for host in [&b, &c] {
        eventually(10, "the network to reach every host", || {
            host.netbpf(&["network", "inspect", "ovl"]).code == 0
        });
        let view = host.json(&["network", "inspect", "ovl"]);
        assert_eq!(view[0]["Id"], id, "{view}");
        assert_eq!(view[0]["Driver"], "overlay");
        assert_eq!(view[0]["Scope"], "global");
        assert_eq!(view[0]["Options"]["vni"], "42");
        assert_eq!(view[0]["Options"]["port"], "4789");
    }
    // Every host holds a distinct /24 of the subnet, and all agree on who holds which.
    eventually(10, "three blocks", || peers(&a, "ovl").len() == 3);
    let seen = peers(&a, "ovl");
    for host in [&b, &c] {
        eventually(10, "every host to agree", || peers(host, "ovl") == seen);
    }
    let vteps: Vec<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(vteps.len(), 3);
    for vtep in ["10.0.0.11", "10.0.0.12", "10.0.0.13"] {
        assert!(vteps.contains(&vtep), "{seen:?}");
    }
    let blocks: std::collections::BTreeSet<&str> = seen.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(blocks.len(), 3, "blocks collide: {seen:?}");
    assert!(
        blocks
            .iter()
            .all(|b| b.starts_with("10.200.") && b.ends_with("/24"))
    );

    // Each host's containers join its own block, through a local bridge on that block.
    a.ok(&[
        "run",
        "-d",
        "--name",
        "x",
        "--network",
        "ovl",
        "--",
        "sleep",
        "600",
    ]);
    c.ok(&[
        "run",
        "-d",
        "--name",
        "y",
        "--network",
        "ovl",
        "--",
        "sleep",
        "600",
    ]);
    for (host, container, vtep) in [(&a, "x", "10.0.0.11"), (&c, "y", "10.0.0.13")] {
        let block: ipnet::Ipv4Net = seen
            .iter()
            .find(|(_, v)| v == vtep)
            .unwrap()
            .0
            .parse()
            .unwrap();
        let ip: std::net::Ipv4Addr = host.ip_of(container, "ovl").parse().unwrap();
        assert!(
            block.contains(&ip),
            "{container} got {ip} outside its host's block {block}"
        );
        let view = host.json(&["network", "inspect", "ovl"]);
        assert_eq!(view[0]["Options"]["block"], block.to_string(), "{view}");
        assert_eq!(
            view[0]["Containers"].as_object().unwrap().len(),
            1,
            "{view}"
        );
    }
    // Removing it while a host's containers use it is refused.
    assert!(a.fails(&["network", "rm", "ovl"]).contains("x"));

    // The name is taken cluster-wide, and so is the VNI.
    assert!(
        c.fails(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.201.0.0/16",
            "ovl"
        ])
        .contains("already exists")
    );
    assert!(
        c.fails(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.201.0.0/16",
            "-o",
            "vni=42",
            "ovl2"
        ])
        .contains("vni 42")
    );

    // etcd down: the hosts keep their view (and their data plane); a change is refused
    // with a clear error; when etcd is back, everything converges again.
    etcd.stop();
    let err = a.fails(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.202.0.0/16",
        "ovl3",
    ]);
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(peers(&a, "ovl"), seen, "the view was lost with etcd");
    etcd.resume();
    eventually(20, "the daemons to come back to etcd", || {
        a.netbpf(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.202.0.0/16",
            "ovl3",
        ])
        .code
            == 0
    });
    eventually(20, "every host to hold a block of the new network", || {
        peers(&b, "ovl3").len() == 3
    });
    // The old registrations live on until their lease runs out; the new ones ask for the
    // same blocks, so the set is the same once that settles.
    eventually(30, "the same blocks after the outage", || {
        peers(&a, "ovl") == seen
    });

    // A host whose daemon dies drops out when its lease expires.
    b.kill_daemon();
    eventually(30, "the dead host's block to expire", || {
        !peers(&a, "ovl").iter().any(|(_, v)| v == "10.0.0.12")
    });
    assert_eq!(peers(&c, "ovl").len(), 2);

    // A host that shuts down (SIGTERM, no --live-restore) leaves at once: its lease is
    // revoked, so the others drop it well before the 10 s TTL would.
    c.stop_daemon();
    eventually(3, "the stopped host to leave", || {
        !peers(&a, "ovl").iter().any(|(_, v)| v == "10.0.0.13")
    });
    assert!(
        c.daemon_log().contains("left the cluster"),
        "{}",
        c.daemon_log()
    );
}

#[test]
fn overlay_networks_need_a_cluster_store_and_sane_options() {
    let host = TestHost::new();
    let err = host.fails(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.200.0.0/16",
        "o",
    ]);
    assert!(err.contains("--cluster-store"), "{err}");
}

#[test]
fn containers_on_two_hosts_reach_each_other_through_the_bpf_vxlan_tunnel() {
    let underlay = Underlay::new();
    let mut etcd = Etcd::start(&underlay, "10.0.0.1");
    let a = host_on(&underlay, &etcd, 21);
    let b = host_on(&underlay, &etcd, 22);
    create_overlay(&[&a, &b], "10.210.0.0/16", &["vni=77"]);
    a.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "ovl",
        "--",
        "iperf3",
        "-s",
    ]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "cli",
        "--network",
        "ovl",
        "--",
        "sleep",
        "600",
    ]);
    let srv = a.ip_of("srv", "ovl");
    assert!(
        b.pings("cli", &srv),
        "no ping from host b's container to host a's ({srv})"
    );
    // By name: host a publishes its containers' names in etcd, host b's embedded DNS
    // answers with them.
    eventually(10, "host b to resolve srv", || b.pings("cli", "srv"));
    // TCP through the tunnel; the container MTU leaves room for the 50-byte header.
    let link = b.ok(&["exec", "cli", "--", "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let iperf = b.ok(&["exec", "cli", "--", "iperf3", "-c", &srv, "-t", "1", "-J"]);
    let report: serde_json::Value = serde_json::from_str(&iperf).expect("iperf3 JSON");
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 1_000_000, "iperf3 moved only {received} bytes");
    // etcd down: traffic between existing containers keeps flowing.
    etcd.stop();
    assert!(b.pings("cli", &srv), "the tunnel stopped with etcd");
    etcd.resume();

    // Published ports work for overlay containers too: from host b's outside client to a
    // container on host b's block, through netbpf's DNAT.
    b.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "ovl",
        "-p",
        "8080:8080",
        "--",
        "python3",
        "-m",
        "http.server",
        "8080",
    ]);
    eventually(10, "the published overlay container to answer", || {
        let out = b
            .outside(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                    "http://198.18.0.2:8080/",
                ],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout) == "200"
    });

    // No kernel VXLAN device was involved.
    for host in [&a, &b] {
        let links = must("ip", &["-n", &host.host_ns, "-d", "link", "show"]);
        assert!(!links.contains("vxlan"), "{links}");
    }
}

/// `base64` of `text`, as etcd's JSON gateway takes keys and values.
fn base64(text: &str) -> String {
    let out = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64");
    String::from_utf8(out.stdout).unwrap()
}

/// A host that runs no netbpf at all, only Linux's own VXLAN device (Flannel's data path),
/// talks to a netbpf container: its block is registered in etcd the way a netbpf host would
/// register it, and its FDB and routes point at the netbpf host's VTEP.
#[test]
fn a_kernel_vxlan_device_and_a_netbpf_container_talk_on_the_wire() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.1");
    let a = host_on(&underlay, &etcd, 41);
    create_overlay(&[&a], "10.220.0.0/16", &["vni=99"]);
    let a_block: ipnet::Ipv4Net = peers(&a, "ovl")[0].0.parse().unwrap();
    let a_gateway = std::net::Ipv4Addr::from(u32::from(a_block.network()) + 1);
    a.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "ovl",
        "--",
        "sleep",
        "600",
    ]);
    let web = a.ip_of("web", "ovl");

    // The kernel host: 10.0.0.42 on the underlay, block 10.220.200.0/24, vx0 as its gateway.
    let kernel = underlay.station("kvx", "10.0.0.42/24");
    let k_gateway: std::net::Ipv4Addr = "10.220.200.1".parse().unwrap();
    let fmt_mac = |mac: [u8; 6]| {
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let k_mac = fmt_mac(netbpf::ipam::mac_for(k_gateway));
    let a_gw_mac = fmt_mac(netbpf::ipam::mac_for(a_gateway));
    let ip = |args: &[&str]| {
        let mut all = vec!["-n", kernel.as_str()];
        all.extend(args);
        must("ip", &all);
    };
    ip(&[
        "link",
        "add",
        "vx0",
        "address",
        &k_mac,
        "type",
        "vxlan",
        "id",
        "99",
        "dstport",
        "4789",
        "local",
        "10.0.0.42",
        "dev",
        "eth0",
    ]);
    ip(&["addr", "add", "10.220.200.1/24", "dev", "vx0"]);
    ip(&["link", "set", "vx0", "up"]);
    ip(&[
        "route",
        "add",
        &a_block.to_string(),
        "via",
        &a_gateway.to_string(),
        "dev",
        "vx0",
        "onlink",
    ]);
    ip(&[
        "neigh",
        "add",
        &a_gateway.to_string(),
        "lladdr",
        &a_gw_mac,
        "dev",
        "vx0",
        "nud",
        "permanent",
    ]);
    must(
        "bridge",
        &[
            "-n",
            &kernel,
            "fdb",
            "append",
            &a_gw_mac,
            "dev",
            "vx0",
            "dst",
            "10.0.0.41",
        ],
    );
    // Its block, registered as a netbpf host would (without a lease: it never dies here).
    let lease = r#"{"network":"ovl","block":"10.220.200.0/24","host":"kernel","vtep":"10.0.0.42"}"#;
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64("/netbpf/v1/blocks/ovl/10.220.200.0-24"),
        base64(lease)
    );
    must(
        "nsenter",
        &[
            &format!("--net=/run/netns/{}", etcd.ns),
            "curl",
            "-sf",
            "-X",
            "POST",
            "http://10.0.0.1:2379/v3/kv/put",
            "-d",
            &body,
        ],
    );
    eventually(10, "host a to see the kernel host", || {
        peers(&a, "ovl").len() == 2
    });

    // Both directions, both ends real: netbpf encap to the kernel's decap and back.
    assert!(
        a.pings("web", "10.220.200.1"),
        "netbpf container cannot reach the kernel VXLAN host"
    );
    let ping = netbpf_tests::cmd(
        "ip",
        &["netns", "exec", &kernel, "ping", "-c", "2", "-W", "1", &web],
    );
    assert!(
        ping.status.success(),
        "the kernel VXLAN host cannot reach the netbpf container: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

/// The common layout: the VTEP is the uplink itself, where `uplink_ingress` (published
/// ports, masquerade replies) and `overlay_ingress` both run; each must let the other see
/// the packets that are not its own.
#[test]
fn the_vtep_can_be_the_uplink() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.1");
    let a = host_with(&underlay, &etcd, 51, &["--uplink", "eth1"]);
    let b = host_with(&underlay, &etcd, 52, &["--uplink", "eth1"]);
    create_overlay(&[&a, &b], "10.240.0.0/16", &[]);
    a.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "ovl",
        "-p",
        "8080:8080",
        "--",
        "python3",
        "-m",
        "http.server",
        "8080",
    ]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "cli",
        "--network",
        "ovl",
        "--",
        "sleep",
        "600",
    ]);
    let web = a.ip_of("web", "ovl");
    assert!(
        b.pings("cli", &web),
        "no overlay traffic with the VTEP on the uplink"
    );
    // A published port on host a, reached over the same interface from host b's namespace.
    eventually(10, "the published port through the uplink", || {
        let out = b
            .on_host(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                    "http://10.0.0.51:8080/",
                ],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout) == "200"
    });
}
