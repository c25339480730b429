//! `netbpf daemon`: prepares the host side (state dir, pin dir, socket, forwarding), starts
//! the controller and serves the API until SIGTERM/SIGINT, then shuts down cleanly.
//!
//! A clean shutdown stops the containers and removes every interface, namespace and pin it
//! made. A crash or `kill -9` leaves them in place: pinned maps and links keep traffic
//! flowing, and the next start re-adopts them.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use ipnet::Ipv4Net;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use tokio::{net::UnixListener, signal::unix::SignalKind, sync::mpsc};

use crate::{
    api::{peer, server},
    container,
    controller::{Config, Controller, Shared, XdpChoice},
    datapath,
    exits::{Exits, WaitFor},
    netlink::Netlink,
    overlay::{self, access::StoreAccess},
};

use super::{
    cluster::{ClusterArgs, start_cluster},
    loops,
};

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Where networks, containers and leases are recorded.
    #[arg(long, default_value = "/var/lib/netbpf")]
    pub state_dir: PathBuf,
    /// Pin directory for maps and links; a bpf file system is mounted there if needed.
    #[arg(long, default_value = "/sys/fs/bpf/netbpf")]
    pub bpffs: PathBuf,
    /// The host's way out (for masquerade); default: the interface of the default route.
    #[arg(long)]
    pub uplink: Option<String>,
    /// Subnet of the default `bridge` network.
    #[arg(long, default_value = "10.213.0.0/16")]
    pub default_subnet: Ipv4Net,
    /// The cgroup (v2) whose processes reach published ports through the socket hooks;
    /// default: the cgroup2 root (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// The XDP stage for published ports on the uplink: `auto` (driver mode unless the
    /// uplink is a veth), `native`, or `off` (tcx programs only).
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp: XdpChoice,
    /// Also name each container's namespace `/run/netns/<PREFIX><name>` (with its
    /// resolv.conf and hosts in /etc/netns) so `ip netns exec` works; empty: do not.
    #[arg(long, default_value = "netbpf-")]
    pub netns_prefix: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// tracing filter, e.g. `info`, `netbpf=debug`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Also serve Docker's remote network driver protocol (driver `netbpf`), on this socket
    /// or /run/docker/plugins/netbpf.sock, where Docker looks for it.
    #[arg(long, num_args = 0..=1, default_missing_value = crate::docker::DEFAULT_SOCKET)]
    pub docker_plugin: Option<PathBuf>,
    /// The host's resolver configuration: the embedded DNS forwards to its resolvers (a
    /// loopback stub such as systemd-resolved's included), re-read when it changes.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// A group whose members may use the API too (as Docker's `docker` group): the socket
    /// becomes 0660 with that group. Without it, root only.
    #[arg(long)]
    pub group: Option<String>,
    /// On SIGTERM/SIGINT, stop only the daemon (Docker's name): containers, interfaces,
    /// pins and published ports keep serving until the next daemon takes them over.
    #[arg(long)]
    pub live_restore: bool,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes `path` a directory on a bpf file system. Returns whether it is a bpffs mount of its
/// own (mounted by us now, or by an earlier run that was killed), to unmount at shutdown.
fn prepare_bpffs(path: &Path) -> anyhow::Result<bool> {
    if is_bpffs(path) {
        return Ok(is_mount_point(path) && path != Path::new("/sys/fs/bpf"));
    }
    let parent = path.parent().context("--bpffs needs a parent directory")?;
    if is_bpffs(parent) {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        return Ok(false);
    }
    // The system location is not mounted (a bare machine): mount it there, as systemd would.
    if parent == Path::new("/sys/fs/bpf") {
        mount(
            Some("bpffs"),
            parent,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs on /sys/fs/bpf")?;
        std::fs::create_dir_all(path)?;
        return Ok(false);
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    mount(
        Some("bpffs"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs on {}", path.display()))?;
    Ok(true)
}

/// Where the unified (v2) cgroup hierarchy is mounted.
fn cgroup2_root() -> Option<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        })
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*target))
}

/// Makes the namespace directory a mount point of its own, so container processes can drop
/// it (and the other containers' namespace mounts in it) from their mount table at once.
fn prepare_netns_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    if !is_mount_point(dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting {}", dir.display()))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .with_context(|| format!("making {} private", dir.display()))?;
    Ok(())
}

/// Binds the socket at `path` with mode 0600 (0660 and group `group`) from the moment it
/// exists: it is made in a fresh 0700 directory beside `path`, given its mode and owner
/// there, and renamed into place, so no process ever finds it open to more.
fn bind_socket(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another daemon is already serving {}", path.display());
    }
    let private = dir.join(format!(".netbpf-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = (|| -> anyhow::Result<UnixListener> {
        let temp = private.join("sock");
        let listener =
            UnixListener::bind(&temp).with_context(|| format!("binding {}", path.display()))?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            nix::unistd::chown(&temp, None, Some(nix::unistd::Gid::from_raw(gid)))?;
        }
        std::fs::rename(&temp, path).with_context(|| format!("placing {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Raises the soft limit on open files to the hard one: the daemon holds sockets for each
/// container's DNS and for the queries in flight (bounded per container), and a host's
/// default soft limit (1024 under systemd) would last a few hundred containers.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open files limit"),
    }
}

/// The gid of `--group`.
fn api_group(name: Option<&str>) -> anyhow::Result<Option<u32>> {
    let Some(name) = name else {
        return Ok(None);
    };
    match nix::unistd::Group::from_name(name)? {
        Some(group) => Ok(Some(group.gid.as_raw())),
        None => bail!("no group {name:?} (--group)"),
    }
}

/// The uplink: the one named, or the interface of the default route.
fn find_uplink(named: Option<&str>) -> anyhow::Result<Option<String>> {
    let uplink = match named {
        Some(name) => {
            let owned = name.to_owned();
            Netlink::run(None, move |nl| nl.link(&owned))
                .with_context(|| format!("--uplink {name}"))?;
            Some(name.to_owned())
        }
        None => Netlink::run(None, |nl| nl.default_route_link())?.map(|l| l.name),
    };
    if uplink.is_none() {
        tracing::warn!("no default route and no --uplink: containers reach only the host");
    }
    Ok(uplink)
}

/// Prepares the host for a daemon with `args`: the bpffs and namespace directory ready. Returns the controller's config and whether the bpffs is ours to
/// unmount at the end.
fn prepare(
    state_dir: PathBuf,
    uplink: Option<String>,
    args: &DaemonArgs,
) -> anyhow::Result<(Config, bool)> {
    // No host-wide `ip_forward`: each bridge forwards for its own containers
    // (`network::route_for_containers`), so the host routes nothing else because of netbpf.
    let bpffs = std::path::absolute(&args.bpffs)?;
    let mounted_bpffs = prepare_bpffs(&bpffs)?;
    let cgroup = match &args.cgroup {
        Some(path) => path.clone(),
        None => cgroup2_root().context("no cgroup2 file system found: give --cgroup")?,
    };
    let config = Config {
        cgroup,
        xdp: args.xdp,
        netns_prefix: Some(args.netns_prefix.clone()).filter(|p| !p.is_empty()),
        state_dir,
        bpffs,
        uplink,
        default_subnet: args.default_subnet,
        resolv_conf: args.resolv_conf.clone(),
    };
    prepare_netns_dir(&config.netns_dir())?;
    Ok((config, mounted_bpffs))
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// What the flags say, checked, with the state dir locked: nothing is made yet.
struct Checked {
    group: Option<u32>,
    state_dir: PathBuf,
    /// Held while the daemon runs: one daemon per state dir.
    _lock: nix::fcntl::Flock<std::fs::File>,
    uplink: Option<String>,
    cluster: Option<(StoreAccess, overlay::store::Identity)>,
}

/// Everything that can be wrong with the flags is found here, before anything is made.
fn check(args: &DaemonArgs) -> anyhow::Result<Checked> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "netbpf daemon must run as root (it creates namespaces, interfaces and BPF programs)"
        );
    }
    let group = api_group(args.group.as_deref())?;
    let store = args.cluster.access()?;
    let state_dir = std::path::absolute(&args.state_dir)?;
    std::fs::create_dir_all(state_dir.join("containers"))
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    // Root's only: the state, the logs, the namespace mounts.
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))?;
    let lock = std::fs::File::create(state_dir.join("lock"))?;
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |_| anyhow::anyhow!("another daemon is using state dir {}", state_dir.display()),
    )?;
    let uplink = find_uplink(args.uplink.as_deref())?;
    let cluster = match store {
        Some(access) => Some((access, args.cluster.identity(uplink.as_deref())?)),
        None => None,
    };
    Ok(Checked {
        group,
        state_dir,
        _lock: lock,
        uplink,
        cluster,
    })
}

pub async fn run(socket: PathBuf, args: DaemonArgs) -> anyhow::Result<()> {
    let checked = check(&args)?;
    raise_open_files_limit();
    // Crash points for the chaos tests (`FAILPOINTS=NAME=return` aborts there); none set
    // in normal use.
    let _failpoints = fail::FailScenario::setup();
    let listener = bind_socket(&socket, checked.group)?;
    let prepared = (|| {
        // (Docker connects as root.)
        let docker_listener = args
            .docker_plugin
            .as_deref()
            .map(|path| bind_socket(path, None))
            .transpose()?;
        let (config, mounted_bpffs) =
            prepare(checked.state_dir.clone(), checked.uplink.clone(), &args)?;
        anyhow::Ok((docker_listener, config, mounted_bpffs))
    })();
    let (docker_listener, config, mounted_bpffs) = prepared.inspect_err(|_| {
        let _ = std::fs::remove_file(&socket);
    })?;

    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let exits = Arc::new(Exits::new(exits_tx));
    let ctl = start_controller(&config, exits, &socket, mounted_bpffs).await?;
    let mut loops = loops::spawn_loops(
        &ctl,
        exits_rx,
        config.resolv_conf.clone(),
        config.bpffs.clone(),
    );
    if let Some((access, me)) = checked.cluster {
        loops.push(start_cluster(access, me, &ctl));
    }
    if let (Some(listener), Some(path)) = (docker_listener, &args.docker_plugin) {
        loops.push(serve_docker(&ctl, listener, path));
    }
    tracing::info!(socket = %socket.display(), state_dir = %config.state_dir.display(), bpffs = %config.bpffs.display(), "netbpf daemon ready");
    let api = server::router(
        ctl.clone(),
        peer::Access {
            group: checked.group,
        },
    )
    .into_make_service_with_connect_info::<peer::Peer>();
    axum::serve(listener, api)
        .with_graceful_shutdown(shutdown_signal()?)
        .await
        .context("serving the API")?;

    shut_down(&ctl, loops, args.live_restore).await?;
    if !args.live_restore {
        unprepare(&config, &socket, mounted_bpffs);
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(path) = &args.docker_plugin {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("netbpf daemon stopped");
    Ok(())
}

/// Serves Docker's remote network driver protocol on `listener` (bound at `path`).
fn serve_docker(ctl: &Shared, listener: UnixListener, path: &Path) -> tokio::task::JoinHandle<()> {
    tracing::info!(socket = %path.display(), "serving Docker's remote network driver protocol");
    let router = crate::docker::router(ctl.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "the Docker plugin socket stopped");
        }
    })
}

/// After SIGTERM: everything torn down, or with `--live-restore` left serving.
async fn shut_down(
    ctl: &Shared,
    loops: Vec<tokio::task::JoinHandle<()>>,
    live_restore: bool,
) -> anyhow::Result<()> {
    if live_restore {
        // As after `kill -9`, but on purpose: the pinned data plane serves on, state is
        // saved (every change was), and the next daemon re-adopts everything.
        tracing::info!(
            "live restore: leaving containers, interfaces, pins and published ports serving"
        );
        loops.iter().for_each(|task| task.abort());
        return Ok(());
    }
    tracing::info!("shutting down: stopping containers");
    // (The exit loop still runs: it reports the exits `stop_all` waits for.)
    stop_all(ctl).await;
    // The other hosts stop routing to this one now, not when its lease would expire.
    let cluster = ctl.lock().cluster();
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    loops.iter().for_each(|task| task.abort());
    ctl.run(Controller::teardown).await?;
    Ok(())
}

/// Starts the controller on the prepared host: it takes over what an earlier daemon left
/// (pins, interfaces, running containers) or starts afresh.
async fn start_controller(
    config: &Config,
    exits: Arc<Exits>,
    socket: &Path,
    mounted_bpffs: bool,
) -> anyhow::Result<Shared> {
    // A data plane pinned by an earlier daemon serves containers while no daemon runs.
    let inherited = datapath::has_pins(&config.bpffs);
    let for_start = config.clone();
    match tokio::task::spawn_blocking(move || Controller::start(for_start, exits)).await? {
        Ok(ctl) => Ok(Shared::new(ctl)),
        Err(error) if inherited => {
            // Never fail open: removing the pins would detach every container's programs
            // (isolation, published ports, masquerade) while they keep running.
            let _ = std::fs::remove_file(socket);
            Err(error.context(format!(
                "cannot take over the host: the data plane pinned in {} stays as it was and keeps serving its containers",
                config.bpffs.display()
            )))
        }
        Err(error) => {
            // Leave nothing behind: a refused first start is not a crash to recover from.
            unprepare(config, socket, mounted_bpffs);
            Err(error)
        }
    }
}

/// Undoes the host preparation: the namespace dir mount, our bpffs mount, the socket.
fn unprepare(config: &Config, socket: &Path, mounted_bpffs: bool) {
    let netns_dir = config.netns_dir();
    let _ = umount2(&netns_dir, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&netns_dir);
    datapath::remove_pins(&config.bpffs);
    if mounted_bpffs {
        let _ = umount2(&config.bpffs, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&config.bpffs);
    }
    let _ = std::fs::remove_file(socket);
}

/// SIGTERM to every container, SIGKILL to those still running after 10 s; returns once
/// each exit has been handled.
async fn stop_all(ctl: &Shared) {
    let targets = ctl
        .run(|c| {
            c.running_pids()
                .into_iter()
                .filter_map(|(id, pid)| {
                    c.container_signal(&id, libc::SIGTERM)
                        .ok()
                        .flatten()
                        .map(|w| (pid, w))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
    for (pid, wait) in targets {
        let WaitFor::Running(mut rx) = wait else {
            continue;
        };
        let exited = async {
            while rx.borrow_and_update().is_none() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), exited)
            .await
            .is_err()
        {
            container::signal_group(pid, libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
        }
    }
}
