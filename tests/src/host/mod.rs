//! [`TestHost`]: a throwaway host with a daemon of its own, and the client calls tests make
//! against it.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{cgroup2_root, must, unique_id};

mod neighbours;
mod queries;
mod requests;

pub use requests::RequestLoop;

/// Address of the host namespace's uplink, and of the `outside` end.
pub const HOST_UPLINK_IP: &str = "198.18.0.2";
pub const OUTSIDE_IP: &str = "198.18.0.1";

pub fn netbpf_bin() -> PathBuf {
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
    /// Namespaces a test added (a second LAN), deleted on drop.
    extra_ns: Vec<String>,
    /// RLIMIT_NOFILE (soft, hard) the daemon starts with, if a test sets one.
    pub daemon_open_files: Option<(u64, u64)>,
    /// Environment the daemon starts with (e.g. `FAILPOINTS` for a crash at a chosen step).
    pub daemon_env: Vec<(String, String)>,
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
        let id = unique_id();
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
            extra_ns: vec![],
            daemon_open_files: None,
            daemon_env: vec![],
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
    fn daemon_command(&self, bin: &Path, args: &[&str]) -> Command {
        let ns = File::open(format!("/run/netns/{}", self.host_ns)).expect("host netns");
        let mut command = Command::new(bin);
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
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        enter_netns(&mut command, ns);
        if let Some((soft, hard)) = self.daemon_open_files {
            // SAFETY: only setrlimit between fork and exec, on a value owned by the closure.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command
    }

    /// Starts the daemon and waits until it answers.
    pub fn start_daemon(&mut self, args: &[&str]) {
        self.start_daemon_with(&netbpf_bin(), args);
    }

    /// Starts the daemon of another build (an earlier release, for upgrades) and waits
    /// until it answers.
    pub fn start_daemon_with(&mut self, bin: &Path, args: &[&str]) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut command = self.daemon_command(bin, args);
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
        let out = self
            .daemon_command(&netbpf_bin(), args)
            .output()
            .expect("spawn daemon");
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
        enter_netns(&mut command, ns);
        command
    }

    /// An iperf3 transfer from `outside` to the host's uplink address on `port` for `secs`
    /// seconds, running while the test goes on; [`Transfer::bytes`] waits for its end.
    pub fn transfer_from_outside(&self, port: u16, secs: u32) -> Transfer {
        let child = self
            .outside(
                "iperf3",
                &[
                    "-c",
                    HOST_UPLINK_IP,
                    "-p",
                    &port.to_string(),
                    "-t",
                    &secs.to_string(),
                    "-J",
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("iperf3");
        Transfer(child)
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
        for ns in &self.extra_ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes `command` enter the network namespace `ns` between fork and exec (not `ip netns
/// exec`, which would also remount /sys).
fn enter_netns(command: &mut Command, ns: File) {
    crate::enter_namespace(command, ns, libc::CLONE_NEWNET);
}

/// A running iperf3 client (see [`TestHost::transfer_from_outside`]).
pub struct Transfer(Child);

impl Transfer {
    /// Waits for the transfer to end; returns the bytes received. Panics if it failed.
    pub fn bytes(self) -> u64 {
        let out = self.0.wait_with_output().expect("iperf3");
        assert!(
            out.status.success(),
            "iperf3 failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
        report["end"]["sum_received"]["bytes"]
            .as_u64()
            .expect("bytes received")
    }
}
