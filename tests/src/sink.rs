//! UDP sinks that log what reaches them, for tests whose question is "did this one datagram
//! arrive?": a datagram needs no reply to do harm, so delivery is what counts.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::TestHost;

/// Listens on UDP port `argv[1]` (9999 without one) and prints `got <payload> <peer address>
/// <peer port>` for each datagram, flushed.
pub const UDP_SINK: &str = "import socket, sys
port = int(sys.argv[1]) if len(sys.argv) > 1 else 9999
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', port))
print('ready', flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print('got', data.decode(errors='replace'), peer[0], peer[1], flush=True)";

/// `python3 -c UDP_SEND ADDR PORT PAYLOAD [SPORT]`: one datagram through the sender's own
/// stack (routing and all), from source port SPORT if given.
pub const UDP_SEND: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 4:
    s.bind(('0.0.0.0', int(sys.argv[4])))
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))";

/// A container `name` on `network` running [`UDP_SINK`] on 9999, with `publish` (`-p`
/// values); returns once it listens.
pub fn in_container(host: &TestHost, name: &str, network: &str, publish: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--network", network];
    for p in publish {
        args.extend(["-p", p]);
    }
    args.extend(["--", "python3", "-c", UDP_SINK]);
    host.ok(&args);
    wait_for_log(host, name, "ready", 1);
}

/// How many lines of container `name`'s log contain `needle`.
pub fn count_in_log(host: &TestHost, name: &str, needle: &str) -> usize {
    host.ok(&["logs", name])
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Waits (up to 10 s) until container `name` has logged `needle` `at_least` times.
pub fn wait_for_log(host: &TestHost, name: &str, needle: &str, at_least: usize) {
    wait_until(
        || count_in_log(host, name, needle) >= at_least,
        || {
            format!(
                "{name} never logged {needle:?}:\n{}",
                host.ok(&["logs", name])
            )
        },
    );
}

/// A [`UDP_SINK`] on `port` in the `outside` namespace, logging to `log` (killed with the
/// host).
pub fn outside(host: &mut TestHost, port: u16, log: &Path) {
    let file = std::fs::File::create(log).expect("sink log");
    let child = host
        .outside("python3", &["-c", UDP_SINK, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .expect("outside sink");
    host.extra.push(child);
    wait_until(
        || lines_with(log, "ready") > 0,
        || "the outside sink never started".into(),
    );
}

/// The source port of the first datagram `log` shows with `payload`.
pub fn peer_port(log: &Path, payload: &str) -> u16 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("got {payload} ")))
        .unwrap_or_else(|| panic!("no {payload:?} in {text}"));
    line.rsplit(' ').next().unwrap().parse().expect("a port")
}

/// How many lines of `log` contain `needle`.
pub fn lines_with(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Sends one datagram with [`UDP_SEND`] from `command`'s namespace.
pub fn send(mut command: Command) {
    let status = command.status().expect("python3");
    assert!(status.success(), "sending a datagram: {command:?}");
}

fn wait_until(mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(100));
    }
}
