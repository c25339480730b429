//! The contenders, each on a topology of its own: how to set one up and where its server is.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::Context as _;

use super::topology::{HOST_IP, Topology, in_ns, run};

/// netperf's control port and the data port every test is told to use, both published.
pub const CTRL_PORT: u16 = 12865;
pub const DATA_PORT: u16 = 12866;
/// The published UDP port of the sink container the per-packet run sends to.
pub const SINK_PORT: u16 = 9;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// netbpf: XDP/TC/cgroup programs.
    Netbpf,
    /// netbpf with `--xdp native` on the veth uplink: published ports handled at XDP.
    NetbpfXdp,
    /// nftables DNAT + masquerade, as netavark 2.x writes them.
    Nftables,
    /// No NAT at all: the client routes to the container address (the ceiling).
    Ceiling,
    /// Docker's real dockerd: iptables DNAT plus docker-proxy (its default).
    DockerProxy,
    /// The same dockerd with `--userland-proxy=false`: iptables DNAT only.
    DockerIptables,
    /// The same dockerd and containers on a `-d netbpf` network (netbpf's Docker driver):
    /// what a Docker user chooses instead of the bridge driver.
    DockerNetbpf,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Netbpf,
        Kind::NetbpfXdp,
        Kind::Nftables,
        Kind::Ceiling,
        Kind::DockerProxy,
        Kind::DockerIptables,
        Kind::DockerNetbpf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Netbpf => "netbpf",
            Kind::NetbpfXdp => "netbpf-xdp",
            Kind::Nftables => "nftables",
            Kind::Ceiling => "ceiling",
            Kind::DockerProxy => "docker-proxy",
            Kind::DockerIptables => "docker-iptables",
            Kind::DockerNetbpf => "docker-netbpf",
        }
    }

    /// Whether this contender takes part in `scenario`. The XDP stage only sees what comes
    /// in on the uplink; docker-proxy carries no external traffic Docker's DNAT rules do
    /// not already take (the per-packet run would measure docker-iptables twice).
    pub fn runs(self, scenario: &str) -> bool {
        match self {
            Kind::NetbpfXdp => matches!(scenario, "ext-rr" | "ext-crr" | "ext-udp" | "xdp-pps"),
            Kind::DockerProxy => scenario != "xdp-pps",
            // The pair a Docker user chooses between, on the workloads Docker users run;
            // the XDP rate and port scaling are netbpf's own contenders' measurements.
            Kind::DockerNetbpf => !matches!(scenario, "xdp-pps" | "scale"),
            Kind::Netbpf => scenario != "xdp-pps",
            _ => true,
        }
    }
}

/// A contender, ready: its topology and how to reach its servers.
pub struct Contender {
    pub kind: Kind,
    pub topo: Topology,
    /// Where an outside client connects for the published port.
    pub external_addr: String,
    /// Where a host process connects (127.0.0.1 through the published port).
    pub local_addr: String,
    /// Namespace of a peer container on the server's network.
    pub peer_ns: String,
    /// The server container's address, for container-to-container runs.
    pub server_ip: String,
    /// netbpf only: its binary, state dir and socket (for scaling runs).
    pub netbpf: Option<(PathBuf, PathBuf)>,
    /// The netserver process: pinned to CPU 0 for pinned runs, free otherwise.
    pub server_pid: u32,
    /// netbpf only: the cgroup its socket hooks serve; host-side clients run in it.
    pub host_cgroup: Option<PathBuf>,
    /// The sink container (nothing listens in it) for the per-packet run: its namespace and
    /// address, and the pinned XDP link of its interface if netbpf made one.
    pub sink_ns: String,
    pub sink_ip: String,
    pub sink_xdp_link: Option<PathBuf>,
    /// Docker contenders only: the dockerd socket (`unix://…`) and the image it has.
    pub docker: Option<(String, String)>,
}

impl Contender {
    pub fn new(kind: Kind, netbpf_bin: &std::path::Path) -> anyhow::Result<Self> {
        let index = Kind::ALL.iter().position(|k| *k == kind).expect("listed");
        let prefix = format!("nbb{}k{index}", std::process::id() % 10_000);
        let topo = Topology::new(&prefix)?;
        match kind {
            Kind::Netbpf | Kind::NetbpfXdp => Self::netbpf(kind, topo, &prefix, netbpf_bin),
            Kind::DockerProxy | Kind::DockerIptables | Kind::DockerNetbpf => {
                super::docker::contender(kind, topo, &prefix, netbpf_bin)
            }
            Kind::Nftables | Kind::Ceiling => Self::plain(kind, topo, &prefix),
        }
    }

    /// netbpf's daemon in the host namespace, its server, peer and sink containers made
    /// with `netbpf run`.
    fn netbpf(
        kind: Kind,
        mut topo: Topology,
        prefix: &str,
        netbpf_bin: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("netbpf-bench-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        topo.dirs.push(dir.clone());
        let socket = dir.join("sock");
        let xdp = if kind == Kind::NetbpfXdp {
            "native"
        } else {
            "auto"
        };
        let cgroup = topo.cgroup()?;
        let cgroup_arg = cgroup.to_str().expect("utf-8").to_owned();
        topo.spawn(netbpf_daemon(
            netbpf_bin,
            &topo.host,
            &dir,
            &format!("{prefix}-"),
            &["--xdp", xdp, "--cgroup", &cgroup_arg],
        ))?;
        let cli = |args: &[&str]| netbpf_cli(netbpf_bin, &socket, args);
        if kind == Kind::NetbpfXdp {
            // A veth hands XDP the checksum a local sender left partial; a frame
            // redirected at XDP loses the note that it still needs finishing. Real
            // uplinks (NICs) deliver complete checksums, as the client does with
            // its offload off.
            run(
                "nsenter",
                &[
                    &format!("--net=/run/netns/{}", topo.client),
                    "ethtool",
                    "-K",
                    "up0",
                    "tx",
                    "off",
                ],
            )?;
        }
        let started = Instant::now();
        while cli(&["info"]).is_err() {
            anyhow::ensure!(
                started.elapsed().as_secs() < 30,
                "netbpf daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        netbpf_containers(&cli)?;
        let inspect = |name: &str| -> anyhow::Result<serde_json::Value> {
            Ok(serde_json::from_str(&cli(&["inspect", name])?)?)
        };
        let view = inspect("srv")?;
        let server_ip = view["Networks"]["bench"]["IPAddress"]
            .as_str()
            .context("server address")?
            .to_owned();
        let server_pid = view["State"]["Pid"].as_u64().context("server pid")? as u32;
        let sink = &inspect("sink")?["Networks"]["bench"];
        let sink_ip = sink["IPAddress"].as_str().context("sink address")?.into();
        let sink_veth = sink["HostInterface"].as_str().context("sink veth")?;
        let sink_xdp_link =
            Some(dir.join("bpffs/xdp-links").join(sink_veth)).filter(|_| kind == Kind::NetbpfXdp);
        let netbpf = Some((netbpf_bin.to_owned(), socket));
        Ok(Self {
            kind,
            external_addr: HOST_IP.into(),
            local_addr: "127.0.0.1".into(),
            peer_ns: format!("{prefix}-peer"),
            server_ip,
            netbpf,
            server_pid,
            host_cgroup: Some(cgroup),
            sink_ns: format!("{prefix}-sink"),
            sink_ip,
            sink_xdp_link,
            docker: None,
            topo,
        })
    }

    /// Plain namespaces on a bridge: nftables DNAT in front (`Nftables`), or nothing at
    /// all, the client routing straight to the server (`Ceiling`).
    fn plain(kind: Kind, mut topo: Topology, prefix: &str) -> anyhow::Result<Self> {
        let server_ip = topo.plain_container("srv", 1)?;
        topo.plain_container("peer", 2)?;
        let sink_ip = topo.plain_container("sink", 3)?;
        let server_ns = format!("{prefix}-srv");
        topo.spawn(in_ns(
            &server_ns,
            false,
            "netserver",
            &["-D", "-p", &CTRL_PORT.to_string()],
        ))?;
        // nsenter execs the command: the child is netserver itself.
        let server_pid = topo.children.last().expect("just spawned").id();
        let (external_addr, local_addr) = if kind == Kind::Nftables {
            nft_dnat(&topo.host, &server_ip, &[CTRL_PORT, DATA_PORT])?;
            nft(&topo.host, &port_rules("add", &sink_ip, &[SINK_PORT]))?;
            (HOST_IP.to_owned(), "127.0.0.1".to_owned())
        } else {
            run(
                "ip",
                &[
                    "-n",
                    &topo.client,
                    "route",
                    "add",
                    "10.240.0.0/24",
                    "via",
                    HOST_IP,
                ],
            )?;
            (server_ip.clone(), server_ip.clone())
        };
        Ok(Self {
            kind,
            external_addr,
            local_addr,
            peer_ns: format!("{prefix}-peer"),
            server_ip,
            netbpf: None,
            server_pid,
            host_cgroup: None,
            sink_ns: format!("{prefix}-sink"),
            sink_ip,
            sink_xdp_link: None,
            docker: None,
            topo,
        })
    }

    /// Pins the server (and the per-test children it forks from now on) to CPU 0, or frees
    /// it: "pinned" runs put client, server and the data plane's softirqs on one CPU.
    pub fn pin_server(&self, pinned: bool) -> anyhow::Result<()> {
        let cpus = if pinned {
            "0".to_owned()
        } else {
            format!(
                "0-{}",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    - 1
            )
        };
        run(
            "taskset",
            &["-a", "-p", "-c", &cpus, &self.server_pid.to_string()],
        )
        .map(drop)
    }

    pub fn client_ns(&self) -> &str {
        &self.topo.client
    }

    pub fn host_ns(&self) -> &str {
        &self.topo.host
    }
}

/// `netbpf daemon` in namespace `ns`, with its state, socket (`DIR/sock`) and pins under
/// `dir` and its container namespaces named with `netns_prefix`.
pub fn netbpf_daemon(
    bin: &std::path::Path,
    ns: &str,
    dir: &std::path::Path,
    netns_prefix: &str,
    extra: &[&str],
) -> Command {
    let mut daemon = in_ns(ns, false, bin.to_str().expect("utf-8"), &["daemon"]);
    daemon
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("sock"))
        .arg("--bpffs")
        .arg(dir.join("bpffs"))
        .args(["--netns-prefix", netns_prefix, "--log-level", "warn"])
        .args(extra);
    daemon
}

/// `-p` flags for the server: its control and data ports, TCP and the data port's UDP
/// too, each on the same host port (the same for every contender that publishes).
pub fn server_publish_flags() -> Vec<String> {
    [
        format!("{CTRL_PORT}:{CTRL_PORT}"),
        format!("{DATA_PORT}:{DATA_PORT}"),
        format!("{DATA_PORT}:{DATA_PORT}/udp"),
    ]
    .into_iter()
    .flat_map(|port| ["-p".to_owned(), port])
    .collect()
}

/// The bench network and its containers, made with `netbpf`'s CLI (`cli`): the server
/// with its control and data ports published (TCP and UDP), a peer, and a UDP sink.
fn netbpf_containers(cli: &dyn Fn(&[&str]) -> anyhow::Result<String>) -> anyhow::Result<()> {
    cli(&["network", "create", "--subnet", "10.240.0.0/24", "bench"])?;
    let publish = server_publish_flags();
    let ctrl_port = CTRL_PORT.to_string();
    let mut args = vec!["run", "-d", "--name", "srv", "--network", "bench"];
    args.extend(publish.iter().map(String::as_str));
    args.extend(["--", "netserver", "-D", "-p", &ctrl_port]);
    cli(&args)?;
    cli(&[
        "run",
        "-d",
        "--name",
        "peer",
        "--network",
        "bench",
        "--",
        "sleep",
        "infinity",
    ])?;
    let sink = format!("{SINK_PORT}:{SINK_PORT}/udp");
    cli(&[
        "run",
        "-d",
        "--name",
        "sink",
        "--network",
        "bench",
        "-p",
        &sink,
        "--",
        "sleep",
        "infinity",
    ])?;
    Ok(())
}

/// A `netbpf` client command against the daemon at `socket`; its output, or why it failed.
pub fn netbpf_cli(
    bin: &std::path::Path,
    socket: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env("NETBPF_SOCKET", socket)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "netbpf {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// DNAT for published ports and masquerade for container egress, in the shape netavark 2.x
/// writes them (an `inet` table, prerouting and output DNAT, postrouting masquerade).
pub fn nft_dnat(host_ns: &str, server_ip: &str, ports: &[u16]) -> anyhow::Result<()> {
    let rules = String::from(
        "table inet netavark {\n\
         chain hostport_dnat { }\n\
         chain prerouting { type nat hook prerouting priority -100; policy accept; fib daddr type local jump hostport_dnat; }\n\
         chain output { type nat hook output priority -100; policy accept; fib daddr type local jump hostport_dnat; }\n\
         chain postrouting { type nat hook postrouting priority 100; policy accept; ip saddr 10.240.0.0/24 ip daddr != 10.240.0.0/24 masquerade; ip daddr 10.240.0.0/24 fib saddr type local masquerade; }\n\
         }\n",
    ) + &port_rules("add", server_ip, ports);
    nft(host_ns, &rules)?;
    // Host-local clients reach the container only if 127.0.0.1 may be routed out.
    run(
        "ip",
        &[
            "netns",
            "exec",
            host_ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.route_localnet=1",
        ],
    )?;
    Ok(())
}

/// DNAT rules for `ports`, appended (`add`) or put in front (`insert`).
pub fn port_rules(verb: &str, server_ip: &str, ports: &[u16]) -> String {
    let mut rules = String::new();
    for port in ports {
        for proto in ["tcp", "udp"] {
            rules.push_str(&format!(
                "{verb} rule inet netavark hostport_dnat {proto} dport {port} dnat ip to {server_ip}:{port}\n"
            ));
        }
    }
    rules
}

pub fn nft(host_ns: &str, rules: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("netbpf-bench-{host_ns}.nft"));
    std::fs::write(&path, rules)?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            host_ns,
            "nft",
            "-f",
            path.to_str().expect("utf-8"),
        ],
    )?;
    let _ = std::fs::remove_file(path);
    Ok(())
}
