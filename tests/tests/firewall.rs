//! The data plane as the host's firewall (docs/security.md): each guarantee tried with the
//! real offending packet, sent as a hostile neighbour on the uplink's LAN or a hostile
//! container would send it — raw frames that nothing in the sender's stack checks.

use std::time::{Duration, Instant};

use netbpf_tests::{
    HOST_UPLINK_IP, OUTSIDE_IP, TestHost,
    packet::{self, INJECT},
};

/// A UDP server in container `name` on `network` that logs each datagram it receives on
/// port 9999 as `got <payload>`.
const UDP_SINK: &str = "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 9999))
print('ready', flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print('got', data.decode(errors='replace'), peer[0], flush=True)";

fn udp_sink(host: &TestHost, name: &str, network: &str, publish: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--network", network];
    for p in publish {
        args.extend(["-p", p]);
    }
    args.extend(["--", "python3", "-c", UDP_SINK]);
    host.ok(&args);
    wait_for_log(host, name, "ready", 1);
}

/// How many lines of `name`'s log contain `needle`.
fn count_in_log(host: &TestHost, name: &str, needle: &str) -> usize {
    host.ok(&["logs", name])
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn wait_for_log(host: &TestHost, name: &str, needle: &str, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_in_log(host, name, needle) < at_least {
        assert!(
            Instant::now() < deadline,
            "{name} never logged {needle:?}:\n{}",
            host.ok(&["logs", name])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn loopback_destinations_are_never_translated() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.99.0.0/24", "app"]);
    // One port only for the host's own processes, one for everyone.
    udp_sink(
        &host,
        "sink",
        "app",
        &["127.0.0.1:9999:9999/udp", "9998:9999/udp"],
    );
    host.ok(&[
        "run",
        "-d",
        "--name",
        "rogue",
        "--network",
        "app",
        "--",
        "sleep",
        "600",
    ]);
    let host_mac = host.mac(&host.host_ns, "up0");
    let neighbour_mac = host.mac(&host.outside_ns, "up0");
    let from_lan = |dst: &str, port: u16| {
        let frame = packet::udp((OUTSIDE_IP, 40000), (dst, port));
        let frame = packet::with_macs(&frame, host_mac, neighbour_mac);
        let sent = host
            .outside("python3", &["-c", INJECT, "up0", &packet::hex(&frame)])
            .status()
            .unwrap();
        assert!(sent.success(), "injecting from the LAN");
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
        host.ok(&[
            "exec",
            "rogue",
            "--",
            "python3",
            "-c",
            INJECT,
            "eth0",
            &packet::hex(&frame),
        ]);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count_in_log(&host, "sink", "got question"),
        1,
        "a 127/8 destination was translated into the container:\n{}",
        host.ok(&["logs", "sink"])
    );
}
