//! Upgrades: a host that the previous release's daemon left behind after `kill -9` (its
//! state file, pinned maps and links, namespaces and reserved ports) is taken over by this
//! build, with traffic flowing across the change.

use std::{path::PathBuf, time::Duration};

use netbpf_tests::{HOST_UPLINK_IP, TestHost, succeeds};

/// The previous release's `netbpf`, which `cargo xtask test` builds from its commit.
fn previous_release() -> PathBuf {
    let bin = std::env::var_os("NETBPF_PREVIOUS_BIN")
        .map(PathBuf::from)
        .expect("NETBPF_PREVIOUS_BIN is not set: run `cargo xtask test`, which builds it");
    assert!(bin.exists(), "{} does not exist", bin.display());
    bin
}

#[test]
fn a_host_left_by_the_previous_release_after_kill_9_is_taken_over() {
    let mut host = TestHost::bare();
    host.start_daemon_with(&previous_release(), &[]);
    host.ok(&["network", "create", "--subnet", "10.97.0.0/24", "app"]);
    host.ok(&["network", "create", "--subnet", "10.98.0.0/24", "other"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "perf",
        "--network",
        "app",
        "-p",
        "5201:5201",
        "--",
        "iperf3",
        "-s",
    ]);
    for (name, network) in [("client", "app"), ("stranger", "other")] {
        host.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--",
            "sleep",
            "600",
        ]);
    }
    let perf_ip = host.ip_of("perf", "app");
    assert!(host.pings("client", &perf_ip));
    std::thread::sleep(Duration::from_millis(300));

    // A transfer from outside through the published port runs across the handover.
    let transfer = host.transfer_from_outside(5201, 4);
    std::thread::sleep(Duration::from_secs(1));
    host.kill_daemon();
    host.start_daemon(&[]);
    let bytes = transfer.bytes();
    assert!(
        bytes > 10_000_000,
        "only {bytes} bytes moved across the upgrade"
    );

    // The new daemon owns what the old one made: containers, fast path, names, isolation.
    let ps = host.ok(&["ps"]);
    for name in ["perf", "client", "stranger"] {
        assert!(
            ps.contains(name),
            "{name} not running after the upgrade:\n{ps}"
        );
    }
    let before = host.counters("client", "app")["fast_packets"]
        .as_u64()
        .unwrap();
    assert!(host.pings("client", &perf_ip));
    let after = host.counters("client", "app")["fast_packets"]
        .as_u64()
        .unwrap();
    assert!(
        after > before,
        "pings after the upgrade missed the fast path"
    );
    let resolved = host.ok(&[
        "exec", "client", "--", "dig", "+short", "+time=2", "+tries=1", "perf",
    ]);
    assert_eq!(resolved.trim(), perf_ip, "names after the upgrade");
    assert!(
        !host.pings("stranger", &perf_ip),
        "isolation lost in the upgrade"
    );
    assert_eq!(host.ok(&["port", "perf"]), "5201/tcp -> 0.0.0.0:5201\n");
    assert!(succeeds(host.outside(
        "iperf3",
        &["-c", HOST_UPLINK_IP, "-p", "5201", "-t", "1"]
    )));

    // And it changes the host as its own: a new container gets the next free address,
    // removals clean up, and a network the old daemon made goes away.
    host.ok(&[
        "run",
        "-d",
        "--name",
        "late",
        "--network",
        "app",
        "--",
        "sleep",
        "600",
    ]);
    assert_ne!(host.ip_of("late", "app"), perf_ip);
    host.ok(&["rm", "-f", "stranger"]);
    host.ok(&["network", "rm", "other"]);
    let networks = host.ok(&["network", "ls"]);
    assert!(!networks.contains("other"), "{networks}");
}
