//! One container cannot exhaust the embedded DNS for the others, nor the daemon: it opens
//! 2000 TCP connections to 127.0.0.11 and floods it with queries to forward, on a host with
//! systemd's default soft limit of 1024 open files, while another container resolves.

use std::time::{Duration, Instant};

use netbpf_tests::{OUTSIDE_IP, TestHost};

/// Holds `argv[1]` TCP connections to the embedded DNS open, then floods it over UDP with
/// queries it must forward (random names under outside.test) until killed.
const HOG: &str = r#"
import socket, struct, random, sys, time
conns = []
for _ in range(int(sys.argv[1])):
    try:
        c = socket.create_connection(("127.0.0.11", 53), timeout=1)
        conns.append(c)
    except OSError:
        pass
print("held", len(conns), flush=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
while True:
    name = "%08x.outside.test" % random.getrandbits(32)
    q = struct.pack(">HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0)
    for part in name.split("."):
        q += bytes([len(part)]) + part.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    try:
        s.sendto(q, ("127.0.0.11", 53))
    except BlockingIOError:
        time.sleep(0.0005)
    try:
        while True:
            s.recvfrom(4096)
    except BlockingIOError:
        pass
"#;

#[test]
fn one_container_cannot_exhaust_the_embedded_dns_or_the_daemon() {
    let mut host = TestHost::bare();
    host.daemon_open_files = Some((1024, 8192));
    let resolv_conf = host.dir.join("resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {OUTSIDE_IP}\n")).unwrap();
    host.start_daemon(&["--resolv-conf", resolv_conf.to_str().unwrap()]);
    host.start_outside_resolver();
    host.ok(&["network", "create", "n"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "good",
        "--network",
        "n",
        "--",
        "sleep",
        "600",
    ]);
    let script = host.dir.join("hog.py");
    std::fs::write(&script, HOG).unwrap();
    host.ok(&[
        "run",
        "-d",
        "--name",
        "hog",
        "--network",
        "n",
        "--",
        "python3",
        script.to_str().unwrap(),
        "2000",
    ]);
    netbpf_tests::eventually(30, "the hog to hold its connections", || {
        host.ok(&["logs", "hog"]).contains("held")
    });

    // While the hog floods: names resolve for the other container, local and forwarded,
    // and the API answers.
    let dig = |name: &str| {
        host.netbpf(&[
            "exec", "good", "--", "dig", "+time=2", "+tries=2", "+short", name,
        ])
        .stdout
        .trim()
        .to_owned()
    };
    for _ in 0..5 {
        assert_eq!(dig("www.outside.test"), "192.0.2.77");
        assert_eq!(dig("hog"), host.ip_of("hog", "n"));
        let started = Instant::now();
        host.ok(&["ps"]);
        assert!(started.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(200));
    }
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", host.json(&["info"])["pid"])).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains("8192                 8192")),
        "{limits}"
    );
}
