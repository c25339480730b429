//! The integration test harness: a throwaway "host" per test, with a daemon of its own.
//!
//! Each [`TestHost`] makes two named network namespaces — `host`, where the daemon runs,
//! and `outside`, joined to it by an uplink veth on 198.18.0.0/24 (a benchmarking range
//! that is never routed) — plus its own state dir, socket and bpffs mount. Nothing touches
//! the machine's root namespace, so tests run in parallel. `Drop` tears everything down on
//! every path, panics included.
//!
//! Tests need root and fail (never skip) without it.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod packet;

use serde_json::Value;

/// Address of the host namespace's uplink, and of the `outside` end.
pub const HOST_UPLINK_IP: &str = "198.18.0.2";
pub const OUTSIDE_IP: &str = "198.18.0.1";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output if it cannot start.
pub fn cmd(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn must(program: &str, args: &[&str]) -> String {
    let out = cmd(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netbpf_bin() -> PathBuf {
    let bin = std::env::var_os("NETBPF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netbpf"));
    assert!(
        bin.exists(),
        "netbpf binary not found at {} (run `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// The result of one `netbpf` client command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct TestHost {
    pub id: String,
    pub host_ns: String,
    pub outside_ns: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    /// The cgroup the daemon hooks: processes in it are "the host" for published ports.
    pub cgroup: PathBuf,
    daemon: Option<Child>,
    /// Extra processes a test started (e.g. for `attach --pid`), killed on drop.
    pub extra: Vec<Child>,
}

impl TestHost {
    /// A fresh host namespace with an uplink, and a daemon running in it.
    #[expect(
        clippy::new_without_default,
        reason = "making namespaces and a daemon is no default"
    )]
    pub fn new() -> Self {
        Self::with_daemon_args(&[])
    }

    pub fn with_daemon_args(args: &[&str]) -> Self {
        let mut host = Self::bare();
        host.start_daemon(args);
        host
    }

    /// The namespaces and directories, without a daemon.
    pub fn bare() -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "integration tests must run as root (cargo xtask test)"
        );
        let id = format!(
            "nbt{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("netbpf-test-{id}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        let host = Self {
            host_ns: format!("{id}-host"),
            outside_ns: format!("{id}-out"),
            socket: dir.join("netbpf.sock"),
            state_dir: dir.join("state"),
            bpffs: dir.join("bpffs"),
            cgroup: cgroup2_root().join(format!("netbpf-test-{id}")),
            dir,
            id,
            daemon: None,
            extra: vec![],
        };
        std::fs::create_dir_all(&host.cgroup).expect("test cgroup");
        must("ip", &["netns", "add", &host.host_ns]);
        must("ip", &["netns", "add", &host.outside_ns]);
        for ns in [&host.host_ns, &host.outside_ns] {
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        must(
            "ip",
            &[
                "-n",
                &host.host_ns,
                "link",
                "add",
                "up0",
                "type",
                "veth",
                "peer",
                "name",
                "up0",
                "netns",
                &host.outside_ns,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &host.host_ns,
                "addr",
                "add",
                &format!("{HOST_UPLINK_IP}/24"),
                "dev",
                "up0",
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &host.outside_ns,
                "addr",
                "add",
                &format!("{OUTSIDE_IP}/24"),
                "dev",
                "up0",
            ],
        );
        must("ip", &["-n", &host.host_ns, "link", "set", "up0", "up"]);
        must("ip", &["-n", &host.outside_ns, "link", "set", "up0", "up"]);
        must(
            "ip",
            &[
                "-n",
                &host.host_ns,
                "route",
                "add",
                "default",
                "via",
                OUTSIDE_IP,
            ],
        );
        host
    }

    /// `netbpf daemon` for this host, entering the host namespace with setns before exec
    /// (not `ip netns exec`, which would also remount /sys for the daemon).
    fn daemon_command(&self, args: &[&str]) -> Command {
        let ns = File::open(format!("/run/netns/{}", self.host_ns)).expect("host netns");
        let mut command = Command::new(netbpf_bin());
        command
            .arg("daemon")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--netns-prefix")
            .arg(self.netns_prefix())
            .args(args)
            .stdin(Stdio::null());
        // SAFETY: setns is async-signal-safe; the closure owns `ns`, so the fd stays open
        // until the child has entered the namespace.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Starts the daemon and waits until it answers.
    pub fn start_daemon(&mut self, args: &[&str]) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut command = self.daemon_command(args);
        command
            .args(["--log-level", "netbpf=debug,info"])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = command.spawn().expect("spawn daemon");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("daemon exited early ({status}):\n{}", self.daemon_log());
            }
            if self.netbpf(&["info"]).code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemon = Some(child);
    }

    /// Starts a daemon that must fail; returns what it printed.
    pub fn daemon_must_fail(&mut self, args: &[&str]) -> String {
        let out = self.daemon_command(args).output().expect("spawn daemon");
        assert!(!out.status.success(), "daemon should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// What container namespaces are called under /run/netns (unique to this test).
    pub fn netns_prefix(&self) -> String {
        format!("{}-c-", self.id)
    }

    /// A command in the host namespace and the daemon's cgroup: a host process.
    pub fn on_host(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args);
        let ns = File::open(format!("/run/netns/{}", self.host_ns)).expect("host netns");
        let procs = File::options()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .unwrap();
        // SAFETY: only setns and write(2) between fork and exec; both fds are owned by the
        // closure and stay open until then.
        unsafe {
            command.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
                    || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// A command in the `outside` namespace, beyond the uplink.
    pub fn outside(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args);
        let ns = File::open(format!("/run/netns/{}", self.outside_ns)).expect("outside netns");
        // SAFETY: only setns between fork and exec; the closure owns the fd.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Starts a long-running process (a server) that is killed when the test host drops.
    pub fn background(&mut self, mut command: Command) {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.extra
            .push(command.spawn().expect("spawn background process"));
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the clean shutdown.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "daemon shutdown failed: {status}\n{}",
                        self.daemon_log()
                    );
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("daemon did not stop within 30 s:\n{}", self.daemon_log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Runs a client command against this host's daemon.
    pub fn netbpf(&self, args: &[&str]) -> Run {
        let out = Command::new(netbpf_bin())
            .args(args)
            .env("NETBPF_SOCKET", &self.socket)
            .output()
            .expect("run netbpf");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A client command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.netbpf(args);
        assert_eq!(
            run.code, 0,
            "netbpf {args:?} failed: {}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// A client command that must fail with one line naming the problem; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.netbpf(args);
        assert_ne!(
            run.code, 0,
            "netbpf {args:?} should have failed: {}",
            run.stdout
        );
        let message = run.stderr.trim().to_owned();
        assert!(
            message.starts_with("Error: "),
            "netbpf {args:?}: unclear error {message:?}"
        );
        assert_eq!(
            message.lines().count(),
            1,
            "netbpf {args:?}: error is not one line: {message:?}"
        );
        message
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("netbpf {args:?}: not JSON ({e}): {out}"))
    }

    /// The first IPv4 address of a container on a network.
    pub fn ip_of(&self, container: &str, network: &str) -> String {
        let view = self.json(&["inspect", container]);
        view["Networks"][network]["IPAddress"]
            .as_str()
            .expect("IP address")
            .to_owned()
    }

    /// Whether `from` can ping `ip` (one packet, one second).
    pub fn pings(&self, from: &str, ip: &str) -> bool {
        self.netbpf(&["exec", from, "--", "ping", "-c", "1", "-W", "1", ip])
            .code
            == 0
    }

    /// Counters of one endpoint from `netbpf stats`.
    pub fn counters(&self, container: &str, network: &str) -> Value {
        let stats = self.json(&["stats", "--format", "json"]);
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["container"] == container && s["network"] == network)
            .cloned()
            .unwrap_or_else(|| panic!("no stats for {container} on {network}: {stats}"))
    }

    /// Interface names in a namespace of this host.
    pub fn links(&self, ns: &str) -> Vec<String> {
        let out = must("ip", &["-n", ns, "-j", "link", "show"]);
        let links: Value = serde_json::from_str(&out).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Mounts under this test's directory (namespace bind mounts, bpffs).
    pub fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Pids recorded for containers in the state file.
    fn recorded_pids(&self) -> Vec<i32> {
        let Ok(text) = std::fs::read_to_string(self.state_dir.join("state.json")) else {
            return vec![];
        };
        let Ok(state) = serde_json::from_str::<Value>(&text) else {
            return vec![];
        };
        state["containers"]
            .as_object()
            .map(|cs| {
                cs.values()
                    .filter_map(|c| c["pid"].as_i64())
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            if std::thread::panicking() {
                eprintln!("--- daemon log of {} ---\n{}", self.id, self.daemon_log());
            }
            // A clean shutdown first; it also stops the containers.
            if let Some(child) = &self.daemon {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            let mut child = self.daemon.take().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.recorded_pids() {
            // SAFETY: kill(2); containers run in their own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        for child in &mut self.extra {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        // Container namespace names a killed daemon could not remove.
        let prefix = self.netns_prefix();
        for dir in ["/run/netns", "/etc/netns"] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = Command::new("umount").arg("-l").arg(entry.path()).status();
                    let _ = std::fs::remove_dir_all(entry.path())
                        .or_else(|_| std::fs::remove_file(entry.path()));
                }
            }
        }
        // The cgroup can go once its processes are gone.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host_ns])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.outside_ns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shared L2 segment between test hosts, like the switch their second NICs plug into: a
/// bridge in a namespace of its own, with one veth into each host. The bridge does no VLAN
/// filtering (the default), so tagged frames cross it as a switch trunk port would carry them. Removed on
/// drop (taking the host ends with it).
pub struct Underlay {
    pub ns: String,
    ports: AtomicU32,
    stations: std::sync::Mutex<Vec<String>>,
}

impl Underlay {
    #[expect(
        clippy::new_without_default,
        reason = "making a namespace is no default"
    )]
    pub fn new() -> Self {
        let ns = format!(
            "nbt{}x{}-ul",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        must("ip", &["netns", "add", &ns]);
        // Made before the bridge, so that a failure from here on still removes the namespace.
        let underlay = Self {
            ns,
            ports: AtomicU32::new(0),
            stations: std::sync::Mutex::new(vec![]),
        };
        must(
            "ip",
            &["-n", &underlay.ns, "link", "add", "sw", "type", "bridge"],
        );
        must("ip", &["-n", &underlay.ns, "link", "set", "sw", "up"]);
        underlay
    }

    /// Gives `host` an interface `ifname` on this segment, up, with no address.
    pub fn plug(&self, host: &TestHost, ifname: &str) {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::SeqCst));
        must(
            "ip",
            &[
                "-n",
                &self.ns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                &host.host_ns,
            ],
        );
        must(
            "ip",
            &["-n", &self.ns, "link", "set", &port, "master", "sw", "up"],
        );
        must("ip", &["-n", &host.host_ns, "link", "set", ifname, "up"]);
    }
}

impl Underlay {
    /// A namespace of its own on this segment with `addr` (CIDR) on its interface, for a
    /// service the hosts share (the cluster store). Removed with the underlay.
    pub fn station(&self, name: &str, addr: &str) -> String {
        let ns = format!("{}-{name}", self.ns);
        must("ip", &["netns", "add", &ns]);
        self.stations.lock().unwrap().push(ns.clone());
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::SeqCst));
        must(
            "ip",
            &[
                "-n", &self.ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        );
        must(
            "ip",
            &["-n", &self.ns, "link", "set", &port, "master", "sw", "up"],
        );
        must("ip", &["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }
}

/// A real etcd server (Debian's `etcd-server`) in a namespace on an underlay, with its data
/// in a directory of its own. Stop and start it to test outages; killed and removed on drop.
pub struct Etcd {
    pub ns: String,
    pub addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// etcd listening on `addr` (an address of the underlay's subnet, without prefix).
    pub fn start(underlay: &Underlay, addr: &str) -> Self {
        let ns = underlay.station("etcd", &format!("{addr}/24"));
        let dir = std::env::temp_dir().join(format!("netbpf-test-{ns}"));
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let mut etcd = Self {
            ns,
            addr: addr.to_owned(),
            dir,
            child: None,
        };
        etcd.resume();
        etcd
    }

    pub fn url(&self) -> String {
        format!("etcd://{}:2379", self.addr)
    }

    /// Starts (or restarts, with the same data) the server and waits until it answers.
    pub fn resume(&mut self) {
        let client = format!("http://{}:2379", self.addr);
        let peer = format!("http://{}:2380", self.addr);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("etcd (Debian's etcd-server) is needed: run cargo xtask test");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.ns))
                .args(["curl", "-s", "--max-time", "1", &format!("{client}/health")])
                .output()
                .expect("curl");
            if String::from_utf8_lossy(&health.stdout).contains("true") {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for ns in self.stations.lock().unwrap().iter() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Whether this kernel can make an interface of `kind` (`vlan`, `ipvlan`, `macvlan`), tried
/// on a veth in a scratch namespace. Tests use it to decide which behaviour is right here:
/// the feature working, or netbpf refusing it with a clear error.
pub fn kernel_has_link_kind(kind: &str) -> bool {
    let ns = format!(
        "nbt{}x{}-probe",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    must("ip", &["netns", "add", &ns]);
    must(
        "ip",
        &[
            "-n", &ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
        ],
    );
    let extra: &[&str] = if kind == "vlan" { &["id", "5"] } else { &[] };
    let mut args = vec![
        "-n", &ns, "link", "add", "link", "p0", "name", "probe", "type", kind,
    ];
    args.extend(extra);
    let ok = cmd("ip", &args).status.success();
    must("ip", &["netns", "del", &ns]);
    ok
}

/// Where the unified (v2) cgroup hierarchy is mounted on this machine.
pub fn cgroup2_root() -> PathBuf {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        })
        .expect("a cgroup2 file system")
}

/// Output of a command that must succeed, as text.
pub fn run_ok(mut command: Command) -> String {
    let out = command.output().expect("spawn");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a command succeeds.
pub fn succeeds(mut command: Command) -> bool {
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command.status().is_ok_and(|s| s.success())
}

/// A named namespace with veths and a bpffs of its own, for running the real programs on
/// crafted packets (BPF_PROG_TEST_RUN resolves the context's ifindex in the caller's
/// namespace, so the programs run on a thread inside it). Removed on drop.
pub struct ProgramSandbox {
    pub ns: String,
    pub bpffs: PathBuf,
    dir: PathBuf,
}

impl ProgramSandbox {
    /// Makes `veths` (each with a peer named `<name>p`) in a fresh namespace.
    pub fn new(tag: &str, veths: &[&str]) -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "integration tests must run as root"
        );
        let ns = format!("nbp{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("netbpf-test-{ns}"));
        let sandbox = Self {
            bpffs: dir.join("bpffs"),
            ns,
            dir,
        };
        std::fs::create_dir_all(&sandbox.bpffs).unwrap();
        must(
            "mount",
            &["-t", "bpf", "bpffs", sandbox.bpffs.to_str().unwrap()],
        );
        must("ip", &["netns", "add", &sandbox.ns]);
        for veth in veths {
            let peer = format!("{veth}p");
            must(
                "ip",
                &[
                    "-n",
                    &sandbox.ns,
                    "link",
                    "add",
                    veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &peer,
                ],
            );
        }
        sandbox
    }

    pub fn ifindex(&self, name: &str) -> u32 {
        let out = must("ip", &["-n", &self.ns, "-j", "link", "show", name]);
        let links: Value = serde_json::from_str(&out).unwrap();
        links[0]["ifindex"].as_u64().unwrap() as u32
    }

    /// Runs `work` on a thread inside the namespace.
    pub fn run<T: Send>(&self, work: impl FnOnce(&Path) -> T + Send) -> T {
        let ns = File::open(format!("/run/netns/{}", self.ns)).unwrap();
        let bpffs = self.bpffs.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                work(&bpffs)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for ProgramSandbox {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A `struct __sk_buff` with only `ifindex` (offset 40) set: the device a packet came in on.
pub fn skb_ctx(ifindex: u32) -> [u8; 48] {
    let mut ctx = [0u8; 48];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs a TC program once on `frame` as if it came in on `ifindex`; returns the verdict
/// and the frame as the program left it.
pub fn run_tc(
    program: &aya::programs::SchedClassifier,
    frame: &[u8],
    ifindex: u32,
) -> (u32, Vec<u8>) {
    use aya::TestRun as _;
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = skb_ctx(ifindex);
    let options = aya::TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    let result = program
        .test_run(options)
        .unwrap_or_else(|e| panic!("test run failed: {e:?}"));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Runs an XDP program once on `frame`; returns the verdict and the resulting frame.
pub fn run_xdp(program: &aya::programs::Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    use aya::TestRun as _;
    let mut out = vec![0u8; frame.len() + 256];
    let options = aya::TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let result = program
        .test_run(options)
        .unwrap_or_else(|e| panic!("test run failed: {e:?}"));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}
