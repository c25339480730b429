//! The embedded DNS with real clients inside containers (dig, getent, ping), an upstream
//! dnsmasq in the "outside" namespace, and hostile input.

use std::time::{Duration, Instant};

use netbpf_tests::{OUTSIDE_IP, TestHost};

fn dig(host: &TestHost, from: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", from, "--", "dig", "+time=5", "+tries=1"];
    all.extend(args);
    host.netbpf(&all).stdout
}

fn dig_short(host: &TestHost, from: &str, name: &str) -> String {
    dig(host, from, &["+short", name]).trim().to_owned()
}

#[test]
fn containers_find_each_other_by_name_and_alias_on_user_networks() {
    let host = TestHost::new();
    host.ok(&["network", "create", "localnet"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "localnet",
        "--network-alias",
        "db",
        "--",
        "sleep",
        "600",
    ]);
    let c1 = host.ip_of("c1", "localnet");
    // The walkthrough: ping by name, getent for the alias.
    let ping = host.netbpf(&[
        "run",
        "--rm",
        "--name",
        "c2",
        "--network",
        "localnet",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        "c1",
    ]);
    assert_eq!(
        ping.code, 0,
        "ping c1 failed: {}{}",
        ping.stdout, ping.stderr
    );
    assert!(ping.stdout.contains(&c1), "{}", ping.stdout);
    let getent = host.netbpf(&[
        "run",
        "--rm",
        "--name",
        "c3",
        "--network",
        "localnet",
        "--",
        "getent",
        "hosts",
        "db",
    ]);
    assert_eq!(getent.code, 0, "{}", getent.stderr);
    assert!(getent.stdout.starts_with(&c1), "{}", getent.stdout);

    host.ok(&[
        "run",
        "-d",
        "--name",
        "c4",
        "--network",
        "localnet",
        "--",
        "sleep",
        "600",
    ]);
    let resolv = host.ok(&["exec", "c4", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    assert_eq!(dig_short(&host, "c4", "c1"), c1);
    assert_eq!(
        dig_short(&host, "c4", "DB."),
        c1,
        "names are case-insensitive"
    );
    // PTR for a container address; AAAA for a container name is "no data", not NXDOMAIN.
    assert_eq!(dig(&host, "c4", &["+short", "-x", &c1]).trim(), "c1.");
    let aaaa = dig(&host, "c4", &["AAAA", "c1"]);
    assert!(
        aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"),
        "{aaaa}"
    );
    // TCP too.
    assert_eq!(dig(&host, "c4", &["+tcp", "+short", "c1"]).trim(), c1);
    // Port 53 stays free for the container's own programs (a DNS server in a container).
    let bind = host.netbpf(&[
        "exec",
        "c4",
        "--",
        "python3",
        "-c",
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('0.0.0.0', 53))",
    ]);
    assert_eq!(
        bind.code, 0,
        "port 53 is taken in the container: {}",
        bind.stderr
    );
    // `ip netns exec` sees the container's namespace and its resolv.conf.
    let exposed = format!("{}c4", host.netns_prefix());
    let resolv = netbpf_tests::must(
        "ip",
        &["netns", "exec", &exposed, "cat", "/etc/resolv.conf"],
    );
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    let answer = netbpf_tests::must(
        "ip",
        &["netns", "exec", &exposed, "dig", "+short", "+time=5", "c1"],
    );
    assert_eq!(answer.trim(), c1);
}

#[test]
fn the_default_bridge_has_no_names_but_links_write_hosts_entries() {
    let host = TestHost::new();
    host.ok(&["run", "-d", "--name", "b1", "--", "sleep", "600"]);
    host.ok(&["run", "-d", "--name", "b2", "--", "sleep", "600"]);
    let b1 = host.ip_of("b1", "bridge");
    let resolv = host.ok(&["exec", "b2", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        !resolv.contains("127.0.0.11"),
        "default bridge got the embedded DNS: {resolv}"
    );
    assert_ne!(
        host.netbpf(&["exec", "b2", "--", "getent", "hosts", "b1"])
            .code,
        0,
        "b1 resolved on the default bridge"
    );

    let hosts = host.netbpf(&[
        "run",
        "--rm",
        "--name",
        "b4",
        "--link",
        "b1:webserver",
        "--",
        "cat",
        "/etc/hosts",
    ]);
    assert_eq!(hosts.code, 0, "{}", hosts.stderr);
    assert!(
        hosts.stdout.contains(&format!("{b1}\twebserver b1")),
        "{}",
        hosts.stdout
    );
    let ping = host.netbpf(&[
        "run",
        "--rm",
        "--name",
        "b5",
        "--link",
        "b1:webserver",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "webserver",
    ]);
    assert_eq!(ping.code, 0, "{}", ping.stdout);
    let err = host.fails(&[
        "run", "-d", "--name", "b6", "--link", "ghost:x", "--", "true",
    ]);
    assert!(err.contains("no such container: ghost"), "{err}");
    let err = host.fails(&[
        "run",
        "-d",
        "--name",
        "b6",
        "--network-alias",
        "x",
        "--",
        "true",
    ]);
    assert!(err.contains("user-defined networks"), "{err}");
}

#[test]
fn names_follow_networks_and_lifecycles() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.99.1.0/24", "one"]);
    host.ok(&["network", "create", "--subnet", "10.99.2.0/24", "two"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "alpha",
        "--network",
        "one",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "beta",
        "--network",
        "two",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "asker",
        "--network",
        "one",
        "--dns",
        "192.0.2.1",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(dig_short(&host, "asker", "alpha"), "10.99.1.2");
    // A name on a network the asker is not on does not resolve (it is forwarded, and the
    // unreachable upstream makes that a quick SERVFAIL).
    let other = dig(&host, "asker", &["beta"]);
    assert!(!other.contains("10.99.2."), "{other}");
    host.ok(&["network", "connect", "two", "asker"]);
    assert_eq!(dig_short(&host, "asker", "beta"), "10.99.2.2");
    host.ok(&["network", "disconnect", "two", "asker"]);
    assert!(!dig(&host, "asker", &["beta"]).contains("10.99.2."));

    // stop/start: a new address, and no stale answer.
    host.ok(&["stop", "-t", "1", "alpha"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "squatter",
        "--network",
        "one",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&["start", "alpha"]);
    let now = host.ip_of("alpha", "one");
    assert_ne!(now, "10.99.1.2");
    assert_eq!(dig_short(&host, "asker", "alpha"), now);
    host.ok(&["rm", "-f", "alpha"]);
    assert!(
        !dig(&host, "asker", &["alpha"]).contains("10.99.1."),
        "removed container still resolves"
    );
}

#[test]
fn other_names_are_forwarded_upstream_and_fail_fast_when_it_is_down() {
    let mut host = TestHost::new();
    host.start_outside_resolver();
    host.ok(&["network", "create", "net"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "fwd",
        "--network",
        "net",
        "--dns",
        OUTSIDE_IP,
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(dig_short(&host, "fwd", "www.outside.test"), "192.0.2.77");
    assert_eq!(
        dig(&host, "fwd", &["+tcp", "+short", "www.outside.test"]).trim(),
        "192.0.2.77"
    );
    let missing = dig(&host, "fwd", &["nothing.invalid"]);
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");

    host.ok(&[
        "run",
        "-d",
        "--name",
        "down",
        "--network",
        "net",
        "--dns",
        "198.18.0.99",
        "--",
        "sleep",
        "600",
    ]);
    let started = Instant::now();
    let failed = dig(&host, "down", &["www.outside.test"]);
    let took = started.elapsed();
    assert!(failed.contains("status: SERVFAIL"), "{failed}");
    assert!(
        took < Duration::from_secs(4),
        "SERVFAIL took {took:?}, longer than a client waits"
    );
    // Container names still answer with the upstream down.
    assert!(!dig_short(&host, "down", "fwd").is_empty());
}

/// Sends garbage, a truncated query and an oversized one, then a burst of valid queries.
const ABUSE: &str = r#"
import socket, struct, random, sys, time
def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for part in name.split("."):
        q += bytes([len(part)]) + part.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for every answer
s.settimeout(0.5)
srv = ("127.0.0.11", 53)
for junk in [b"", b"\x00", bytes(random.getrandbits(8) for _ in range(40)), query("peer", 7)[:15], query("peer", 8) + b"x" * 3000]:
    s.sendto(junk, srv)
    try:
        data, _ = s.recvfrom(4096)
        rcode = data[3] & 0x0f if len(data) > 3 else -1
        assert rcode != 0 or data[:2] == b"\x00\x08", "junk got an answer"
    except socket.timeout:
        pass
s.sendto(query("peer", 9), srv)
data, _ = s.recvfrom(4096)
assert data[:2] == struct.pack(">H", 9) and data[3] & 0x0f == 0, "server broken after junk"
n = int(sys.argv[1])
s.setblocking(False)
for i in range(n):
    while True:
        try:
            s.sendto(query("peer", i), srv)
            break
        except BlockingIOError:
            time.sleep(0.001)
got = set()
deadline = time.time() + 10
while len(got) < n and time.time() < deadline:
    try:
        data, _ = s.recvfrom(4096)
        got.add(struct.unpack(">H", data[:2])[0])
    except BlockingIOError:
        time.sleep(0.0005)
print(len(got))
"#;

#[test]
fn hostile_input_never_breaks_the_server_and_bursts_are_all_answered() {
    let host = TestHost::new();
    host.ok(&["network", "create", "net"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "peer",
        "--network",
        "net",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        "net",
        "--",
        "sleep",
        "600",
    ]);
    let script = host.dir.join("abuse.py");
    std::fs::write(&script, ABUSE).unwrap();
    let run = host.netbpf(&[
        "exec",
        "client",
        "--",
        "python3",
        script.to_str().unwrap(),
        "2000",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout.trim(),
        "2000",
        "not every query in the burst was answered"
    );
}

#[test]
fn names_come_back_after_a_daemon_restart() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "net"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "x",
        "--network",
        "net",
        "--",
        "sleep",
        "600",
    ]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "y",
        "--network",
        "net",
        "--dns",
        "192.0.2.1",
        "--",
        "sleep",
        "600",
    ]);
    let x = host.ip_of("x", "net");
    host.kill_daemon();
    host.start_daemon(&[]);
    assert_eq!(dig_short(&host, "y", "x"), x);
}

#[test]
fn internal_networks_get_no_names_from_outside() {
    let mut host = TestHost::new();
    host.start_outside_resolver();
    host.ok(&["network", "create", "--internal", "sealed"]);
    host.ok(&["network", "create", "open"]);
    for (name, network) in [("inner", "sealed"), ("both", "open")] {
        host.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--dns",
            OUTSIDE_IP,
            "--",
            "sleep",
            "600",
        ]);
    }
    host.ok(&["network", "connect", "sealed", "both"]);
    // Only on an internal network: no name from outside, at once; its network's names do.
    let started = Instant::now();
    let refused = dig(&host, "inner", &["www.outside.test"]);
    assert!(refused.contains("status: SERVFAIL"), "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "SERVFAIL took {:?}",
        started.elapsed()
    );
    assert!(
        !dig_short(&host, "inner", "both").is_empty(),
        "names on the internal network"
    );
    // Also on a network with a way out: forwarded as usual.
    assert_eq!(dig_short(&host, "both", "www.outside.test"), "192.0.2.77");
}
