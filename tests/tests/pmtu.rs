//! Path-MTU discovery through NAT (docs/security.md, guarantee 6): between the host and a
//! client lies a link of MTU 1400, both ends 1500. The "fragmentation needed" a router sends
//! to the host must reach the container whose flow it is, or its full-sized packets vanish
//! and TCP stalls.

use std::process::{Child, Stdio};

use netbpf_tests::{
    HOST_UPLINK_IP, TestHost, hostile,
    path::{CLIENT_IP, NarrowPath},
    sink::wait_for_log,
};

/// Runs `command` (an iperf3 client moving 1 MB, under `timeout 30`) and asserts it ends well.
fn completes(what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what}: the 1 MB transfer did not complete:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn_quiet(mut command: std::process::Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

#[test]
fn path_mtu_discovery_works_through_published_ports_and_masquerade() {
    let mut host = TestHost::new();
    let path = NarrowPath::new(&host);
    // Published: the container sends (iperf3 -R) to the client beyond the narrow link.
    host.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "5201:5201",
        "--",
        "iperf3",
        "-s",
        "-p",
        "5201",
        "--forceflush",
    ]);
    wait_for_log(&host, "srv", "listening", 1);
    let out = path
        .client(
            "timeout",
            &[
                "30",
                "iperf3",
                "-c",
                HOST_UPLINK_IP,
                "-p",
                "5201",
                "-R",
                "-n",
                "1M",
            ],
        )
        .output()
        .unwrap();
    completes("through a published port", out);

    // Masquerade: the container uploads to a server on the client.
    host.extra
        .push(spawn_quiet(path.client("iperf3", &["-s", "-p", "5202"])));
    hostile::sleeper(&host, "up", "bridge");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = host.netbpf(&[
        "exec", "up", "--", "timeout", "30", "iperf3", "-c", CLIENT_IP, "-p", "5202", "-n", "1M",
    ]);
    assert_eq!(
        out.code, 0,
        "through masquerade: {}{}",
        out.stdout, out.stderr
    );
    // The container learnt the path's MTU.
    let route = host.ok(&["exec", "up", "--", "ip", "route", "get", CLIENT_IP]);
    assert!(route.contains("mtu 1400"), "{route}");
}
