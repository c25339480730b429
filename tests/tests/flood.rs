//! A spoofed-SYN flood at a published port (docs/security.md, guarantee 4): conntrack must
//! not evict established flows for it. Each flow is made to depend on its entry by having
//! the far side speak first after the flood.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use netbpf_tests::{HOST_UPLINK_IP, OUTSIDE_IP, TestHost, hostile, sink::wait_for_log};

/// On TCP port `argv[1]`: accepts one connection, prints `connected`, waits until the file
/// `argv[2]` exists, then sends `pushed` and closes.
const PUSH_SERVER: &str = "import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1])))
s.listen(1024)
print('ready', flush=True)
conn, _ = s.accept()
print('connected', flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.1)
conn.sendall(b'pushed')
conn.close()";

/// Connects to `argv[1]`:`argv[2]` and prints the first thing it receives (within 60 s).
const WAIT_CLIENT: &str = "import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(60)
print('got', s.recv(100).decode(), flush=True)";

fn wait_for_file(path: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            Instant::now() < deadline,
            "{} never said {needle}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_spoofed_syn_flood_does_not_break_established_flows() {
    let mut host = TestHost::new();
    let trigger = host.dir.join("push-now");
    let trigger_arg = trigger.to_str().unwrap().to_owned();
    // An established masqueraded flow: container → outside server.
    let server_log = host.dir.join("outside-server.log");
    let server = host
        .outside("python3", &["-c", PUSH_SERVER, "7100", &trigger_arg])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&server_log).unwrap())
        .spawn()
        .unwrap();
    host.extra.push(server);
    wait_for_file(&server_log, "ready");
    host.ok(&[
        "run",
        "-d",
        "--name",
        "client",
        "--",
        "python3",
        "-c",
        WAIT_CLIENT,
        OUTSIDE_IP,
        "7100",
    ]);
    wait_for_file(&server_log, "connected");
    // An established published-port flow: outside client → container server.
    host.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "8080:8080",
        "--",
        "python3",
        "-c",
        PUSH_SERVER,
        "8080",
        &trigger_arg,
    ]);
    wait_for_log(&host, "srv", "ready", 1);
    let outside_client = host
        .outside("python3", &["-c", WAIT_CLIENT, HOST_UPLINK_IP, "8080"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_log(&host, "srv", "connected", 1);

    // 400 000 SYNs from spoofed sources at the published port: more than conntrack holds.
    let macs = (
        host.mac(&host.host_ns, "up0"),
        host.mac(&host.outside_ns, "up0"),
    );
    hostile::syn_flood(
        &host.outside_ns,
        "up0",
        macs,
        (HOST_UPLINK_IP, 8080),
        400_000,
    );

    // Now both far sides speak first.
    std::fs::write(&trigger, "").unwrap();
    wait_for_log(&host, "client", "got pushed", 1);
    let out = outside_client.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "got pushed",
        "the published-port flow broke under the flood"
    );
}
