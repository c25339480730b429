//! Published ports with real clients on every path: from outside the host, from the host
//! itself, from containers (hairpin), bound to localhost (masquerade is in masquerade.rs).
//! All in BPF: the tests also check that no netfilter rule and no helper process exists.

use std::time::{Duration, Instant};

use netbpf_tests::{HOST_UPLINK_IP, OUTSIDE_IP, TestHost, must, run_ok, succeeds};

const HTTP_SERVER: &[&str] = &["python3", "-m", "http.server", "80"];

/// A UDP echo server that also says who asked.
const UDP_ECHO: &str = "import socket
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))
while True:
    d,a=s.recvfrom(2048); s.sendto(d+b' from '+a[0].encode(), a)";

/// Sends one datagram with an unconnected socket; prints the answer and where it came from.
const UDP_CLIENT: &str = "import socket,sys
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'ping', (sys.argv[1], int(sys.argv[2]))); d,a=s.recvfrom(2048)
print(d.decode(), 'reply-from', a[0], a[1])";

/// The same over a connected IPv6 socket (to `[::1]`): getpeername must show `::1` too.
const UDP6_CONNECTED_CLIENT: &str = "import socket,sys
s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b'ping'); d=s.recv(2048)
peer=s.getpeername(); print(d.decode(), 'peer', peer[0], peer[1])";

fn curl_args(url: &str) -> Vec<String> {
    [
        "-g",
        "-s",
        "-m",
        "3",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]
    .map(String::from)
    .to_vec()
}

/// Runs a container with an HTTP server and waits until it answers inside the container.
fn http_container(host: &TestHost, name: &str, network: &str, publish: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--network", network];
    for p in publish {
        args.extend(["-p", p]);
    }
    args.push("--");
    args.extend(HTTP_SERVER);
    host.ok(&args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while host
        .netbpf(&[
            "exec",
            name,
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "http://127.0.0.1:80/",
        ])
        .code
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "{name}'s HTTP server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// HTTP status code of a curl from the outside namespace.
fn outside_http(host: &TestHost, url: &str) -> String {
    let args = curl_args(url);
    http_code(host.outside("curl", &args.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// HTTP status code of a curl from a host process.
fn host_http(host: &TestHost, url: &str) -> String {
    let args = curl_args(url);
    http_code(host.on_host("curl", &args.iter().map(String::as_str).collect::<Vec<_>>()))
}

fn http_code(mut command: std::process::Command) -> String {
    String::from_utf8_lossy(&command.output().unwrap().stdout).into_owned()
}

#[test]
fn published_ports_reach_containers_from_outside_the_host_and_containers() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.91.0.0/24", "web"]);
    http_container(&host, "srv", "web", &["5050:80"]);
    assert_eq!(host.ok(&["port", "srv"]), "80/tcp -> 0.0.0.0:5050\n");
    let url = format!("http://{HOST_UPLINK_IP}:5050/");

    // 1. From outside: the server sees the real client address.
    let code = outside_http(&host, &url);
    assert_eq!(code, "200", "outside client");
    assert!(
        host.ok(&["logs", "srv"])
            .contains(&format!("{OUTSIDE_IP} - -")),
        "client address not preserved"
    );

    // 2. From the host itself, on localhost and on the host's address.
    for url in [
        "http://127.0.0.1:5050/".to_owned(),
        "http://[::1]:5050/".to_owned(),
        url.clone(),
    ] {
        let code = host_http(&host, &url);
        assert_eq!(code, "200", "host client to {url}");
    }

    // 3. Hairpin: a container on the same network and one on another network.
    host.ok(&["network", "create", "--subnet", "10.92.0.0/24", "other"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "near",
        "--network",
        "web",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "far",
        "--network",
        "other",
        "--",
        "sleep",
        "600",
    ]);
    for (client, ip) in [("near", "10.91.0.3"), ("far", "10.92.0.2")] {
        let mut args = vec!["exec", client, "--", "curl"];
        let curl = curl_args(&url);
        args.extend(curl.iter().map(String::as_str));
        assert_eq!(host.ok(&args), "200", "hairpin from {client}");
        assert!(
            host.ok(&["logs", "srv"]).contains(&format!("{ip} - -")),
            "hairpin client address"
        );
    }

    // The reply path shows in the counters: the server's veth sent them on directly.
    let stats = host.counters("srv", "web");
    assert!(stats["fast_packets"].as_u64().unwrap() > 0, "{stats}");
    let info = host.json(&["info"]);
    assert_eq!(info["nat_mode"], "tc", "{info}");
}

#[test]
fn a_port_bound_to_localhost_is_reachable_only_from_the_host() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.93.0.0/24", "web"]);
    http_container(&host, "private", "web", &["127.0.0.1:8080:80"]);
    assert_eq!(host.ok(&["port", "private"]), "80/tcp -> 127.0.0.1:8080\n");
    let code = host_http(&host, "http://127.0.0.1:8080/");
    assert_eq!(code, "200");
    // moby#45610: a client outside must not reach a localhost-only port, neither through
    // the host's address nor by routing 127.0.0.1 at it.
    let url = format!("http://{HOST_UPLINK_IP}:8080/");
    assert_ne!(outside_http(&host, &url), "200");
    must(
        "ip",
        &[
            "-n",
            &host.outside_ns,
            "route",
            "add",
            "127.1.0.0/16",
            "via",
            HOST_UPLINK_IP,
        ],
    );
    assert_ne!(outside_http(&host, "http://127.1.0.1:8080/"), "200");
    assert!(
        !host.ok(&["logs", "private"]).contains(OUTSIDE_IP),
        "the outside client got through"
    );
}

#[test]
fn udp_published_ports_answer_from_the_address_asked() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.94.0.0/24", "dns"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "echo",
        "--network",
        "dns",
        "-p",
        "5353:53/udp",
        "--",
        "python3",
        "-c",
        UDP_ECHO,
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "peer",
        "--network",
        "dns",
        "--",
        "sleep",
        "600",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let script = host.dir.join("udp_client.py");
    std::fs::write(&script, UDP_CLIENT).unwrap();
    let script = script.to_str().unwrap().to_owned();

    let from_host = run_ok(host.on_host("python3", &[&script, "127.0.0.1", "5353"]));
    assert_eq!(
        from_host.trim(),
        "ping from 10.94.0.1 reply-from 127.0.0.1 5353"
    );
    let script6 = host.dir.join("udp6_client.py");
    std::fs::write(&script6, UDP6_CONNECTED_CLIENT).unwrap();
    let from_host6 = run_ok(host.on_host("python3", &[script6.to_str().unwrap(), "::1", "5353"]));
    assert_eq!(from_host6.trim(), "ping from 10.94.0.1 peer ::1 5353");
    let from_outside = run_ok(host.outside("python3", &[&script, HOST_UPLINK_IP, "5353"]));
    assert_eq!(
        from_outside.trim(),
        format!("ping from {OUTSIDE_IP} reply-from {HOST_UPLINK_IP} 5353")
    );
    let hairpin = host.ok(&[
        "exec",
        "peer",
        "--",
        "python3",
        &script,
        HOST_UPLINK_IP,
        "5353",
    ]);
    assert_eq!(
        hairpin.trim(),
        format!("ping from 10.94.0.3 reply-from {HOST_UPLINK_IP} 5353")
    );
}

#[test]
fn ranges_random_ports_and_conflicts() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.95.0.0/24", "web"]);
    http_container(
        &host,
        "srv",
        "web",
        &["80", "9000-9002:9000-9002", "7000-7010:80"],
    );
    let ports = host.ok(&["port", "srv"]);
    let lines: Vec<&str> = ports.lines().collect();
    assert_eq!(lines.len(), 5, "{ports}");
    let random: u16 = lines[0].rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        (32768..=60999).contains(&random),
        "random port {random} outside the ephemeral range"
    );
    assert_eq!(
        &lines[1..4],
        &[
            "9000/tcp -> 0.0.0.0:9000",
            "9001/tcp -> 0.0.0.0:9001",
            "9002/tcp -> 0.0.0.0:9002"
        ]
    );
    let from_range: u16 = lines[4].rsplit(':').next().unwrap().parse().unwrap();
    assert!((7000..=7010).contains(&from_range), "{ports}");
    let url = format!("http://{HOST_UPLINK_IP}:{random}/");
    assert_eq!(outside_http(&host, &url), "200");

    // Conflicts: already published, and taken by a host process.
    let err = host.fails(&[
        "run",
        "-d",
        "--name",
        "dup",
        "--network",
        "web",
        "-p",
        "9001:80",
        "--",
        "sleep",
        "60",
    ]);
    assert!(err.contains("already published by container srv"), "{err}");
    host.background(host.on_host("python3", &["-c", "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen(); time.sleep(600)"]));
    std::thread::sleep(Duration::from_millis(300));
    let err = host.fails(&[
        "run",
        "-d",
        "--name",
        "dup",
        "--network",
        "web",
        "-p",
        "7777:80",
        "--",
        "sleep",
        "60",
    ]);
    assert!(
        err.contains("7777/tcp is already in use on the host"),
        "{err}"
    );
    assert!(
        !host.ok(&["ps", "-a"]).contains("dup"),
        "a refused run left a container"
    );
    // While published, host processes cannot take the port.
    let bind = host
        .on_host(
            "python3",
            &[
                "-c",
                "import socket; socket.socket().bind(('0.0.0.0', 9000))",
            ],
        )
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bind.stderr).contains("Address already in use"),
        "host process took a published port"
    );

    // stop unpublishes; start publishes again (fixed ports stay the same).
    host.ok(&["stop", "-t", "1", "srv"]);
    assert!(host.ok(&["port", "srv"]).is_empty());
    let url = format!("http://{HOST_UPLINK_IP}:9000/");
    assert_ne!(outside_http(&host, &url), "200");
    host.ok(&["start", "srv"]);
    assert!(
        host.ok(&["port", "srv"])
            .contains("9000/tcp -> 0.0.0.0:9000")
    );
}

#[test]
fn published_connections_survive_a_daemon_kill_and_restart() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.96.0.0/24", "web"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "perf",
        "--network",
        "web",
        "-p",
        "5201:5201",
        "--",
        "iperf3",
        "-s",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    // A live TCP stream from outside through the published port, across kill -9 and restart.
    let transfer = host.transfer_from_outside(5201, 4);
    std::thread::sleep(Duration::from_secs(1));
    host.kill_daemon();
    std::thread::sleep(Duration::from_millis(500));
    host.start_daemon(&[]);
    let bytes = transfer.bytes();
    assert!(bytes > 10_000_000, "only {bytes} bytes moved");
    assert_eq!(host.ok(&["port", "perf"]), "5201/tcp -> 0.0.0.0:5201\n");
    // And new connections work after the restart.
    assert!(succeeds(host.outside(
        "iperf3",
        &["-c", HOST_UPLINK_IP, "-p", "5201", "-t", "1"]
    )));
}

#[test]
fn no_netfilter_rules_and_no_helper_processes() {
    let host = TestHost::new();
    host.ok(&["network", "create", "web"]);
    http_container(&host, "srv", "web", &["5050:80", "53:53/udp"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "out",
        "--network",
        "web",
        "--",
        "sleep",
        "600",
    ]);
    host.netbpf(&[
        "exec", "out", "--", "ping", "-c", "1", "-W", "1", OUTSIDE_IP,
    ]);

    let rules = run_ok(host.on_host("iptables-save", &[]));
    assert!(
        !rules.lines().any(|l| l.starts_with("-A")),
        "iptables rules exist: {rules}"
    );
    let ruleset = run_ok(host.on_host("nft", &["list", "ruleset"]));
    assert!(
        ruleset.trim().is_empty(),
        "nftables ruleset is not empty: {ruleset}"
    );

    // The daemon's only children are the containers' processes (no proxy per port).
    let daemon_pid = host.json(&["info"]).get("pid").and_then(|p| p.as_u64());
    let container_pids: Vec<u64> = ["srv", "out"]
        .iter()
        .map(|c| host.json(&["inspect", c])["State"]["Pid"].as_u64().unwrap())
        .collect();
    let daemon_pid = daemon_pid.expect("info reports the daemon pid");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(|p| p.trim().parse::<u64>().unwrap_or(0));
        if ppid == Some(daemon_pid) {
            let pid: u64 = entry.file_name().to_string_lossy().parse().unwrap();
            assert!(
                container_pids.contains(&pid),
                "daemon has a child {pid} that is no container: {status}"
            );
        }
    }
}

#[test]
fn the_xdp_stage_translates_published_ports_from_outside() {
    let mut host = TestHost::bare();
    // XDP on a veth uplink needs its peer to send complete checksums, as a wire does.
    must(
        "ip",
        &[
            "netns",
            "exec",
            &host.outside_ns,
            "ethtool",
            "-K",
            "up0",
            "tx",
            "off",
            "tso",
            "off",
            "gso",
            "off",
        ],
    );
    host.start_daemon(&["--xdp", "native"]);
    assert_eq!(host.json(&["info"])["nat_mode"], "xdp");
    host.ok(&["network", "create", "--subnet", "10.97.0.0/24", "web"]);
    http_container(&host, "srv", "web", &["5050:80"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "perf",
        "--network",
        "web",
        "-p",
        "5201:5201",
        "--",
        "iperf3",
        "-s",
    ]);
    std::thread::sleep(Duration::from_millis(300));

    let url = format!("http://{HOST_UPLINK_IP}:5050/");
    let code = outside_http(&host, &url);
    assert_eq!(code, "200");
    assert!(
        host.ok(&["logs", "srv"])
            .contains(&format!("{OUTSIDE_IP} - -")),
        "client address not preserved"
    );
    let out = run_ok(host.outside(
        "iperf3",
        &["-c", HOST_UPLINK_IP, "-p", "5201", "-t", "1", "-J"],
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["end"]["sum_received"]["bytes"].as_u64().unwrap() > 1_000_000);
    let redirects = host.json(&["info"])["xdp_redirects"].as_u64().unwrap();
    assert!(
        redirects > 100,
        "the XDP stage redirected only {redirects} packets"
    );
    // A restart keeps the XDP stage (the new program swapped into the pinned links).
    host.kill_daemon();
    assert_eq!(outside_http(&host, &url), "200");
    host.start_daemon(&["--xdp", "native"]);
    assert_eq!(outside_http(&host, &url), "200");
}

#[test]
fn attach_publishes_ports_of_a_namespace_made_elsewhere() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.98.0.0/24", "ext"]);
    let server = std::process::Command::new("unshare")
        .args(["--net", "python3", "-m", "http.server", "80"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = server.id().to_string();
    host.extra.push(server);
    std::thread::sleep(Duration::from_millis(300));
    host.ok(&[
        "attach",
        "--name",
        "legacy",
        "--pid",
        &pid,
        "--network",
        "ext",
        "-p",
        "6060:80",
    ]);
    assert_eq!(host.ok(&["port", "legacy"]), "80/tcp -> 0.0.0.0:6060\n");
    let url = format!("http://{HOST_UPLINK_IP}:6060/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while outside_http(&host, &url) != "200" {
        assert!(
            Instant::now() < deadline,
            "attached server not reachable through its published port"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    host.ok(&["rm", "legacy"]);
    assert_ne!(outside_http(&host, &url), "200");
}
