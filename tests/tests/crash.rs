//! A daemon killed at the worst moment leaks nothing: each test crashes it at one chosen
//! step (a fail point: `FAILPOINTS=NAME=return` aborts the daemon there, as `kill -9`
//! would), starts it again, and looks for what the crash could have left.

use netbpf_tests::{TestHost, must, succeeds};

/// Starts the daemon set to abort at `point`.
fn crashing_at(point: &str) -> TestHost {
    let mut host = TestHost::bare();
    host.daemon_env = vec![("FAILPOINTS".into(), format!("{point}=return"))];
    host.start_daemon(&[]);
    host
}

/// Waits for the aborted daemon, and starts a healthy one.
fn restart_after_crash(host: &mut TestHost) {
    host.kill_daemon();
    host.daemon_env.clear();
    host.start_daemon(&[]);
}

#[test]
fn a_process_started_as_the_daemon_dies_never_runs_untracked() {
    let mut host = crashing_at("container-spawned-before-saved");
    let marker = host.dir.join("ran");
    let script = format!("echo ran > {}; exec sleep 6061", marker.display());
    let run = host.netbpf(&["run", "-d", "--name", "c", "--", "sh", "-c", &script]);
    assert_ne!(run.code, 0, "the daemon should have died: {}", run.stdout);
    // Another program's namespace name with netbpf's prefix is not netbpf's to remove.
    let foreign = format!("{}foreign", host.netns_prefix());
    must("ip", &["netns", "add", &foreign]);
    restart_after_crash(&mut host);
    let kept = std::path::Path::new("/run/netns").join(&foreign).exists();
    must("ip", &["netns", "del", &foreign]);
    assert!(kept, "a namespace name netbpf did not make was removed");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !marker.exists(),
        "the container's command ran with no record of it"
    );
    let mut pgrep = std::process::Command::new("pgrep");
    pgrep.args(["-f", "sleep 6061"]);
    assert!(!succeeds(pgrep), "an untracked container process runs");
    assert!(
        !host.ok(&["ps", "-a"]).contains(" c"),
        "{}",
        host.ok(&["ps", "-a"])
    );
    let leftovers: Vec<String> = host
        .links(&host.host_ns)
        .into_iter()
        .filter(|l| l.starts_with("veth") || l.starts_with("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        !std::path::Path::new(&format!("/run/netns/{}c", host.netns_prefix())).exists(),
        "the namespace name outlived the crash"
    );
    assert_eq!(
        std::fs::read_dir(host.state_dir.join("netns"))
            .unwrap()
            .count(),
        0,
        "a namespace mount outlived the crash"
    );
    // And the name is free for the next try.
    host.ok(&["run", "-d", "--name", "c", "--", "sleep", "600"]);
}

#[test]
fn a_bridge_left_by_a_crash_is_removed_and_its_subnet_free_again() {
    let mut host = crashing_at("network-forgotten-before-bridge-deleted");
    host.ok(&["network", "create", "--subnet", "10.160.0.0/24", "n"]);
    let bridge =
        host.json(&["network", "inspect", "n"])[0]["Options"]["com.docker.network.bridge.name"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_ne!(host.netbpf(&["network", "rm", "n"]).code, 0);
    // While no daemon runs: interfaces a crash leaves with temporary names.
    must(
        "ip",
        &[
            "-n",
            &host.host_ns,
            "link",
            "add",
            "tmpabcdef1",
            "type",
            "veth",
            "peer",
            "name",
            "nbd1234abcd",
        ],
    );
    restart_after_crash(&mut host);
    let links = host.links(&host.host_ns);
    assert!(!links.contains(&bridge), "{links:?}");
    assert!(
        !links
            .iter()
            .any(|l| l == "tmpabcdef1" || l == "nbd1234abcd"),
        "{links:?}"
    );
    host.ok(&["network", "create", "--subnet", "10.160.0.0/24", "n2"]);
}
