//! A hostile container (docs/security.md, guarantees 9 and 11): raw frames with another
//! container's address or MAC, forged ARP, rogue IPv6 router advertisements. Each is sent
//! as root in the container would send it, and must be dropped and counted.

use std::time::Duration;

use netbpf_tests::{
    HOST_UPLINK_IP, OUTSIDE_IP, TestHost, hostile, must, packet,
    sink::{self, UDP_SEND, count_in_log, wait_for_log},
};

fn mac_of(ip: &str) -> [u8; 6] {
    netbpf::ipam::mac_for(ip.parse().unwrap())
}

#[test]
fn a_container_cannot_send_as_another() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.97.0.0/24", "app"]);
    host.ok(&["network", "create", "--subnet", "10.96.0.0/24", "other"]);
    hostile::sleeper(&host, "victim", "app");
    hostile::sleeper(&host, "rogue", "app");
    hostile::sleeper(&host, "isolated", "other");
    sink::in_container(&host, "svc", "app", &["9998:9999/udp"]);
    let (victim, rogue, isolated) = (
        host.ip_of("victim", "app"),
        host.ip_of("rogue", "app"),
        host.ip_of("isolated", "other"),
    );
    let gateway_mac = mac_of("10.97.0.1");
    let log = host.dir.join("outside-sink.log");
    sink::outside(&mut host, 7000, &log);

    // The victim's masqueraded flow to an outside server.
    host.ok(&[
        "exec", "victim", "--", "python3", "-c", UDP_SEND, OUTSIDE_IP, "7000", "hello", "5000",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink::lines_with(&log, "got hello") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the victim's flow never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The rogue injects into that flow, with its own MAC and with the victim's.
    for src_mac in [mac_of(&rogue), mac_of(&victim)] {
        let frame = packet::udp((&victim, 5000), (OUTSIDE_IP, 7000));
        hostile::inject_from_container(
            &host,
            "rogue",
            &packet::with_macs(&frame, gateway_mac, src_mac),
        );
    }
    // It reflects a published service's replies at a container of an isolated network.
    let frame = packet::udp((&isolated, 40000), (HOST_UPLINK_IP, 9998));
    hostile::inject_from_container(
        &host,
        "rogue",
        &packet::with_macs(&frame, gateway_mac, mac_of(&rogue)),
    );

    // It claims the victim's address in ARP, once the host has learnt the real one (and its
    // lock time has passed).
    host.ok(&["exec", "victim", "--", "ping", "-c", "1", "10.97.0.1"]);
    std::thread::sleep(Duration::from_millis(1500));
    hostile::inject_from_container(
        &host,
        "rogue",
        &packet::arp_reply(mac_of(&rogue), &victim, &victim),
    );

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sink::lines_with(&log, "got question"),
        0,
        "a forged datagram left in the victim's flow"
    );
    assert_eq!(
        count_in_log(&host, "svc", "got question"),
        0,
        "a forged source reached the published service"
    );
    let neigh = must("ip", &["-n", &host.host_ns, "neigh", "show", &victim]);
    let victim_mac = mac_of(&victim)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        neigh.contains(&victim_mac),
        "the host learnt a forged MAC: {neigh}"
    );
    let rogue_drops = host.counters("rogue", "app")["drops"]["spoofed_source"].clone();
    assert_eq!(rogue_drops, 4, "the rogue's endpoint counters");
    assert_eq!(host.drops("from_container", "spoofed_source"), 4);
    // Its own traffic still flows.
    host.ok(&[
        "exec",
        "rogue",
        "--",
        "python3",
        "-c",
        UDP_SEND,
        HOST_UPLINK_IP,
        "9998",
        "own",
    ]);
    wait_for_log(&host, "svc", "got own", 1);
}

#[test]
fn a_container_cannot_advertise_an_ipv6_router() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.95.0.0/24", "app"]);
    hostile::sleeper(&host, "rogue", "app");
    hostile::sleeper(&host, "bystander", "app");
    let rogue = host.ip_of("rogue", "app");
    let prefix: std::net::Ipv6Addr = "2001:db8:77::".parse().unwrap();
    for _ in 0..3 {
        hostile::inject_from_container(
            &host,
            "rogue",
            &packet::router_advertisement(mac_of(&rogue), prefix),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    let bystander = host.ok(&["exec", "bystander", "--", "ip", "-6", "addr", "show"]);
    assert!(
        !bystander.contains("2001:db8:77"),
        "a container took the rogue prefix: {bystander}"
    );
    for what in [["-6", "addr", "show"], ["-6", "route", "show"]] {
        let mut args = vec!["-n", host.host_ns.as_str()];
        args.extend(what);
        let out = must("ip", &args);
        assert!(
            !out.contains("2001:db8:77"),
            "the host took the rogue RA: {out}"
        );
    }
    // Three forged RAs, and the solicitations the containers' own kernels sent.
    let dropped = host.drops("from_container", "router_advertisement");
    assert!(
        dropped >= 3,
        "router_advertisement drops counted: {dropped}"
    );
    // The host side takes no RA on netbpf's interfaces, whatever the program does.
    let bridge =
        host.json(&["network", "inspect", "app"])[0]["Options"]["com.docker.network.bridge.name"]
            .as_str()
            .unwrap()
            .to_owned();
    let veth = host.counters("rogue", "app")["host_interface"]
        .as_str()
        .unwrap()
        .to_owned();
    for iface in [bridge, veth] {
        for key in ["accept_ra", "autoconf"] {
            let setting = format!("net.ipv6.conf.{iface}.{key}");
            let value = must(
                "ip",
                &["netns", "exec", &host.host_ns, "sysctl", "-n", &setting],
            );
            assert_eq!(value.trim(), "0", "{setting}");
        }
    }
}
