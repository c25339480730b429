//! The API and what it writes: only root (and `--group`) may talk to the daemon, its state
//! and logs are not world-readable, and names that would add lines to a container's
//! resolv.conf or hosts file are refused.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use netbpf_tests::{TestHost, host::netbpf_bin};

/// `netbpf ps` as uid 65534 (nobody) with primary group `gid` and no others, with
/// CAP_DAC_OVERRIDE when `past_file_mode` (so only the daemon's own check can refuse it).
fn ps_as_nobody(host: &TestHost, gid: u32, past_file_mode: bool) -> netbpf_tests::Run {
    let mut command = std::process::Command::new("setpriv");
    command.args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"]);
    if past_file_mode {
        command.args(["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]);
    }
    let out = command
        .arg(netbpf_bin())
        .arg("ps")
        .env("NETBPF_SOCKET", &host.socket)
        .output()
        .expect("setpriv");
    netbpf_tests::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn only_root_and_the_api_group_may_use_the_api() {
    let mut host = TestHost::new();
    assert_eq!(mode(&host.socket), 0o600);
    // Not even a process that gets past the socket's mode: the daemon checks the peer.
    let refused = ps_as_nobody(&host, 65534, true);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("permission denied"),
        "{}",
        refused.stderr
    );
    let refused = ps_as_nobody(&host, 65534, false);
    assert_ne!(refused.code, 0, "{}", refused.stdout);

    // With --group nogroup, its members may; others still may not.
    host.stop_daemon();
    host.start_daemon(&["--group", "nogroup"]);
    let meta = std::fs::metadata(&host.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);
    let member = ps_as_nobody(&host, 65534, false);
    assert_eq!(member.code, 0, "{}", member.stderr);
    let other = ps_as_nobody(&host, 1, true);
    assert!(
        other.stderr.contains("permission denied"),
        "{}",
        other.stderr
    );

    // The state and the logs are not world-readable.
    host.ok(&[
        "run",
        "-d",
        "--name",
        "c",
        "--",
        "sh",
        "-c",
        "echo secret; sleep 600",
    ]);
    assert_eq!(mode(&host.state_dir.join("state.json")), 0o600);
    assert_eq!(mode(&host.state_dir) & 0o007, 0);
    let id = host.json(&["inspect", "c"])["Id"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = host.state_dir.join("containers").join(id).join("log");
    assert_eq!(mode(&log) & 0o007, 0, "{}", log.display());
    host.stop_daemon();
    let refused = host.daemon_must_fail(&["--group", "no-such-group"]);
    assert!(refused.contains("no group \"no-such-group\""), "{refused}");
}

#[test]
fn names_that_would_add_lines_to_resolv_conf_or_hosts_are_refused() {
    let host = TestHost::new();
    host.ok(&["network", "create", "n"]);
    host.ok(&["network", "create", "m"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "n",
        "--",
        "sleep",
        "600",
    ]);
    let cases: [(&[&str], &str); 5] = [
        (
            &["--dns-search", "example.com\nnameserver 6.6.6.6"],
            "--dns-search domain",
        ),
        (&["--network-alias", "db\n6.6.6.6 bank.example"], "alias"),
        (&["--network-alias", "two words"], "alias"),
        (&["--link", "web:x y"], "link alias"),
        (&["--link", "we b:x"], "container"),
    ];
    for (args, kind) in cases {
        let mut run = vec!["run", "-d", "--name", "evil", "--network", "n"];
        run.extend(args);
        run.extend(["--", "sleep", "600"]);
        let refused = host.fails(&run);
        assert!(
            refused.contains(&format!("invalid {kind} name")),
            "{refused}"
        );
        assert!(!host.ok(&["ps", "-a"]).contains("evil"));
    }
    let refused = host.fails(&["network", "connect", "--alias", "a\nb", "m", "web"]);
    assert!(refused.contains("invalid alias name"), "{refused}");
    assert!(
        !host.json(&["inspect", "web"])["Networks"]
            .as_object()
            .unwrap()
            .contains_key("m")
    );
    // The ordinary forms still work.
    host.ok(&[
        "run",
        "-d",
        "--name",
        "fine",
        "--network",
        "n",
        "--dns-search",
        "example.com",
        "--network-alias",
        "db",
        "--link",
        "web:site",
        "--",
        "sleep",
        "600",
    ]);
}
