//! Masquerade: containers reach the outside as the uplink's address, with no route back to
//! their subnets and no netfilter rule.

use std::time::{Duration, Instant};

use netbpf_tests::{
    HOST_UPLINK_IP, OUTSIDE_IP, TestHost,
    sink::{self, UDP_SEND, UDP_SINK, count_in_log, wait_for_log},
};

#[test]
fn containers_reach_outside_masqueraded_to_the_uplink_address() {
    let mut host = TestHost::new();
    let log = host.dir.join("outside-http.log");
    let mut server = host.outside(
        "sh",
        &[
            "-c",
            &format!(
                "exec python3 -m http.server 8000 --bind {OUTSIDE_IP} 2>{}",
                log.display()
            ),
        ],
    );
    server.stdin(std::process::Stdio::null());
    host.extra.push(server.spawn().unwrap());
    host.ok(&["run", "-d", "--name", "a", "--", "sleep", "600"]);
    host.ok(&["run", "-d", "--name", "b", "--", "sleep", "600"]);
    let url = format!("http://{OUTSIDE_IP}:8000/");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The outside has no route to container subnets: only masquerade can make this work.
    loop {
        let run = host.netbpf(&[
            "exec",
            "a",
            "--",
            "curl",
            "-s",
            "-m",
            "2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        if run.stdout == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "container a cannot reach outside: {}",
            run.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Two containers using the same source port get distinct translated ports.
    for c in ["a", "b"] {
        let run = host.netbpf(&[
            "exec",
            c,
            "--",
            "curl",
            "-s",
            "-m",
            "2",
            "--local-port",
            "40000",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        assert_eq!(
            run.stdout, "200",
            "{c} with source port 40000: {}",
            run.stderr
        );
    }
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains(&format!("{HOST_UPLINK_IP} - -")),
        "server did not see the host address: {seen}"
    );
    assert!(
        !seen.contains("10.213."),
        "a container address leaked: {seen}"
    );
    assert!(host.pings("a", OUTSIDE_IP), "ping through masquerade");
    assert!(host.json(&["info"])["tracked_flows"].as_u64().is_some());
}

/// From UDP port 5000, says `hello` to `argv[1]`:7000, then logs what comes back as
/// [`UDP_SINK`] does.
const CHATTER: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 5000))
s.sendto(b'hello', (sys.argv[1], 7000))
print('ready', flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print('got', data.decode(errors='replace'), peer[0], peer[1], flush=True)";

#[test]
fn an_address_given_again_inherits_no_flows() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.93.0.0/24", "app"]);
    let log = host.dir.join("outside-sink.log");
    sink::outside(&mut host, 7000, &log);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "one",
        "--network",
        "app",
        "--",
        "python3",
        "-c",
        CHATTER,
        OUTSIDE_IP,
    ]);
    wait_for_log(&host, "one", "ready", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink::lines_with(&log, "got hello") == 0 {
        assert!(
            Instant::now() < deadline,
            "the first tenant's flow never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = sink::peer_port(&log, "hello").to_string();
    let ip = host.ip_of("one", "app");
    // The outside server answers on that flow (its sink stops, so the answer can come from
    // port 7000): it reaches the first tenant.
    let mut server = host.extra.pop().expect("the outside sink");
    server.kill().unwrap();
    server.wait().unwrap();
    let answer = |payload: &str| {
        sink::send(host.outside(
            "python3",
            &["-c", UDP_SEND, HOST_UPLINK_IP, &port, payload, "7000"],
        ));
    };
    answer("reply");
    wait_for_log(&host, "one", "got reply", 1);

    // The address goes to a new tenant, listening on the same port.
    host.ok(&["rm", "-f", "one"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "two",
        "--network",
        "app",
        "--",
        "python3",
        "-c",
        UDP_SINK,
        "5000",
    ]);
    wait_for_log(&host, "two", "ready", 1);
    assert_eq!(host.ip_of("two", "app"), ip, "IPAM gave the address again");
    answer("stale");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count_in_log(&host, "two", "got stale"),
        0,
        "the new tenant received the old one's flow"
    );
}

/// A TCP echo server on port 8000.
const ECHO_SERVER: &str = "import socketserver
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(1024)
            if not data:
                return
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(('0.0.0.0', 8000), Echo).serve_forever()";

/// From TCP port 45000, to `argv[1]`:8000: `argv[3]` rounds of sending `argv[2]` and
/// reading it back, half a second apart, on one connection; prints `ok` if all came back.
const ECHO_CLIENT: &str = "import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 45000))
s.settimeout(3)
s.connect((sys.argv[1], 8000))
for _ in range(int(sys.argv[3])):
    s.sendall(sys.argv[2].encode())
    assert s.recv(100) == sys.argv[2].encode()
    time.sleep(0.5)
print('ok')";

#[test]
fn masquerade_never_takes_a_host_connections_ports() {
    let mut host = TestHost::new();
    let server = host.outside("python3", &["-c", ECHO_SERVER]);
    host.background(server);
    host.ok(&["run", "-d", "--name", "c", "--", "sleep", "600"]);
    std::thread::sleep(Duration::from_millis(500));
    // A host connection from port 45000 to the server, alive for 4 s...
    let host_client = host
        .on_host("python3", &["-c", ECHO_CLIENT, OUTSIDE_IP, "host", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(1));
    // ...and meanwhile a container's, from the same port to the same server.
    let container = host.ok(&[
        "exec",
        "c",
        "--",
        "python3",
        "-c",
        ECHO_CLIENT,
        OUTSIDE_IP,
        "c",
        "2",
    ]);
    assert_eq!(container.trim(), "ok");
    let out = host_client.wait_with_output().expect("python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "the host's connection broke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The range is the kernel's to keep from the host's sockets, and says so.
    let reserved = netbpf_tests::must(
        "ip",
        &[
            "netns",
            "exec",
            &host.host_ns,
            "sysctl",
            "-n",
            "net.ipv4.ip_local_reserved_ports",
        ],
    );
    let range = host.json(&["info"])["masquerade_ports"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(range, "61000-64999");
    assert!(reserved.contains(&range), "reserved: {reserved}");
}

#[test]
fn masquerade_and_published_ports_follow_an_uplink_address_change() {
    let mut host = TestHost::new();
    let log = host.dir.join("outside-sink.log");
    sink::outside(&mut host, 9999, &log);
    sink::in_container(&host, "web", "bridge", &["7777:9999/udp"]);
    let send_out = |payload: &str| {
        host.ok(&[
            "exec", "web", "--", "python3", "-c", UDP_SEND, OUTSIDE_IP, "9999", payload,
        ]);
    };
    send_out("before");
    netbpf_tests::eventually(5, "the first datagram outside", || {
        sink::lines_with(&log, &format!("got before {HOST_UPLINK_IP} ")) == 1
    });

    // A DHCP renew hands the host another address (and the router again).
    let ip = |args: &[&str]| {
        let mut all = vec!["-n", host.host_ns.as_str()];
        all.extend(args);
        netbpf_tests::must("ip", &all);
    };
    ip(&["addr", "del", &format!("{HOST_UPLINK_IP}/24"), "dev", "up0"]);
    ip(&["addr", "add", "198.18.0.3/24", "dev", "up0"]);
    ip(&["route", "replace", "default", "via", OUTSIDE_IP]);
    netbpf_tests::eventually(5, "masquerade to the new address", || {
        send_out("after");
        sink::lines_with(&log, "got after 198.18.0.3 ") > 0
    });
    // (One sent in the 200 ms before the daemon followed may still carry the old one.)
    send_out("later");
    netbpf_tests::eventually(5, "the next datagram from the new address", || {
        sink::lines_with(&log, "got later 198.18.0.3 ") == 1
    });
    // The published port answers on the new address.
    sink::send(host.outside(
        "python3",
        &["-c", UDP_SEND, "198.18.0.3", "7777", "inbound"],
    ));
    sink::wait_for_log(&host, "web", "got inbound", 1);
}
