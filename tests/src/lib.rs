//! The integration test harness.
//!
//! - [`host`]: [`TestHost`], a throwaway "host" per test with a daemon of its own: two named
//!   network namespaces — `host`, where the daemon runs, and `outside`, joined to it by an
//!   uplink veth on 198.18.0.0/24 (a benchmarking range that is never routed) — plus its
//!   own state dir, socket, bpffs mount and cgroup.
//! - [`cluster`]: [`Underlay`], an L2 segment between hosts, and [`Etcd`], a real cluster
//!   store on it (over TLS with client certificates made by [`pki`], if asked).
//! - [`cni`]: calling `netbpf` as a CNI runtime calls its plugin.
//! - [`docker`]: a real dockerd per test, finding the test's own `netbpf` driver.
//! - [`sandbox`]: [`ProgramSandbox`], the real programs run on crafted packets.
//! - [`hostile`]: raw frames from a hostile container or neighbour.
//! - [`image`]: a busybox image for real runtimes, without a registry.
//! - [`packet`]: building frames and checking checksums independently of the programs.
//! - [`path`]: a client beyond a narrower link, for path-MTU discovery.
//! - [`records`]: networks and endpoints as the daemon records them, for filling maps.
//! - [`sink`]: UDP sinks that log each datagram, to tell whether one packet arrived.
//!
//! Nothing touches the machine's root namespace, so tests run in parallel. `Drop` tears
//! everything down on every path, panics included. Tests need root and fail (never skip)
//! without it.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

pub mod cluster;
pub mod cni;
pub mod containerd;
pub mod docker;
pub mod host;
pub mod hostile;
pub mod image;
pub mod packet;
pub mod path;
pub mod pki;
pub mod records;
pub mod sandbox;
pub mod sink;

pub use cluster::{Etcd, Underlay};
pub use host::{HOST_UPLINK_IP, OUTSIDE_IP, Run, TestHost};
pub use sandbox::{ProgramSandbox, run_tc, run_xdp, skb_ctx};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test of this run uses (namespaces, directories, cgroups).
pub(crate) fn unique_id() -> String {
    format!(
        "nbt{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

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

/// Whether this kernel can make an interface of `kind` (`vlan`, `ipvlan`, `macvlan`), tried
/// on a veth in a scratch namespace. Tests use it to decide which behaviour is right here:
/// the feature working, or netbpf refusing it with a clear error.
pub fn kernel_has_link_kind(kind: &str) -> bool {
    let ns = format!("{}-probe", unique_id());
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

/// Polls until `done` holds, for up to `secs`; panics naming `what` if it never does.
pub fn eventually(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Starts `sh -c script` in a private mount namespace of its own (where the script binds
/// a test's directories over fixed paths), its output to `log`.
pub fn spawn_with_private_mounts(script: &str, log: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("unshare")
}

/// As [`spawn_with_private_mounts`], in the mount namespace `mounts` (a process's
/// `/proc/PID/ns/mnt`) instead of a new one.
pub fn spawn_in_mounts(
    mounts: std::fs::File,
    script: &str,
    log: &std::path::Path,
) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    enter_namespace(&mut command, mounts, libc::CLONE_NEWNS);
    command.spawn().expect("sh in a mount namespace")
}

/// Makes `command` enter namespace `ns` (of `kind`, a `CLONE_NEW*` flag) before it runs.
pub fn enter_namespace(command: &mut Command, ns: std::fs::File, kind: libc::c_int) {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    // SAFETY: setns is async-signal-safe; the closure owns `ns`, so the fd stays open
    // until the child has entered the namespace.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), kind) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether a command succeeds.
pub fn succeeds(mut command: Command) -> bool {
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command.status().is_ok_and(|s| s.success())
}
