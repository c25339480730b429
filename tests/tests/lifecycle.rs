//! Daemon and object lifecycles: nothing left behind, crashes survived, bad input refused
//! without side effects.

use netbpf_tests::{TestHost, must};

fn as_u64(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Interfaces the test harness itself made in the host namespace.
const HARNESS_LINKS: [&str; 2] = ["lo", "up0"];

#[test]
fn rm_network_rm_and_shutdown_leave_nothing_behind() {
    let mut host = TestHost::new();
    let info = host.json(&["info"]);
    assert!(
        info["program_ids"]["from_container"].as_u64().is_some(),
        "{info}"
    );
    let map_ids: Vec<u64> = info["map_ids"]
        .as_object()
        .unwrap()
        .values()
        .map(as_u64)
        .collect();
    for map in ["ENDPOINTS", "SUBNETS", "COUNTERS", "PUBLISHED", "CONNTRACK"] {
        assert!(
            info["map_ids"][map].as_u64().is_some(),
            "{map} missing: {info}"
        );
    }
    for id in &map_ids {
        must("bpftool", &["map", "show", "id", &id.to_string()]);
    }

    // The API is plain HTTP+JSON on a 0600 socket: curl works too.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&host.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let socket = host.socket.to_str().unwrap();
    let networks = must(
        "curl",
        &["-sf", "--unix-socket", socket, "http://netbpf/networks"],
    );
    assert!(networks.contains("\"Name\":\"bridge\""), "{networks}");
    let refused = netbpf_tests::cmd(
        "curl",
        &[
            "-s",
            "--unix-socket",
            socket,
            "-X",
            "DELETE",
            "http://netbpf/networks/bridge",
        ],
    );
    let body = String::from_utf8_lossy(&refused.stdout);
    assert!(
        body.contains("\"message\""),
        "API error is not JSON: {body}"
    );

    host.ok(&["network", "create", "unused1"]);
    host.ok(&["network", "create", "unused2"]);
    let pruned = host.ok(&["network", "prune"]);
    assert_eq!(pruned, "unused1\nunused2\n");

    host.ok(&["network", "create", "tmp"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "x",
        "--network",
        "tmp",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&["run", "-d", "--name", "y", "--", "sleep", "600"]);
    let x_pid = host.json(&["inspect", "x"])["State"]["Pid"]
        .as_i64()
        .unwrap();
    let veth = host.json(&["inspect", "x"])["Networks"]["tmp"]["HostInterface"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(host.links(&host.host_ns).contains(&veth));
    assert!(
        host.bpffs.join("links").join(&veth).exists(),
        "link not pinned"
    );

    host.ok(&["rm", "-f", "x"]);
    assert!(
        !host.links(&host.host_ns).contains(&veth),
        "veth left after rm"
    );
    assert!(
        !host.bpffs.join("links").join(&veth).exists(),
        "link pin left after rm"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{x_pid}")).exists(),
        "process left after rm -f"
    );
    let bridge =
        host.json(&["network", "inspect", "tmp"])[0]["Options"]["com.docker.network.bridge.name"]
            .as_str()
            .unwrap()
            .to_owned();
    host.ok(&["network", "rm", "tmp"]);
    assert!(
        !host.links(&host.host_ns).contains(&bridge),
        "bridge left after network rm"
    );
    assert_eq!(
        host.json(&["network", "ls", "--format", "json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    host.stop_daemon();
    assert_eq!(
        host.links(&host.host_ns),
        HARNESS_LINKS,
        "interfaces left after shutdown"
    );
    assert!(
        host.mounts().is_empty(),
        "mounts left after shutdown: {:?}",
        host.mounts()
    );
    assert!(
        !host.bpffs.exists() || std::fs::read_dir(&host.bpffs).unwrap().next().is_none(),
        "pins left"
    );
    // The kernel frees maps asynchronously after the last reference goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for id in &map_ids {
        while netbpf_tests::cmd("bpftool", &["map", "show", "id", &id.to_string()])
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "map {id} still exists after shutdown"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    assert!(!std::path::Path::new(&host.socket).exists(), "socket left");
    let prefix = host.netns_prefix();
    for dir in ["/run/netns", "/etc/netns"] {
        let left: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "namespace names left in {dir}: {left:?}");
    }
    // Networks are kept and come back with the next start; the container is recorded as exited.
    host.start_daemon(&[]);
    assert!(host.ok(&["ps", "-a"]).contains("exited"));
    assert!(host.links(&host.host_ns).contains(&"netbpf0".to_owned()));
}

#[test]
fn a_daemon_killed_with_sigkill_keeps_networks_containers_and_traffic() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.81.0.0/24", "keep"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "keep",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "keep",
        "--",
        "sleep",
        "600",
    ]);
    assert!(host.pings("a", "10.81.0.3"));
    let before = as_u64(&host.counters("a", "keep")["fast_packets"]);

    host.kill_daemon();
    // Pinned links and maps keep the fast path alive while no daemon runs.
    let a_pid = {
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(host.state_dir.join("state.json")).unwrap(),
        )
        .unwrap();
        state["containers"]["a"]["pid"].as_i64().unwrap()
    };
    must(
        "nsenter",
        &[
            &format!("--net=/proc/{a_pid}/ns/net"),
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "10.81.0.3",
        ],
    );

    host.start_daemon(&[]);
    let ps = host.ok(&["ps"]);
    assert!(
        ps.contains(" a\n") || ps.lines().any(|l| l.ends_with(" a")),
        "{ps}"
    );
    assert_eq!(
        ps.lines().filter(|l| l.contains("running")).count(),
        2,
        "{ps}"
    );
    assert_eq!(host.ip_of("a", "keep"), "10.81.0.2");
    let after_restart = as_u64(&host.counters("a", "keep")["fast_packets"]);
    assert!(
        after_restart > before,
        "packets sent while the daemon was down were not fast-pathed"
    );
    assert!(host.pings("a", "10.81.0.3"));
    assert!(as_u64(&host.counters("a", "keep")["fast_packets"]) > after_restart);
    // The restarted daemon manages what the old one made.
    host.ok(&[
        "run",
        "-d",
        "--name",
        "c",
        "--network",
        "keep",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(host.ip_of("c", "keep"), "10.81.0.4", "leases were lost");
    assert!(host.pings("c", "10.81.0.2"));
    host.ok(&["stop", "-t", "1", "a"]);
    assert!(!host.pings("c", "10.81.0.2"));
}

#[test]
fn a_container_that_exits_while_the_daemon_is_down_is_released_at_restart() {
    let mut host = TestHost::new();
    host.ok(&["run", "-d", "--name", "short", "--", "sleep", "600"]);
    let pid = host.json(&["inspect", "short"])["State"]["Pid"]
        .as_i64()
        .unwrap() as i32;
    let veth = host.json(&["inspect", "short"])["Networks"]["bridge"]["HostInterface"]
        .as_str()
        .unwrap()
        .to_owned();
    host.kill_daemon();
    // SAFETY: kill(2) on the container's process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(200));
    host.start_daemon(&[]);
    assert!(host.ok(&["ps", "-a"]).contains("exited"));
    assert!(
        !host.links(&host.host_ns).contains(&veth),
        "dead container's veth kept"
    );
    assert!(
        host.json(&["network", "inspect", "bridge"])[0]["Containers"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

/// Everything the daemon knows and the kernel holds, to compare before and after a refusal.
fn snapshot(host: &TestHost) -> (Vec<String>, String, String, Vec<String>) {
    (
        host.links(&host.host_ns),
        host.ok(&["network", "ls", "--format", "json"]),
        host.ok(&["ps", "-a", "--format", "json"]),
        host.mounts(),
    )
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.82.0.0/24", "used"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "--network",
        "used",
        "--ip",
        "10.82.0.20",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "on-host",
        "--network",
        "host",
        "--",
        "sleep",
        "600",
    ]);
    let host_pid = host.json(&["inspect", "on-host"])["State"]["Pid"].to_string();
    let before = snapshot(&host);

    // Each command line is split on spaces.
    let attach_host = format!("attach --name new --pid {host_pid}");
    let cases: &[(&str, &str)] = &[
        ("network create --subnet 10.0.0.0/33 n", "invalid subnet"),
        ("network create --subnet banana n", "invalid subnet"),
        (
            "network create --subnet 10.82.0.128/25 n",
            "overlaps network used",
        ),
        (
            "network create --subnet 198.18.0.0/16 n",
            "overlaps 198.18.0.0/24",
        ),
        (
            "network create --subnet 10.83.0.0/24 --gateway 10.84.0.1 n",
            "not inside subnet",
        ),
        (
            "network create --subnet 10.83.0.0/24 --ip-range 10.84.0.0/28 n",
            "not inside subnet",
        ),
        ("network create --gateway 10.84.0.1 n", "need --subnet"),
        ("network create used", "already exists"),
        ("network create bridge", "reserved"),
        ("network create host", "reserved"),
        ("network create -d overlay n", "--cluster-store"),
        ("network create -d vxlan n", "not supported"),
        ("network create bad/name", "invalid network name"),
        ("network rm used", "has containers attached: busy"),
        ("network rm bridge", "cannot be removed"),
        ("network rm nope", "network nope not found"),
        ("network inspect nope", "not found"),
        ("network connect used ghost", "no such container: ghost"),
        ("network connect nope busy", "network nope not found"),
        ("network connect used busy", "already connected"),
        ("network disconnect bridge busy", "not connected"),
        ("run -d --name busy -- true", "already in use"),
        (
            "run -d --name new --network nope -- true",
            "network nope not found",
        ),
        (
            "run -d --name new --network used --ip 10.82.0.20 -- true",
            "already in use",
        ),
        (
            "run -d --name new --network used --ip 10.99.0.5 -- true",
            "not inside subnet",
        ),
        (
            "run -d --name new --network used --ip 10.82.0.1 -- true",
            "reserved",
        ),
        (
            "run -d --name new --network used --ip nonsense -- true",
            "invalid IP address",
        ),
        (
            "run -d --name new --ip 10.213.0.9 -- true",
            "user-defined networks",
        ),
        (
            "run -d --name new --network container:ghost -- true",
            "no such container: ghost",
        ),
        (
            "run -d --name new --network used -- /no/such/binary",
            "cannot start",
        ),
        ("run -d --name b@d -- true", "invalid container name"),
        ("run -d --name new -p 99999 -- true", "invalid port spec"),
        ("run -d --name new -p 80/sctp -- true", "not tcp or udp"),
        (
            "run -d --name new --network host -p 80 -- true",
            "cannot be published",
        ),
        ("exec ghost -- true", "no such container: ghost"),
        ("stop ghost", "no such container: ghost"),
        ("start busy", "already running"),
        ("rm busy", "is running"),
        ("rm ghost", "no such container: ghost"),
        ("inspect ghost", "no such container: ghost"),
        ("attach --name new --pid 999999999", "no process with pid"),
        (
            "attach --name new --netns /etc/hostname",
            "not a network namespace",
        ),
        (&attach_host, "host"),
    ];
    let mut failures = vec![];
    for (line, expected) in cases {
        let args: Vec<&str> = line.split(' ').collect();
        let message = host.fails(&args);
        if !message.contains(expected) {
            failures.push(format!(
                "netbpf {args:?}: {message:?} does not mention {expected:?}"
            ));
        }
        let after = snapshot(&host);
        if after != before {
            failures.push(format!(
                "netbpf {args:?} changed state: {before:?} -> {after:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A client pointed at no daemon says so.
    let out = netbpf_tests::cmd(
        env!("CARGO_MANIFEST_DIR")
            .strip_suffix("/tests")
            .map(|r| format!("{r}/target/debug/netbpf"))
            .unwrap()
            .as_str(),
        &["--socket", "/nonexistent/netbpf.sock", "ps"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the netbpf daemon"),
        "{err}"
    );
}

#[test]
fn the_daemon_refuses_a_default_subnet_that_overlaps_the_host() {
    let mut host = TestHost::bare();
    let log = host.daemon_must_fail(&["--default-subnet", "198.18.0.0/16"]);
    assert!(log.contains("overlaps 198.18.0.0/24"), "{log}");
    assert_eq!(
        host.links(&host.host_ns),
        HARNESS_LINKS,
        "failed start left interfaces"
    );
    let log = host.daemon_must_fail(&["--uplink", "nosuch0"]);
    assert!(log.contains("--uplink nosuch0"), "{log}");
    assert!(
        host.mounts().is_empty(),
        "failed start left mounts: {:?}",
        host.mounts()
    );
}

/// Makes a directory immutable (`chattr +i`) while it lives: nothing can be created in it,
/// not even by root, so the daemon's next state save fails for real.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(dir: &std::path::Path) -> Self {
        must("chattr", &["+i", dir.to_str().unwrap()]);
        Self(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .args(["-i", self.0.to_str().unwrap()])
            .status();
    }
}

#[test]
fn a_change_that_cannot_be_saved_is_undone() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.87.0.0/24", "app"]);
    host.ok(&["network", "create", "--subnet", "10.88.0.0/24", "db"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "c",
        "--network",
        "app",
        "--",
        "sleep",
        "600",
    ]);
    let links_before = host.links(&host.host_ns);
    let mounts_before = host.mounts();
    let netns = format!("{}c", host.netns_prefix());
    let container_links = || must("ip", &["-n", &netns, "-o", "link"]);
    let guard = Immutable::new(&host.state_dir);

    // Each refusal names the state file, and leaves the kernel as it was.
    let err = host.fails(&["network", "connect", "db", "c"]);
    assert!(err.contains("cannot write state"), "{err}");
    assert!(!container_links().contains("eth1"), "{}", container_links());
    let err = host.fails(&["network", "create", "--subnet", "10.89.0.0/24", "more"]);
    assert!(err.contains("cannot write state"), "{err}");
    let run_d = [
        "run",
        "-d",
        "--name",
        "d",
        "--network",
        "app",
        "-p",
        "8080:80",
        "--",
        "sleep",
        "4243",
    ];
    let err = host.fails(&run_d);
    assert!(err.contains("cannot write state"), "{err}");
    assert_eq!(host.links(&host.host_ns), links_before);
    assert_eq!(host.mounts(), mounts_before);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stray = std::process::Command::new("pgrep")
        .args(["-f", "sleep 4243"])
        .output()
        .unwrap();
    assert!(
        stray.stdout.is_empty(),
        "the process of a refused run is left: {}",
        String::from_utf8_lossy(&stray.stdout)
    );
    let inspect = host.json(&["inspect", "c"]);
    assert!(inspect["Networks"].get("db").is_none(), "{inspect}");
    let ps = host.ok(&["ps", "-a"]);
    assert!(!ps.contains(" d "), "{ps}");

    // Once the state can be written again, the same requests work.
    drop(guard);
    host.ok(&["network", "connect", "db", "c"]);
    assert!(container_links().contains("eth1"));
    host.ok(&["network", "create", "--subnet", "10.89.0.0/24", "more"]);
    host.ok(&run_d);
}
