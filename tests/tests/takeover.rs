//! Taking a host over after `kill -9` when something is in the way. A daemon that cannot
//! take over leaves the pinned data plane serving as it found it and says what failed; a
//! network that cannot be reconciled is reported and skipped, not fatal to the others.

use std::time::{Duration, Instant};

use netbpf_tests::{OUTSIDE_IP, TestHost, must, succeeds};

const PAGE: &str = "http://198.18.0.2:8080/";

/// `web` on network `a` published on 8080, `other` on network `b`.
fn two_networks() -> (TestHost, String) {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.131.0.0/24", "a"]);
    host.ok(&["network", "create", "--subnet", "10.132.0.0/24", "b"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "a",
        "-p",
        "8080:80",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "other",
        "--network",
        "b",
        "--",
        "sleep",
        "600",
    ]);
    let web_ip = host.ip_of("web", "a");
    netbpf_tests::eventually(10, "web to answer", || host.answers_from_outside(PAGE));
    (host, web_ip)
}

/// What the data plane must still do with no daemon: the published port answers from
/// outside, `other` cannot reach `web` across networks, and reaches outside masqueraded.
fn assert_still_serving(host: &TestHost, web_ip: &str, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host.answers_from_outside(PAGE) {
        assert!(
            Instant::now() < deadline,
            "{when}: the published port stopped answering"
        );
    }
    let ping = |ip: &str| succeeds(host.in_container("other", "ping", &["-c", "1", "-W", "1", ip]));
    assert!(!ping(web_ip), "{when}: isolation between networks is gone");
    assert!(ping(OUTSIDE_IP), "{when}: masquerade stopped");
}

#[test]
fn a_daemon_that_cannot_take_over_leaves_the_pinned_data_plane_serving() {
    let (mut host, web_ip) = two_networks();
    host.kill_daemon();
    assert_still_serving(&host, &web_ip, "after kill -9");

    // A pinned map the new build cannot use (as an incompatible older release leaves it):
    // the programs fail verification against it, so the daemon cannot start.
    let pin = host.bpffs.join("maps/PUBLISHED");
    // (The original lives on, held by the attached programs; its id pins it back later.)
    let shown = must(
        "bpftool",
        &["-j", "map", "show", "pinned", pin.to_str().unwrap()],
    );
    let id = serde_json::from_str::<serde_json::Value>(&shown).unwrap()["id"].to_string();
    std::fs::remove_file(&pin).unwrap();
    must(
        "bpftool",
        &[
            "map",
            "create",
            pin.to_str().unwrap(),
            "type",
            "hash",
            "key",
            "20",
            "value",
            "1",
            "entries",
            "16",
            "name",
            "PUBLISHED",
        ],
    );
    let said = host.daemon_must_fail(&[]);
    assert!(said.contains("cannot take over"), "{said}");
    assert!(said.contains("stays as it was"), "{said}");
    let links = std::fs::read_dir(host.bpffs.join("links")).unwrap().count();
    assert!(links >= 2, "the endpoints' pinned links were removed");
    assert_still_serving(&host, &web_ip, "after a failed start");

    // With the map back, the next daemon takes everything over.
    std::fs::remove_file(&pin).unwrap();
    must("bpftool", &["map", "pin", "id", &id, pin.to_str().unwrap()]);
    host.start_daemon(&[]);
    assert_still_serving(&host, &web_ip, "after the takeover");
    assert!(host.pings("web", OUTSIDE_IP));
}

#[test]
fn a_network_that_cannot_be_reconciled_is_reported_and_the_others_taken_over() {
    let (mut host, web_ip) = two_networks();
    let bridge_b =
        host.json(&["network", "inspect", "b"])[0]["Options"]["com.docker.network.bridge.name"]
            .as_str()
            .unwrap()
            .to_owned();
    host.kill_daemon();
    // While no daemon runs, b's bridge is deleted and its name taken by an interface that
    // is no bridge: b cannot be restored, a must be.
    must("ip", &["-n", &host.host_ns, "link", "del", &bridge_b]);
    must(
        "ip",
        &[
            "-n",
            &host.host_ns,
            "link",
            "add",
            &bridge_b,
            "type",
            "veth",
            "peer",
            "name",
            "squatter",
        ],
    );
    host.start_daemon(&[]);
    let info = host.json(&["info"]);
    let unreconciled = info["unreconciled"].to_string();
    assert!(
        unreconciled.contains("network b") && unreconciled.contains("not a bridge"),
        "{info}"
    );
    assert!(host.answers_from_outside(PAGE));
    assert!(
        host.pings("web", OUTSIDE_IP),
        "a's container lost its way out"
    );
    assert!(!host.pings("web", &host.ip_of("other", "b")));
    let _ = web_ip;
}

#[test]
fn with_live_restore_a_stopped_daemon_leaves_everything_serving_for_the_next() {
    let mut host = TestHost::with_daemon_args(&["--live-restore"]);
    host.ok(&["network", "create", "--subnet", "10.133.0.0/24", "lr"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "lr",
        "-p",
        "8080:80",
        "-p",
        "5201:5201",
        "--",
        "sh",
        "-c",
        "iperf3 -s -D && exec python3 -m http.server 80",
    ]);
    netbpf_tests::eventually(10, "web to answer", || host.answers_from_outside(PAGE));
    let pid = host.json(&["inspect", "web"])["State"]["Pid"].clone();

    // Requests from outside every 50 ms, and a bulk transfer, across the restart.
    let requests = host.requests_from_outside(PAGE, Duration::from_millis(50));
    let transfer = host.transfer_from_outside(5201, 6);
    std::thread::sleep(Duration::from_secs(1));
    host.stop_daemon();
    assert!(
        host.daemon_log().contains("live restore"),
        "{}",
        host.daemon_log()
    );
    std::thread::sleep(Duration::from_secs(1));
    host.start_daemon(&["--live-restore"]);
    std::thread::sleep(Duration::from_secs(1));
    let (failed, sent) = requests.stop();
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the restart"
    );
    assert!(transfer.bytes() > 0);

    // The same process, taken over: the new daemon manages it as its own.
    assert_eq!(host.json(&["inspect", "web"])["State"]["Pid"], pid);
    assert!(host.pings("web", OUTSIDE_IP));
    host.ok(&["rm", "-f", "web"]);
    assert!(!host.answers_from_outside(PAGE));
}
