//! Container processes: start one inside a namespace, watch it exit, signal it, run `exec`.
//!
//! A container is a process tree in its own session (so one signal reaches the whole tree),
//! in a network namespace chosen by the controller and in a mount namespace of its own (so
//! per-container `/etc/resolv.conf` and `/etc/hosts` can be bind-mounted later).

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::OpenOptionsExt, process::CommandExt, process::ExitStatusExt},
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
};

/// Everything `pre_exec` needs, prepared before `fork` so the child does not allocate.
struct ChildSetup {
    netns: Option<File>,
    /// Another process's mount namespace to enter (for `exec`); else a fresh copy is made.
    mntns: Option<File>,
    /// Directory of the daemon's namespace bind mounts, dropped from the child's copy of the
    /// mount table so that it does not keep other containers' namespaces alive.
    netns_dir: CString,
    new_session: bool,
    /// (source, target) files bind-mounted in the new mount namespace: resolv.conf, hosts.
    binds: Vec<(CString, CString)>,
    /// The read end of a start gate, kept open across exec (see [`StartGate`]).
    gate: Option<std::os::fd::RawFd>,
}

impl ChildSetup {
    /// Runs in the forked child, before exec: only async-signal-safe calls.
    fn apply(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on fds and a C string owned by `self`, which outlives the
        // call; no allocation, no locks, as required between fork and exec.
        unsafe {
            if self.new_session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(gate) = self.gate
                && libc::fcntl(gate, libc::F_SETFD, 0) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(ns) = &self.netns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(ns) = &self.mntns {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) < 0 {
                    return Err(io::Error::last_os_error());
                }
                return Ok(());
            }
            if libc::unshare(libc::CLONE_NEWNS) < 0 {
                return Err(io::Error::last_os_error());
            }
            let root = c"/";
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // Not fatal: the directory may not be a mount point (then there is nothing to drop).
            libc::umount2(self.netns_dir.as_ptr(), libc::MNT_DETACH);
            for (source, target) in &self.binds {
                let flags = libc::MS_BIND;
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Starts `cmd` in the namespace `netns` (the daemon's own when `None`), output to `log`.
pub fn spawn(
    cmd: &[String],
    netns: Option<&Path>,
    log: &Path,
    netns_dir: &Path,
    binds: &[(&Path, &Path)],
) -> io::Result<(Child, StartGate)> {
    let program = cmd
        .first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    // The command is exec'ed only after the gate opens: a command that cannot be found
    // must fail here, as a plain spawn would.
    check_executable(program)?;
    // The process starts as `netbpf __start-gate FD -- CMD…`, which waits on the gate's
    // read end and only then execs the command (see `StartGate`).
    let (gate_read, gate_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let setup = ChildSetup {
        netns: netns.map(File::open).transpose()?,
        mntns: None,
        netns_dir: c_path(netns_dir),
        new_session: true,
        binds: binds.iter().map(|(s, t)| (c_path(s), c_path(t))).collect(),
        gate: Some(gate_read.as_raw_fd()),
    };
    // 0640: a container's output is its own business (and root's, and the log group's).
    let out = File::options()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(log)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg(START_GATE)
        .arg(gate_read.as_raw_fd().to_string())
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: `apply` makes only async-signal-safe syscalls (see its comment).
    unsafe { command.pre_exec(move || setup.apply()) };
    let child = command.spawn()?;
    drop(gate_read);
    Ok((child, StartGate(Some(gate_write))))
}

/// Whether `program` (a path, or a name looked up in PATH) is an executable file.
fn check_executable(program: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        executable(Path::new(program))
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
        })
    };
    if found {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }
}

/// The first argument of a container process that waits at its start gate.
pub const START_GATE: &str = "__start-gate";

/// A container process's permission to run. It is spawned waiting on a pipe, so that the
/// daemon records it (pid and all) before it runs: [`StartGate::open`] after the state is
/// saved lets it exec its command; a gate dropped unopened — the operation rolled back, or
/// the daemon died before saving — makes it exit without running anything, so no process
/// ever runs that the state does not know.
pub struct StartGate(Option<OwnedFd>);

impl StartGate {
    pub fn open(mut self) {
        if let Some(fd) = self.0.take() {
            let _ = nix::unistd::write(&fd, b"1");
        }
    }
}

/// `netbpf __start-gate FD -- CMD…`: waits for one byte on FD, then execs CMD; exits 125
/// if the gate closes first (the daemon never recorded this process).
pub fn run_start_gate(args: &[String]) -> ! {
    let (fd, cmd) = match args {
        [fd, dash, cmd @ ..] if dash == "--" && !cmd.is_empty() => (fd, cmd),
        _ => {
            eprintln!("netbpf {START_GATE}: usage: {START_GATE} FD -- CMD...");
            std::process::exit(125)
        }
    };
    let Ok(fd) = fd.parse::<std::os::fd::RawFd>() else {
        std::process::exit(125)
    };
    // SAFETY: the daemon passed this fd, open and ours alone, across exec.
    let gate = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut byte = [0u8; 1];
    let opened = matches!(nix::unistd::read(&gate, &mut byte), Ok(1));
    drop(gate);
    if !opened {
        eprintln!("netbpf: the daemon stopped before this container was recorded: not started");
        std::process::exit(125);
    }
    let error = Command::new(&cmd[0]).args(&cmd[1..]).exec();
    eprintln!("netbpf: cannot start {:?}: {error}", cmd[0]);
    std::process::exit(127)
}

/// What `exec` returns: the command's status and its captured output.
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` to completion inside a container's namespaces: its network namespace and, if
/// its process is alive, its mount namespace too.
pub fn exec(
    cmd: &[String],
    netns: Option<&Path>,
    pid: Option<i32>,
    netns_dir: &Path,
) -> io::Result<ExecOutput> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let mntns = pid.and_then(|pid| File::open(format!("/proc/{pid}/ns/mnt")).ok());
    let setup = ChildSetup {
        netns: netns.map(File::open).transpose()?,
        mntns,
        netns_dir: c_path(netns_dir),
        new_session: false,
        binds: vec![],
        gate: None,
    };
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    // SAFETY: as in `spawn`.
    unsafe { command.pre_exec(move || setup.apply()) };
    let output = command.output()?;
    Ok(ExecOutput {
        exit_code: exit_code(output.status),
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Sends `signal` to the container's whole process group (its session leader is `pid`).
pub fn signal_group(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid targets a process group; no memory is involved.
    unsafe { libc::kill(-pid, signal) };
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that had `start` as its start time.
pub fn is_same_process(pid: i32, start: Option<u64>) -> bool {
    match (start_time(pid), start) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The container's pid while that process still runs (a recycled pid is not it).
pub fn live_pid(c: &crate::state::ContainerRecord) -> Option<i32> {
    c.pid.filter(|pid| is_same_process(*pid, c.pid_start_time))
}

/// Blocks until `pid` exits, for processes that are not our children (after a daemon
/// restart, or attached with `--pid`) and so cannot be waited for. Uses a pidfd, which
/// becomes readable when the process exits.
pub fn wait_foreign(pid: i32) -> io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut pollfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, count 1, no timeout.
        let n = unsafe { libc::poll(&mut pollfd, 1, -1) };
        if n > 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
