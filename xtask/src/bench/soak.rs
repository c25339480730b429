//! `cargo xtask bench --only soak`: the control plane over a long run and under crashes.
//!
//! - **soak**: sequential cycles of `network create`, `run`, `rm -f`, `network rm`; after
//!   them, every leftover counted (none expected), and the time per cycle.
//! - **run --rm**: `netbpf run --rm -- busybox true` against Docker's `docker run --rm
//!   IMAGE busybox true` on the same machine (docker-proxy's contender: its own bridge
//!   driver).
//! - **crash loop**: a seeded schedule of operations (create, run, connect, disconnect, rm,
//!   network rm), the daemon killed with SIGKILL at a random moment of each cycle, started
//!   again, and the host checked after each restart: no orphan veth, bridge, temporary
//!   link, `ip netns` name, `/etc/netns` directory or pin, no untracked process, no
//!   duplicate address, and every recorded endpoint present in the kernel.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    Sample,
    contender::{Contender, Kind, netbpf_cli, netbpf_daemon},
    topology::{Topology, run},
};

/// A host namespace with a netbpf daemon of its own, restartable.
struct SoakHost {
    topo: Topology,
    bin: PathBuf,
    dir: PathBuf,
    prefix: String,
    cgroup: PathBuf,
    daemon: Option<Child>,
    /// What every soak container runs: `sleep 7777.<this run's pid>`, recognisable among
    /// the machine's processes.
    sleep: [String; 2],
}

impl SoakHost {
    fn new(bin: &Path, prefix: &str) -> anyhow::Result<Self> {
        let mut topo = Topology::new(prefix)?;
        let dir = std::env::temp_dir().join(format!("netbpf-bench-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        topo.dirs.push(dir.clone());
        let cgroup = topo.cgroup()?;
        let mut host = Self {
            topo,
            bin: bin.to_owned(),
            dir,
            prefix: format!("{prefix}-c-"),
            cgroup,
            daemon: None,
            sleep: ["sleep".into(), format!("7777.{}", std::process::id())],
        };
        host.start()?;
        Ok(host)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let cgroup = self.cgroup.to_str().expect("utf-8").to_owned();
        let mut daemon = netbpf_daemon(
            &self.bin,
            &self.topo.host,
            &self.dir,
            &self.prefix,
            &["--cgroup", &cgroup, "--xdp", "off"],
        );
        let child = daemon.spawn().context("netbpf daemon")?;
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.cli(&["info"]).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the soak daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// `run -d --name NAME --network NETWORK -- sleep 7777.<pid>`.
    fn run_args<'a>(&'a self, name: &'a str, network: &'a str) -> Vec<&'a str> {
        let mut args = vec!["run", "-d", "--name", name, "--network", network, "--"];
        args.extend(self.sleep.iter().map(String::as_str));
        args
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        netbpf_cli(&self.bin, &self.socket(), args)
    }

    /// What a crash or a long run could have left, as one line each.
    fn leftovers(&self) -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(self.dir.join("state/state.json"))?;
        let state: Value = serde_json::from_str(&text)?;
        let containers = state["containers"].as_object().cloned().unwrap_or_default();
        let endpoints: Vec<&Value> = containers
            .values()
            .flat_map(|c| c["endpoints"].as_array().into_iter().flatten())
            .collect();
        let veths: BTreeSet<&str> = endpoints
            .iter()
            .filter_map(|ep| ep["host_veth"].as_str())
            .collect();
        let bridges: BTreeSet<&str> = state["networks"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, n)| n["bridge"].as_str())
            .collect();
        let running: Vec<(&String, &Value)> = containers
            .iter()
            .filter(|(_, c)| c["status"] == "running")
            .collect();
        let mut found = vec![];
        let links: Value = serde_json::from_str(&run(
            "ip",
            &["-n", &self.topo.host, "-d", "-j", "link", "show"],
        )?)?;
        let names: BTreeSet<&str> = links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str())
            .collect();
        for link in links.as_array().into_iter().flatten() {
            let name = link["ifname"].as_str().unwrap_or_default();
            let kind = link["linkinfo"]["info_kind"].as_str().unwrap_or_default();
            let ours = link["ifalias"].as_str() == Some("netbpf");
            if name.starts_with("veth") && !veths.contains(name) {
                found.push(format!("orphan veth {name}"));
            }
            if kind == "bridge" && ours && !bridges.contains(name) {
                found.push(format!("orphan bridge {name}"));
            }
            if ["nbd", "nbp", "tmp"].iter().any(|p| name.starts_with(p)) {
                found.push(format!("temporary link {name}"));
            }
        }
        for veth in &veths {
            if !names.contains(veth) {
                found.push(format!("recorded veth {veth} missing"));
            }
        }
        let running_names: BTreeSet<&str> = running.iter().map(|(n, _)| n.as_str()).collect();
        for dir in ["/run/netns", "/etc/netns"] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if let Some(name) = file.strip_prefix(&self.prefix)
                    && !running_names.contains(name)
                {
                    found.push(format!("{dir}/{file} of no running container"));
                }
            }
        }
        for entry in std::fs::read_dir(self.dir.join("bpffs/links"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let pin = entry.file_name().to_string_lossy().into_owned();
            if !veths.contains(pin.as_str()) {
                found.push(format!("pin links/{pin} of no endpoint"));
            }
        }
        let pids: BTreeSet<u64> = running
            .iter()
            .filter_map(|(_, c)| c["pid"].as_u64())
            .collect();
        let out = Command::new("pgrep")
            .args(["-x", "-f", &self.sleep.join(" ")])
            .output()?;
        for pid in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(pid) = pid.trim().parse::<u64>()
                && !pids.contains(&pid)
            {
                found.push(format!("untracked process {pid}"));
            }
        }
        let mut addresses = BTreeSet::new();
        for ep in &endpoints {
            let key = format!("{} {}", ep["network"], ep["ip"]);
            if !addresses.insert(key.clone()) {
                found.push(format!("duplicate address {key}"));
            }
        }
        Ok(found)
    }
}

impl Drop for SoakHost {
    /// A clean stop (SIGTERM): the daemon removes its containers, pins, bpffs and namespace
    /// mounts, so that the topology's directories can go.
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = run("kill", &["-TERM", &child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A small deterministic generator (xorshift64*): the crash schedule is the seed's.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}

fn one_operation(host: &SoakHost, schedule: &mut Schedule) {
    let container = ["a", "b", "c"][schedule.next(3) as usize];
    let network = ["n1", "n2"][schedule.next(2) as usize];
    let subnet = if network == "n1" {
        "10.171.0.0/24"
    } else {
        "10.172.0.0/24"
    };
    let args: Vec<&str> = match schedule.next(6) {
        0 => vec!["network", "create", "--subnet", subnet, network],
        1 => host.run_args(container, network),
        2 => vec!["network", "connect", network, container],
        3 => vec!["network", "disconnect", network, container],
        4 => vec!["rm", "-f", container],
        _ => vec!["network", "rm", network],
    };
    // Refusals (a name taken, a network in use) are part of the schedule.
    let _ = host.cli(&args);
}

pub fn measure(bin: &Path, quick: bool, samples: &mut Vec<Sample>) -> anyhow::Result<()> {
    let (cycles, crashes, runs) = if quick {
        (100, 30, 20)
    } else {
        (10_000, 300, 200)
    };
    // NETBPF_SOAK_CYCLES=N: a shorter soak, with the crash loop and the run --rm
    // comparison as they are (to rerun those after a fix without the long part).
    let cycles = std::env::var("NETBPF_SOAK_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cycles);
    let pid = std::process::id() % 10_000;
    let mut host = SoakHost::new(bin, &format!("nbs{pid}"))?;
    let sample = |metric: &str, contender: &str, value: f64| Sample {
        scenario: "soak".into(),
        pinned: false,
        contender: contender.into(),
        metric: metric.into(),
        value,
    };

    // The soak.
    let started = Instant::now();
    let run_args: Vec<String> = host
        .run_args("c", "s")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let run_args: Vec<&str> = run_args.iter().map(String::as_str).collect();
    for i in 0..cycles {
        host.cli(&["network", "create", "--subnet", "10.170.0.0/24", "s"])
            .with_context(|| format!("soak cycle {i}"))?;
        host.cli(&run_args)?;
        host.cli(&["rm", "-f", "c"])?;
        host.cli(&["network", "rm", "s"])?;
        if i % 1000 == 999 {
            eprintln!("bench: soak {}/{cycles} cycles", i + 1);
        }
    }
    let per_cycle = started.elapsed().as_secs_f64() * 1000.0 / f64::from(cycles);
    let left = host.leftovers()?;
    eprintln!("bench: soak {cycles} cycles, {per_cycle:.1} ms each, leftovers {left:?}");
    samples.push(sample("cycles", "netbpf", f64::from(cycles)));
    samples.push(sample("cycle_ms", "netbpf", per_cycle));
    samples.push(sample("leftovers", "netbpf", left.len() as f64));

    // run --rm against Docker's.
    let started = Instant::now();
    for _ in 0..runs {
        host.cli(&[
            "run",
            "--rm",
            "--name",
            "once",
            "--",
            "/bin/busybox",
            "true",
        ])?;
    }
    let netbpf_run = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
    samples.push(sample("run_rm_ms", "netbpf", netbpf_run));
    let docker = Contender::new(Kind::DockerProxy, bin)?;
    let (socket, image) = docker
        .docker
        .clone()
        .context("the Docker contender's socket")?;
    let started = Instant::now();
    for _ in 0..runs {
        run(
            "docker",
            &["-H", &socket, "run", "--rm", &image, "/bin/busybox", "true"],
        )?;
    }
    let docker_run = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
    samples.push(sample("run_rm_ms", "docker-proxy", docker_run));
    eprintln!("bench: run --rm {netbpf_run:.1} ms (netbpf) against {docker_run:.1} ms (Docker)");
    drop(docker);

    // The crash loop.
    let seed = 0x6e65_7462_7066_u64;
    let mut schedule = Schedule(seed);
    let started = Instant::now();
    let mut problems = vec![];
    for cycle in 0..crashes {
        let delay = Duration::from_millis(schedule.next(120));
        let mut ops = Schedule(schedule.next(u64::MAX) | 1);
        let daemon = host.daemon_pid().context("the soak daemon")?.to_string();
        // Operations in flight when the daemon dies: SIGKILL after `delay`, mid-request.
        std::thread::scope(|scope| {
            let host = &host;
            scope.spawn(move || {
                for _ in 0..4 {
                    one_operation(host, &mut ops);
                }
            });
            std::thread::sleep(delay);
            let _ = run("kill", &["-9", &daemon]);
        });
        host.kill();
        host.start()
            .with_context(|| format!("restart after crash {cycle}"))?;
        for problem in host.leftovers()? {
            problems.push(format!("cycle {cycle}: {problem}"));
        }
    }
    let per_crash = started.elapsed().as_secs_f64() * 1000.0 / f64::from(crashes);
    eprintln!(
        "bench: crash loop (seed {seed:#x}) {crashes} cycles, {per_crash:.0} ms each, problems {problems:#?}"
    );
    samples.push(sample("crash_cycles", "netbpf", f64::from(crashes)));
    samples.push(sample("crash_cycle_ms", "netbpf", per_crash));
    samples.push(sample("crash_leftovers", "netbpf", problems.len() as f64));
    anyhow::ensure!(
        problems.is_empty(),
        "leftovers after crashes: {problems:#?}"
    );
    anyhow::ensure!(left.is_empty(), "leftovers after the soak: {left:#?}");
    Ok(())
}
