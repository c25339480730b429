//! Overlay throughput and request/response between containers on two hosts: netbpf's BPF
//! VXLAN against Linux's VXLAN device wired the way Flannel's VXLAN backend wires it
//! (a `flannel.1` device per host, a /24 per host on a `cni0` bridge, one route, neighbour
//! and FDB entry per remote host). Both on the same underlay, in namespaces of their own.
//!
//! ```text
//!  host1 (eth1 10.0.0.x) ─┐                ┌─ host2 (eth1 10.0.0.y)
//!    server container      ├── underlay sw ─┤    client container
//!                          └─ etcd 10.0.0.1 ┘
//! ```

use std::{path::Path, process::Command, time::Instant};

use anyhow::Context as _;

use super::{
    Sample,
    contender::{CTRL_PORT, netbpf_cli, netbpf_daemon},
    topology::{Topology, in_ns, link_info, run},
};

/// One side of the comparison: where the client runs and where the server is.
pub struct OverlayContender {
    pub name: &'static str,
    pub client_ns: String,
    pub server_ip: String,
    pub server_pid: u32,
}

/// Everything both contenders run on; removed on drop (by the topology's clean-up).
pub struct OverlayBench {
    prefix: String,
    topo: Topology,
    pub contenders: Vec<OverlayContender>,
}

fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend(args);
    run("ip", &all).map(drop)
}

fn mac_of(ns: &str, dev: &str) -> anyhow::Result<String> {
    Ok(link_info(ns, dev)?["address"]
        .as_str()
        .context("a MAC address")?
        .to_owned())
}

impl OverlayBench {
    pub fn new(netbpf: &Path) -> anyhow::Result<Self> {
        let prefix = format!("nbo{}", std::process::id() % 10_000);
        let mut bench = Self {
            prefix: prefix.clone(),
            topo: Topology::empty(&prefix),
            contenders: vec![],
        };
        let underlay = bench.namespace("ul")?;
        ip(&underlay, &["link", "add", "sw", "type", "bridge"])?;
        ip(&underlay, &["link", "set", "sw", "up"])?;
        let etcd_ns = bench.plug("etcd", "eth1", "10.0.0.1")?;
        let dir = std::env::temp_dir().join(format!("netbpf-bench-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        bench.topo.dirs.push(dir.clone());
        let url = "http://10.0.0.1:2379";
        let mut etcd = in_ns(&etcd_ns, false, "etcd", &["--data-dir"]);
        etcd.arg(dir.join("etcd")).args([
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            "http://10.0.0.1:2380",
        ]);
        bench.spawn(etcd)?;
        let started = Instant::now();
        while !run(
            "nsenter",
            &[
                &format!("--net=/run/netns/{etcd_ns}"),
                "curl",
                "-s",
                "--max-time",
                "1",
                &format!("{url}/health"),
            ],
        )
        .unwrap_or_default()
        .contains("true")
        {
            anyhow::ensure!(started.elapsed().as_secs() < 30, "etcd did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bench.netbpf(netbpf, &dir)?;
        bench.kernel_vxlan()?;
        Ok(bench)
    }

    fn namespace(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        run("ip", &["netns", "add", &ns])?;
        ip(&ns, &["link", "set", "lo", "up"])?;
        self.topo.extra_ns.push(ns.clone());
        Ok(ns)
    }

    /// A namespace with `dev` on the underlay at `addr`/24.
    fn plug(&mut self, name: &str, dev: &str, addr: &str) -> anyhow::Result<String> {
        let ns = self.namespace(name)?;
        let underlay = format!("{}-ul", self.prefix);
        let port = format!("p{}", self.topo.extra_ns.len());
        ip(
            &underlay,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", dev, "netns", &ns,
            ],
        )?;
        ip(&underlay, &["link", "set", &port, "master", "sw", "up"])?;
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&ns, &["link", "set", dev, "up"])?;
        Ok(ns)
    }

    fn spawn(&mut self, command: Command) -> anyhow::Result<u32> {
        self.topo.spawn(command)?;
        Ok(self.topo.children.last().expect("just spawned").id())
    }

    /// Two netbpf hosts on one overlay network, the server on the first.
    fn netbpf(&mut self, bin: &Path, dir: &Path) -> anyhow::Result<()> {
        let mut sockets = vec![];
        // The socket hooks apply to this cgroup only, never to the machine's processes.
        let cgroup = self.topo.cgroup()?;
        let cgroup = cgroup.to_str().expect("utf-8").to_owned();
        for (i, vtep) in ["10.0.0.11", "10.0.0.12"].into_iter().enumerate() {
            let ns = self.plug(&format!("nh{i}"), "eth1", vtep)?;
            let state = dir.join(format!("nh{i}"));
            let prefix = format!("{}-n{i}-", self.prefix);
            let args = [
                "--cluster-store",
                "etcd://10.0.0.1:2379",
                "--vtep-addr",
                vtep,
                "--cgroup",
                &cgroup,
            ];
            self.spawn(netbpf_daemon(bin, &ns, &state, &prefix, &args))?;
            sockets.push(state.join("sock"));
        }
        let cli = |socket: &Path, args: &[&str]| netbpf_cli(bin, socket, args);
        let started = Instant::now();
        while sockets.iter().any(|s| cli(s, &["info"]).is_err()) {
            anyhow::ensure!(
                started.elapsed().as_secs() < 30,
                "netbpf daemons did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        cli(
            &sockets[0],
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.230.0.0/16",
                "ovl",
            ],
        )?;
        // Both hosts hold a block once the network is visible on each and its
        // containers can join: on either host, that comes with the host's view of etcd.
        let join = |socket: &Path, args: &[&str]| -> anyhow::Result<()> {
            let started = Instant::now();
            loop {
                let joined = cli(socket, args);
                if joined.is_ok() {
                    return Ok(());
                }
                anyhow::ensure!(
                    started.elapsed().as_secs() < 30,
                    "overlay not joined: {joined:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        };
        let ctrl = CTRL_PORT.to_string();
        join(
            &sockets[1],
            &[
                "run",
                "-d",
                "--name",
                "cli",
                "--network",
                "ovl",
                "--",
                "sleep",
                "infinity",
            ],
        )?;
        join(
            &sockets[0],
            &[
                "run",
                "-d",
                "--name",
                "srv",
                "--network",
                "ovl",
                "--",
                "netserver",
                "-D",
                "-p",
                &ctrl,
            ],
        )?;
        let view: serde_json::Value =
            serde_json::from_str(&cli(&sockets[0], &["inspect", "srv"])?)?;
        self.contenders.push(OverlayContender {
            name: "netbpf",
            client_ns: format!("{}-n1-cli", self.prefix),
            server_ip: view["Networks"]["ovl"]["IPAddress"]
                .as_str()
                .context("server address")?
                .to_owned(),
            server_pid: view["State"]["Pid"].as_u64().context("server pid")? as u32,
        });
        Ok(())
    }

    /// Flannel's data path by hand: per host a `cni0` bridge on its /24, a container on it,
    /// and a `flannel.1` VXLAN device with a route, a neighbour and an FDB entry for the
    /// other host.
    fn kernel_vxlan(&mut self) -> anyhow::Result<()> {
        let hosts = [("kh0", "10.0.0.21", 0u8), ("kh1", "10.0.0.22", 1u8)];
        let mut macs = vec![];
        for (name, vtep, n) in hosts {
            let ns = self.plug(name, "eth1", vtep)?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ],
            )?;
            ip(
                &ns,
                &[
                    "link",
                    "add",
                    "flannel.1",
                    "type",
                    "vxlan",
                    "id",
                    "1",
                    "dstport",
                    "4789",
                    "local",
                    vtep,
                    "dev",
                    "eth1",
                    "nolearning",
                ],
            )?;
            ip(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("10.231.{n}.0/32"),
                    "dev",
                    "flannel.1",
                ],
            )?;
            ip(&ns, &["link", "set", "flannel.1", "up"])?;
            ip(&ns, &["link", "add", "cni0", "type", "bridge"])?;
            ip(
                &ns,
                &["addr", "add", &format!("10.231.{n}.1/24"), "dev", "cni0"],
            )?;
            ip(&ns, &["link", "set", "cni0", "up"])?;
            let container = self.namespace(&format!("kc{n}"))?;
            ip(
                &ns,
                &[
                    "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns",
                    &container,
                ],
            )?;
            ip(
                &ns,
                &[
                    "link", "set", "veth0", "mtu", "1450", "master", "cni0", "up",
                ],
            )?;
            ip(&container, &["link", "set", "eth0", "mtu", "1450", "up"])?;
            ip(
                &container,
                &["addr", "add", &format!("10.231.{n}.2/24"), "dev", "eth0"],
            )?;
            ip(
                &container,
                &["route", "add", "default", "via", &format!("10.231.{n}.1")],
            )?;
            macs.push((
                ns,
                mac_of(&format!("{}-{name}", self.prefix), "flannel.1")?,
                vtep,
            ));
        }
        for (i, (ns, _, _)) in macs.iter().enumerate() {
            let (_, peer_mac, peer_vtep) = &macs[1 - i];
            let peer = 1 - i;
            ip(
                ns,
                &[
                    "route",
                    "add",
                    &format!("10.231.{peer}.0/24"),
                    "via",
                    &format!("10.231.{peer}.0"),
                    "dev",
                    "flannel.1",
                    "onlink",
                ],
            )?;
            ip(
                ns,
                &[
                    "neigh",
                    "add",
                    &format!("10.231.{peer}.0"),
                    "lladdr",
                    peer_mac,
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ],
            )?;
            run(
                "bridge",
                &[
                    "-n",
                    ns,
                    "fdb",
                    "append",
                    peer_mac,
                    "dev",
                    "flannel.1",
                    "dst",
                    peer_vtep,
                ],
            )?;
        }
        let server_ns = format!("{}-kc0", self.prefix);
        let pid = self.spawn(in_ns(
            &server_ns,
            false,
            "netserver",
            &["-D", "-p", &CTRL_PORT.to_string()],
        ))?;
        self.contenders.push(OverlayContender {
            name: "kernel-vxlan",
            client_ns: format!("{}-kc1", self.prefix),
            server_ip: "10.231.0.2".into(),
            server_pid: pid,
        });
        Ok(())
    }
}

/// One repetition: TCP_RR and TCP_STREAM from each contender's client to its server.
pub fn measure(
    bench: &OverlayBench,
    pinned: bool,
    duration: u32,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<()> {
    for c in &bench.contenders {
        let cpus = if pinned {
            "0".to_owned()
        } else {
            let n = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            format!("0-{}", n - 1)
        };
        run(
            "taskset",
            &["-a", "-p", "-c", &cpus, &c.server_pid.to_string()],
        )?;
        for (np, names) in [
            (&super::RR, &["trans/s", "p50 us", "p90 us", "p99 us"][..]),
            (&super::STREAM, &["Mbit/s"][..]),
        ] {
            eprintln!(
                "bench: overlay {} {} {}",
                np.test,
                if pinned { "pinned" } else { "unpinned" },
                c.name
            );
            let values = super::netperf(&c.client_ns, pinned, &c.server_ip, duration, np)?;
            for (name, value) in names.iter().zip(values) {
                samples.push(Sample {
                    scenario: format!("overlay-{}", np.test.to_lowercase()),
                    pinned,
                    contender: c.name.into(),
                    metric: (*name).into(),
                    value,
                });
            }
        }
    }
    Ok(())
}
