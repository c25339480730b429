//! The data plane as the host's firewall (docs/security.md): each guarantee tried with the
//! real offending packet, sent as a hostile neighbour on the uplink's LAN or a hostile
//! container would send it — raw frames that nothing in the sender's stack checks.

use std::time::Duration;

use netbpf_tests::{
    Etcd, HOST_UPLINK_IP, OUTSIDE_IP, TestHost, Underlay,
    cluster::{create_overlay, host_on, peers},
    hostile, must, packet,
    sink::{self, UDP_SEND, count_in_log, wait_for_log},
};

#[test]
fn loopback_destinations_are_never_translated() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.99.0.0/24", "app"]);
    // One port only for the host's own processes, one for everyone.
    sink::in_container(
        &host,
        "sink",
        "app",
        &["127.0.0.1:9999:9999/udp", "9998:9999/udp"],
    );
    hostile::sleeper(&host, "rogue", "app");
    let host_mac = host.mac(&host.host_ns, "up0");
    let neighbour_mac = host.mac(&host.outside_ns, "up0");
    let from_lan = |dst: &str, port: u16| {
        let frame = packet::udp((OUTSIDE_IP, 40000), (dst, port));
        let frame = packet::with_macs(&frame, host_mac, neighbour_mac);
        hostile::inject_in_ns(&host.outside_ns, "up0", &frame);
    };
    // The injection works: to the host's address and the port published for everyone.
    from_lan(HOST_UPLINK_IP, 9998);
    wait_for_log(&host, "sink", "got question", 1);

    // To the host's MAC, but to 127.0.0.1 (or another 127/8 address), on the port
    // published on 127.0.0.1 and on the one published everywhere: never translated.
    for (dst, port) in [
        ("127.0.0.1", 9999),
        ("127.0.0.1", 9998),
        ("127.1.2.3", 9998),
    ] {
        from_lan(dst, port);
    }
    // The same from a container, to its gateway's MAC.
    let rogue_ip = host.ip_of("rogue", "app");
    let gateway_mac = netbpf::ipam::mac_for("10.99.0.1".parse().unwrap());
    let rogue_mac = netbpf::ipam::mac_for(rogue_ip.parse().unwrap());
    for (dst, port) in [("127.0.0.1", 9999), ("127.0.0.1", 9998)] {
        let frame = packet::udp((&rogue_ip, 40001), (dst, port));
        let frame = packet::with_macs(&frame, gateway_mac, rogue_mac);
        hostile::inject_from_container(&host, "rogue", &frame);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count_in_log(&host, "sink", "got question"),
        1,
        "a 127/8 destination was translated into the container:\n{}",
        host.ok(&["logs", "sink"])
    );
}

#[test]
fn no_direct_routing_into_containers_and_no_routing_between_other_interfaces() {
    let mut host = TestHost::bare();
    // A fresh host forwards nothing; enabling netbpf must keep it so between the uplink and
    // the host's other LAN.
    must(
        "ip",
        &[
            "netns",
            "exec",
            &host.host_ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ],
    );
    host.add_lan();
    host.start_daemon(&[]);
    host.ok(&["network", "create", "--subnet", "10.99.0.0/24", "app"]);
    host.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.98.0.0/24",
        "sealed",
    ]);
    sink::in_container(&host, "sink", "app", &["9998:9999/udp"]);
    sink::in_container(&host, "sealed-sink", "sealed", &[]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
    ]);
    let (sink_ip, sealed_ip, web_ip) = (
        host.ip_of("sink", "app"),
        host.ip_of("sealed-sink", "sealed"),
        host.ip_of("web", "app"),
    );
    let web_url = format!("http://{web_ip}:8000/");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !netbpf_tests::succeeds(host.on_host("curl", &["-sf", "--max-time", "1", &web_url])) {
        assert!(
            std::time::Instant::now() < deadline,
            "web never answered the host"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A neighbour on the LAN routes the container subnets and the other LAN via the host.
    for subnet in ["10.99.0.0/24", "10.98.0.0/24", "203.0.113.0/24"] {
        must(
            "ip",
            &[
                "-n",
                &host.outside_ns,
                "route",
                "add",
                subnet,
                "via",
                HOST_UPLINK_IP,
            ],
        );
    }
    let from_lan = |dst: &str, port: &str, payload: &str| {
        sink::send(host.outside("python3", &["-c", UDP_SEND, dst, port, payload]));
    };
    // The published port is the way in.
    from_lan(HOST_UPLINK_IP, "9998", "published");
    wait_for_log(&host, "sink", "got published", 1);
    // Straight to the containers: one-way UDP, on a plain and on an internal network, and
    // TCP to a port that is not published.
    from_lan(&sink_ip, "9999", "direct");
    from_lan(&sealed_ip, "9999", "direct");
    assert!(
        !netbpf_tests::succeeds(host.outside("curl", &["-sf", "--max-time", "2", &web_url])),
        "a LAN host reached an unpublished container port by routing to it"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count_in_log(&host, "sink", "got direct"),
        0,
        "UDP routed into a container"
    );
    assert_eq!(
        count_in_log(&host, "sealed-sink", "got direct"),
        0,
        "UDP routed into an internal network's container"
    );
    let dropped = host.drops("uplink_ingress", "not_published");
    assert!(dropped >= 3, "not_published drops counted: {dropped}");
    // Not a router for the LAN either, and containers still get out.
    assert!(
        !netbpf_tests::succeeds(host.outside("ping", &["-c", "1", "-W", "1", "203.0.113.2"])),
        "the host routed from the uplink to its other LAN"
    );
    assert!(
        host.pings("sink", OUTSIDE_IP),
        "containers lost the way out"
    );
}

#[test]
fn vxlan_is_taken_only_from_members() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.1");
    let a = host_on(&underlay, &etcd, 51);
    let b = host_on(&underlay, &etcd, 52);
    create_overlay(&[&a, &b], "10.230.0.0/16", &["vni=77"]);
    sink::in_container(&a, "sink", "ovl", &[]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "peer",
        "--network",
        "ovl",
        "--",
        "sleep",
        "600",
    ]);
    let sink_ip = a.ip_of("sink", "ovl");
    let peer_ip = b.ip_of("peer", "ovl");
    // A member's container reaches it.
    b.ok(&[
        "exec", "peer", "--", "python3", "-c", UDP_SEND, &sink_ip, "9999", "member",
    ]);
    wait_for_log(&a, "sink", "got member", 1);

    // A host on the underlay that is no member forges VXLAN with the right VNI: inner
    // source in b's block, outer source its own, or b's VTEP with an inner source outside
    // b's block.
    let intruder = underlay.station("intruder", "10.0.0.66/24");
    let a_mac = a.mac(&a.host_ns, "eth1");
    let a_block: ipnet::Ipv4Net = peers(&a, "ovl")
        .into_iter()
        .find(|(_, vtep)| vtep == "10.0.0.51")
        .map(|(block, _)| block.parse().unwrap())
        .expect("host a's block");
    let own_block_ip = std::net::Ipv4Addr::from(u32::from(a_block.network()) + 77).to_string();
    for (outer_src, inner_src) in [
        ("10.0.0.66", peer_ip.as_str()),
        ("10.0.0.52", own_block_ip.as_str()),
        ("10.0.0.52", "10.231.0.5"),
    ] {
        let inner = packet::udp((inner_src, 40000), (&sink_ip, 9999));
        let inner = packet::with_macs(&inner, [0x02, 0x42, 0, 0, 0, 1], [0x02, 0x42, 0, 0, 0, 2]);
        let inner = forged_payload(inner);
        let frame = packet::vxlan(outer_src, "10.0.0.51", 77, &inner);
        let frame = packet::with_macs(&frame, a_mac, [0x02, 0, 0, 0, 0, 0x66]);
        hostile::inject_in_ns(&intruder, "eth0", &frame);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count_in_log(&a, "sink", "got forged"),
        0,
        "forged VXLAN was delivered:\n{}",
        a.ok(&["logs", "sink"])
    );
    let dropped = a.drops("overlay_ingress", "unknown_vtep");
    assert_eq!(dropped, 3, "unknown_vtep drops counted");
}

/// `frame` (from `packet::udp`, payload "question") with the payload "forged!!", so that
/// the sink's log tells forged datagrams from real ones; the UDP checksum is left out (0).
fn forged_payload(mut frame: Vec<u8>) -> Vec<u8> {
    let at = frame.len() - 8;
    frame[at..].copy_from_slice(b"forged!!");
    frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    frame
}

/// What a container can send that NAT does not translate, as a raw-socket program would.
const UNTRANSLATABLE: &str = "import socket, sys
dst = sys.argv[1]
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x' * 3000, (dst, 7000))
socket.socket(socket.AF_INET, socket.SOCK_RAW, 47).sendto(b'gre' * 8, (dst, 0))
inner = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + socket.inet_aton(dst) * 2 + bytes(8)
socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).sendto(bytes([3, 3, 0, 0, 0, 0, 0, 0]) + inner, (dst, 0))";

#[test]
fn nothing_leaves_the_uplink_with_a_container_address() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.94.0.0/24", "app"]);
    hostile::sleeper(&host, "c", "app");
    let capture = host.dir.join("outside.pcap");
    let tcpdump = host
        .outside(
            "tcpdump",
            &["-n", "-U", "-i", "up0", "-w", capture.to_str().unwrap()],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    host.extra.push(tcpdump);
    std::thread::sleep(Duration::from_secs(1));
    // A fragmented datagram, GRE and an ICMP error; and an ordinary datagram as control.
    host.ok(&[
        "exec",
        "c",
        "--",
        "python3",
        "-c",
        UNTRANSLATABLE,
        OUTSIDE_IP,
    ]);
    host.ok(&[
        "exec", "c", "--", "python3", "-c", UDP_SEND, OUTSIDE_IP, "7001", "control",
    ]);
    std::thread::sleep(Duration::from_secs(1));
    let seen = |filter: &str| {
        let out = must("tcpdump", &["-n", "-r", capture.to_str().unwrap(), filter]);
        out.lines().count()
    };
    assert_eq!(
        seen("udp port 7001 and src host 198.18.0.2"),
        1,
        "the control datagram"
    );
    assert_eq!(
        seen("src net 10.94.0.0/24"),
        0,
        "a container address left the uplink: {}",
        must("tcpdump", &["-n", "-r", capture.to_str().unwrap()])
    );
    let dropped = host.drops("uplink_egress", "untranslatable");
    assert!(dropped >= 5, "untranslatable drops counted: {dropped}");
}

#[test]
fn internal_networks_reach_no_published_port() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.91.0.0/24", "app"]);
    host.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.92.0.0/24",
        "sealed",
    ]);
    sink::in_container(&host, "svc", "app", &["9998:9999/udp"]);
    hostile::sleeper(&host, "inner", "sealed");
    hostile::sleeper(&host, "neighbour", "app");
    // From a network with a way out, the hairpin works.
    host.ok(&[
        "exec",
        "neighbour",
        "--",
        "python3",
        "-c",
        UDP_SEND,
        HOST_UPLINK_IP,
        "9998",
        "hairpin",
    ]);
    wait_for_log(&host, "svc", "got hairpin", 1);
    // From the internal network: to the uplink's address and to its own gateway (a host
    // address too). The first may fail to send for want of a route; neither may arrive.
    for dst in [HOST_UPLINK_IP, "10.92.0.1"] {
        host.netbpf(&[
            "exec", "inner", "--", "python3", "-c", UDP_SEND, dst, "9998", "sealed",
        ]);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count_in_log(&host, "svc", "got sealed"),
        0,
        "an internal network reached a published port"
    );
}
