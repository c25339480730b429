//! The Docker contenders: Docker's real dockerd with its own bridge driver (iptables DNAT,
//! with or without docker-proxy) or with containers on a `-d netbpf` network served by
//! netbpf's Docker driver.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::Context as _;

use super::{
    contender::{
        CTRL_PORT, Contender, Kind, SINK_PORT, netbpf_cli, netbpf_daemon, server_publish_flags,
    },
    topology::{HOST_IP, Topology, run},
};

/// Docker's own data plane: dockerd in the host namespace (in a private mount namespace,
/// so its overlay mounts vanish with it; `ip netns exec` would remount /sys), a netserver
/// image imported from a local rootfs (busybox and netserver with its libraries).
pub fn contender(
    kind: Kind,
    mut topo: Topology,
    prefix: &str,
    netbpf_bin: &std::path::Path,
) -> anyhow::Result<Contender> {
    let dir = std::env::temp_dir().join(format!("netbpf-bench-{prefix}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    topo.dirs.push(dir.clone());
    let socket = format!("unix://{}", dir.join("docker.sock").display());
    let on_netbpf = kind == Kind::DockerNetbpf;
    // On netbpf, Docker touches neither iptables nor forwarding, and finds the driver in
    // the plugin directory its own mount namespace gets.
    let host_cgroup = if on_netbpf {
        Some(start_docker_plugin(&mut topo, netbpf_bin, &dir, prefix)?)
    } else {
        None
    };
    start_dockerd(&mut topo, &dir, &socket, kind)?;
    let docker = |args: &[&str]| run("docker", &[&["-H", socket.as_str()], args].concat());
    import_image(&dir, &socket)?;
    // Docker's default bridge, or a netbpf network with the same subnet as netbpf's own
    // contender.
    let network = if on_netbpf {
        docker(&[
            "network",
            "create",
            "-d",
            "netbpf",
            "--subnet",
            "10.240.0.0/24",
            "bench",
        ])?;
        "bench"
    } else {
        "bridge"
    };
    run_containers(&docker, network)?;
    let inspect = |name: &str, format: &str| {
        docker(&["inspect", "-f", format, name]).map(|s| s.trim().to_owned())
    };
    let address = format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}");
    let server_ip = inspect("srv", &address)?;
    let server_pid: u32 = inspect("srv", "{{.State.Pid}}")?.parse()?;
    let sink_ip = inspect("sink", &address)?;
    for name in ["peer", "sink"] {
        let ns = format!("{prefix}-{name}");
        run(
            "ip",
            &["netns", "attach", &ns, &inspect(name, "{{.State.Pid}}")?],
        )?;
        topo.extra_ns.push(ns);
    }
    // Named too, so that whatever dockerd leaves running in it is killed with the topology.
    let server_ns = format!("{prefix}-srv");
    run(
        "ip",
        &["netns", "attach", &server_ns, &server_pid.to_string()],
    )?;
    topo.extra_ns.push(server_ns);
    Ok(Contender {
        kind,
        external_addr: HOST_IP.into(),
        local_addr: "127.0.0.1".into(),
        peer_ns: format!("{prefix}-peer"),
        server_ip,
        netbpf: None,
        server_pid,
        host_cgroup,
        sink_ns: format!("{prefix}-sink"),
        sink_ip,
        sink_xdp_link: None,
        docker: Some((socket, "netbpf-bench:latest".into())),
        topo,
    })
}

/// dockerd in the host namespace and a private mount namespace (for netbpf, with the
/// plugin directory bind-mounted where it looks), waited for until it answers.
fn start_dockerd(
    topo: &mut Topology,
    dir: &std::path::Path,
    socket: &str,
    kind: Kind,
) -> anyhow::Result<()> {
    let on_netbpf = kind == Kind::DockerNetbpf;
    let path = |p: &str| dir.join(p).display().to_string();
    let flags = if on_netbpf {
        "--iptables=false --ip-forward=false --bridge=none --userland-proxy=false".to_owned()
    } else {
        format!(
            "--iptables=true --userland-proxy={}",
            kind == Kind::DockerProxy
        )
    };
    let bind = if on_netbpf {
        std::fs::create_dir_all("/run/docker/plugins")?;
        format!(
            "mount --bind {} /run/docker/plugins && ",
            dir.join("plugins").display()
        )
    } else {
        String::new()
    };
    let script = format!(
        "{bind}exec nsenter --net=/run/netns/{host} -- dockerd {flags} -H {socket} \
         --data-root {data} --exec-root {exec} --pidfile {pid} 2>{log}",
        host = topo.host,
        data = path("data"),
        exec = path("exec"),
        pid = path("docker.pid"),
        log = path("dockerd.log"),
    );
    let mut dockerd = Command::new("unshare");
    dockerd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    topo.spawn(dockerd)?;
    // (Its log goes with the topology; the ensure below quotes its end.)
    let log = dir.join("dockerd.log");
    let docker = |args: &[&str]| run("docker", &[&["-H", socket], args].concat());
    let started = Instant::now();
    while docker(&["version"]).is_err() {
        anyhow::ensure!(
            started.elapsed().as_secs() < 60,
            "dockerd did not start: {}",
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// The netserver image, imported from a rootfs built here (no registry).
fn import_image(dir: &std::path::Path, socket: &str) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    build_rootfs(&rootfs)?;
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let status = Command::new("docker")
        .args(["-H", socket, "import", "-", "netbpf-bench:latest"])
        .stdin(tar.stdout.context("tar output")?)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "docker import failed");
    Ok(())
}

/// The server (control and data ports published, TCP and UDP), a peer, and a UDP sink.
fn run_containers(
    docker: &dyn Fn(&[&str]) -> anyhow::Result<String>,
    network: &str,
) -> anyhow::Result<()> {
    let publish = server_publish_flags();
    let ctrl_port = CTRL_PORT.to_string();
    let mut args = vec!["run", "-d", "--name", "srv", "--network", network];
    args.extend(publish.iter().map(String::as_str));
    args.extend(["netbpf-bench", "/bin/netserver", "-D", "-p", &ctrl_port]);
    docker(&args)?;
    for (name, publish) in [("peer", None), ("sink", Some(SINK_PORT))] {
        let publish = publish.map(|p| format!("{p}:{p}/udp"));
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        if let Some(publish) = &publish {
            args.extend(["-p", publish]);
        }
        args.extend(["netbpf-bench", "/bin/sleep", "100000000"]);
        docker(&args)?;
    }
    Ok(())
}

/// netbpf's daemon serving the Docker plugin socket in `dir/plugins`, for the
/// `docker-netbpf` contender; returns the cgroup whose processes are "the host" for its
/// published ports.
fn start_docker_plugin(
    topo: &mut Topology,
    netbpf_bin: &std::path::Path,
    dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<PathBuf> {
    let cgroup = topo.cgroup()?;
    let plugin = dir.join("plugins/netbpf.sock");
    topo.spawn(netbpf_daemon(
        netbpf_bin,
        &topo.host,
        dir,
        &format!("{prefix}-"),
        &[
            "--cgroup",
            cgroup.to_str().expect("utf-8"),
            "--docker-plugin",
            plugin.to_str().expect("utf-8"),
        ],
    ))?;
    let started = Instant::now();
    while netbpf_cli(netbpf_bin, &dir.join("sock"), &["info"]).is_err() {
        anyhow::ensure!(
            started.elapsed().as_secs() < 30,
            "netbpf daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(cgroup)
}

/// busybox and netserver with the libraries it links, for `docker import`.
fn build_rootfs(rootfs: &std::path::Path) -> anyhow::Result<()> {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("busybox-static is needed")?;
    for tool in ["sh", "sleep"] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(tool));
    }
    let netserver = run("which", &["netserver"])?.trim().to_owned();
    std::fs::copy(&netserver, bin.join("netserver"))?;
    for lib in run("ldd", &[&netserver])?
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let target = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("a directory"))?;
        std::fs::copy(lib, &target)?;
    }
    Ok(())
}
