//! Network namespaces: persistent ones (bind-mounted like `ip netns add` does) and running
//! code inside one.
//!
//! A namespace belongs to a thread, not a process: every function here does its work on a
//! fresh thread that enters the namespace and ends with the work, so no thread of the
//! daemon's runtime ever changes namespace.

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create network namespace at {path}: {source}")]
    Create { path: PathBuf, source: nix::Error },
    #[error("cannot enter network namespace: {0}")]
    Enter(nix::Error),
    #[error("namespace worker thread panicked")]
    Panicked,
}

/// Opens a namespace file (`/proc/PID/ns/net`, a bind mount, ...).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Creates a new network namespace that lives on at `path` until [`remove_persistent`].
pub fn create_persistent(path: &Path) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Create {
        path: path.to_owned(),
        source,
    };
    File::create(path).map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    let result = on_fresh_thread(|| -> Result<(), NetnsError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(err)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err)
    })
    .and_then(|r| r);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Bind-mounts an existing namespace file at `path` as well (like `ip netns attach`).
pub fn bind(existing: &Path, path: &Path) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Create {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        File::create(path).map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    }
    mount(
        Some(existing),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err)
}

/// Unmounts and deletes a namespace made by [`create_persistent`]. The kernel frees the
/// namespace, and the interfaces in it, once no process or mount holds it any more.
pub fn remove_persistent(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Whether `path` is a live namespace mount (and not a leftover empty file).
pub fn is_namespace(path: &Path) -> bool {
    // nsfs files report the NSFS_MAGIC file system type.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Runs `work` on a new thread that has entered the network namespace `ns`.
pub fn run_in<T: Send>(ns: &File, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    on_fresh_thread(|| {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
        Ok(work())
    })
    .and_then(|r| r)
}

/// Runs `work` on a new thread in the caller's namespace: a clean thread with no async
/// runtime entered, so `work` may start one of its own.
pub fn on_fresh_thread<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|s| s.spawn(work).join()).map_err(|_| NetnsError::Panicked)
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14+),
/// the value `bpf_get_netns_cookie` returns for sockets in it.
pub fn current_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
