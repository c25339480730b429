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
