//! The benchmark topology, one set of namespaces per contender, never the root namespace:
//!
//! ```text
//! client (outside) ──uplink veth 198.18.0.0/24── host ──bridge 10.240.0.0/24── server, peer
//! ```
//!
//! Every object carries the contender's prefix and is removed on drop.

use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

pub const CLIENT_IP: &str = "198.18.0.1";
pub const HOST_IP: &str = "198.18.0.2";

/// Runs a command, failing with its output.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `ip -j link show DEV` says of one interface in namespace `ns`.
pub fn link_info(ns: &str, dev: &str) -> anyhow::Result<serde_json::Value> {
    let links: serde_json::Value =
        serde_json::from_str(&run("ip", &["-n", ns, "-j", "link", "show", dev])?)?;
    Ok(links[0].clone())
}

/// A command inside a named namespace, entered with nsenter (which, unlike `ip netns
/// exec`, leaves /sys alone), optionally pinned to CPU 0.
pub fn in_ns(ns: &str, pinned: bool, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{ns}"));
    if pinned {
        command.args(["taskset", "-c", "0"]);
    }
    command.arg(program).args(args);
    command
}

/// A command inside a named namespace and inside the cgroup `cgroup` (which netbpf's socket
/// hooks treat as "the host"), optionally pinned to CPU 0.
pub fn in_ns_cgroup(
    ns: &str,
    pinned: bool,
    cgroup: &std::path::Path,
    program: &str,
    args: &[&str],
) -> Command {
    let mut all = vec![
        "-c",
        r#"echo $$ > "$0/cgroup.procs" && exec "$@""#,
        cgroup.to_str().expect("utf-8"),
        program,
    ];
    all.extend(args);
    in_ns(ns, pinned, "sh", &all)
}

/// Where the unified (v2) cgroup hierarchy is mounted (on hybrid systems, under
/// /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> anyhow::Result<std::path::PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| {
            let Ok(path) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: a zeroed statfs is a valid out-buffer; the path is NUL-terminated.
            unsafe {
                let mut fs: libc::statfs = std::mem::zeroed();
                libc::statfs(path.as_ptr(), &mut fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC
            }
        })
        .context("no cgroup2 file system found")
}

pub struct Topology {
    pub prefix: String,
    pub client: String,
    pub host: String,
    /// Namespaces made here for hand-wired containers (nftables and ceiling contenders).
    pub extra_ns: Vec<String>,
    pub children: Vec<Child>,
    /// Scratch directories (state, pins, Docker's data root), removed last.
    pub dirs: Vec<std::path::PathBuf>,
    /// Cgroups made for the run, removed once their processes are gone.
    pub cgroups: Vec<std::path::PathBuf>,
}

impl Topology {
    /// The client and host namespaces with the uplink between them.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let topo = Self {
            prefix: prefix.to_owned(),
            client: format!("{prefix}-client"),
            host: format!("{prefix}-host"),
            extra_ns: vec![],
            children: vec![],
            dirs: vec![],
            cgroups: vec![],
        };
        for ns in [&topo.client, &topo.host] {
            run("ip", &["netns", "add", ns])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        run(
            "ip",
            &[
                "-n",
                &topo.host,
                "link",
                "add",
                "up0",
                "type",
                "veth",
                "peer",
                "name",
                "up0",
                "netns",
                &topo.client,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &topo.host,
                "addr",
                "add",
                &format!("{HOST_IP}/24"),
                "dev",
                "up0",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &topo.client,
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                "up0",
            ],
        )?;
        for ns in [&topo.client, &topo.host] {
            run("ip", &["-n", ns, "link", "set", "up0", "up"])?;
        }
        run(
            "ip",
            &[
                "-n", &topo.host, "route", "add", "default", "via", CLIENT_IP,
            ],
        )?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &topo.host,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        Ok(topo)
    }

    /// Only the clean-up: namespaces, processes and directories are added by the caller
    /// (to `extra_ns`, `children`, `dirs`), and go on drop like a full topology's.
    pub fn empty(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            client: String::new(),
            host: String::new(),
            extra_ns: vec![],
            children: vec![],
            dirs: vec![],
            cgroups: vec![],
        }
    }

    /// A cgroup of this run's own under the cgroup2 root, for `netbpf daemon --cgroup`: the
    /// socket hooks then apply to the benchmark's host-side clients only, never to the
    /// machine's other processes.
    pub fn cgroup(&mut self) -> anyhow::Result<std::path::PathBuf> {
        let path = cgroup2_root()?.join(format!("netbpf-bench-{}", self.prefix));
        std::fs::create_dir_all(&path)?;
        self.cgroups.push(path.clone());
        Ok(path)
    }

    /// A container by hand: a namespace on a Linux bridge in the host (for the contenders
    /// that are not netbpf). Returns its address.
    pub fn plain_container(&mut self, name: &str, index: u8) -> anyhow::Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        let bridge = "br0";
        if run("ip", &["-n", &self.host, "link", "show", bridge]).is_err() {
            run(
                "ip",
                &["-n", &self.host, "link", "add", bridge, "type", "bridge"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &self.host,
                    "addr",
                    "add",
                    "10.240.0.1/24",
                    "dev",
                    bridge,
                ],
            )?;
            run("ip", &["-n", &self.host, "link", "set", bridge, "up"])?;
        }
        run("ip", &["netns", "add", &ns])?;
        self.extra_ns.push(ns.clone());
        let veth = format!("vb{index}");
        run(
            "ip",
            &[
                "-n", &self.host, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &[
                "-n", &self.host, "link", "set", &veth, "master", bridge, "up",
            ],
        )?;
        let ip = format!("10.240.0.{}", 10 + index);
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &["-n", &ns, "route", "add", "default", "via", "10.240.0.1"],
        )?;
        Ok(ip)
    }

    /// Keeps a background process (a server, a daemon) until the topology goes.
    pub fn spawn(&mut self, mut command: Command) -> anyhow::Result<()> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.children
            .push(command.spawn().context("spawning a background process")?);
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: kill(2) on our own child; SIGTERM lets daemons clean up.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for child in &mut self.children {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Container namespaces netbpf named with our prefix, in case a daemon could not.
        let named: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .collect();
        let all: std::collections::BTreeSet<&String> = self
            .extra_ns
            .iter()
            .chain([&self.client, &self.host])
            .chain(&named)
            .filter(|ns| !ns.is_empty())
            .collect();
        for ns in all {
            // Kill whatever still runs in the namespace (servers started inside it).
            if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for cgroup in &self.cgroups {
            for _ in 0..50 {
                if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        for dir in &self.dirs {
            // A bpffs mounted by the daemon under it is gone with the daemon's cleanup;
            // unmount anything left before deleting.
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(dir)
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
