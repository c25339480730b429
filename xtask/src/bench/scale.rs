//! The control-plane side of the data planes: publishing many ports (time, map memory,
//! and the per-connection cost it may add) and the memory and CPU of an idle daemon.

use std::{process::Command, time::Instant};

use anyhow::Context as _;

use super::{
    CRR_LATENCY, Sample,
    contender::{self, CTRL_PORT, Contender, DATA_PORT, Kind},
    netperf, record, topology,
};

/// Publishing many ports: how long it takes, what it costs in map memory, and whether the
/// per-connection cost moves (netbpf maps vs nftables rules).
pub fn scale(
    c: &Contender,
    sizes: &[u32],
    duration: u32,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<()> {
    for &n in sizes {
        let took = match (c.kind, &c.netbpf) {
            (Kind::Netbpf, Some((bin, socket))) => {
                let name = format!("scale{n}");
                let range = format!("20000-{}:20000-{}", 20000 + n - 1, 20000 + n - 1);
                let started = Instant::now();
                let out = Command::new(bin)
                    .args([
                        "run",
                        "-d",
                        "--name",
                        &name,
                        "--network",
                        "bench",
                        "-p",
                        &range,
                        "--",
                        "sleep",
                        "infinity",
                    ])
                    .env("NETBPF_SOCKET", socket)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "publishing {n} ports: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let took = started.elapsed().as_secs_f64();
                scale_crr(c, n, duration, samples)?;
                let unpublish_started = Instant::now();
                let _ = Command::new(bin)
                    .args(["rm", "-f", &name])
                    .env("NETBPF_SOCKET", socket)
                    .output();
                record(
                    samples,
                    "scale",
                    true,
                    c,
                    &[&format!("seconds to unpublish {n} ports")],
                    &[unpublish_started.elapsed().as_secs_f64()],
                );
                took
            }
            (Kind::Nftables, _) => {
                // In front of the real rules, as each new publication would be: every
                // packet walks past them.
                let dummy: Vec<u16> = (20000..20000 + n).map(|p| p as u16).collect();
                let started = Instant::now();
                contender::nft(
                    c.host_ns(),
                    &contender::port_rules("insert", "10.240.0.99", &dummy),
                )?;
                let took = started.elapsed().as_secs_f64();
                scale_crr(c, n, duration, samples)?;
                let restore = format!(
                    "flush chain inet netavark hostport_dnat\n{}",
                    contender::port_rules("add", &c.server_ip, &[CTRL_PORT, DATA_PORT])
                );
                contender::nft(c.host_ns(), &restore)?;
                took
            }
            _ => continue,
        };
        record(
            samples,
            "scale",
            true,
            c,
            &[&format!("seconds to publish {n} ports")],
            &[took],
        );
    }
    Ok(())
}

fn scale_crr(
    c: &Contender,
    n: u32,
    duration: u32,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<()> {
    let v = netperf(
        c.client_ns(),
        true,
        &c.external_addr,
        duration,
        &CRR_LATENCY,
    )?;
    record(
        samples,
        "scale",
        true,
        c,
        &[
            &format!("conn/s with {n} ports"),
            &format!("p99 connection us with {n} ports"),
        ],
        &v,
    );
    Ok(())
}

/// Resident memory (KiB) of every process in `ns` whose command is `comm`.
fn rss_kib(ns: &str, comm: &str) -> (usize, f64) {
    let pids = topology::run("ip", &["netns", "pids", ns]).unwrap_or_default();
    let mut count = 0;
    let mut total = 0.0;
    for pid in pids.split_whitespace() {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(str::trim)
            .unwrap_or_default();
        if name == comm {
            count += 1;
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    (count, total)
}

/// CPU seconds (user + system) used so far by the processes in `ns` named `comm`.
fn cpu_seconds(ns: &str, comm: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let pids = topology::run("ip", &["netns", "pids", ns]).unwrap_or_default();
    pids.split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter(|stat| stat.contains(&format!("({comm})")))
        .filter_map(|stat| {
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / ticks
}

/// What the data plane costs in memory and processes, with 3 ports published (netperf's
/// control port, its data port over TCP and UDP).
pub fn memory(c: &Contender, idle_seconds: u32, samples: &mut Vec<Sample>) -> anyhow::Result<()> {
    let daemon = match c.kind {
        Kind::Netbpf => "netbpf",
        Kind::DockerProxy | Kind::DockerIptables | Kind::DockerNetbpf => "dockerd",
        _ => "",
    };
    if !daemon.is_empty() {
        // Idle: nothing is being measured while this sleeps.
        let before = cpu_seconds(c.host_ns(), daemon);
        std::thread::sleep(std::time::Duration::from_secs(idle_seconds.into()));
        let used = cpu_seconds(c.host_ns(), daemon) - before;
        record(
            samples,
            "memory",
            false,
            c,
            &["idle daemon CPU %"],
            &[used / f64::from(idle_seconds) * 100.0],
        );
    }
    match c.kind {
        Kind::Netbpf => {
            let (_, rss) = rss_kib(c.host_ns(), "netbpf");
            record(samples, "memory", false, c, &["daemon RSS KiB"], &[rss]);
            if let Some((bin, socket)) = &c.netbpf {
                let out = Command::new(bin)
                    .arg("info")
                    .env("NETBPF_SOCKET", socket)
                    .output()?;
                let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let id = info["map_ids"]["PUBLISHED"]
                    .as_u64()
                    .context("PUBLISHED map id")?;
                let map: serde_json::Value = serde_json::from_str(&topology::run(
                    "bpftool",
                    &["-j", "map", "show", "id", &id.to_string()],
                )?)?;
                let bytes = map["bytes_memlock"].as_f64().unwrap_or(0.0);
                let entries = map["max_entries"].as_f64().unwrap_or(1.0);
                record(
                    samples,
                    "memory",
                    false,
                    c,
                    &["map bytes per published port"],
                    &[bytes / entries],
                );
            }
        }
        Kind::DockerProxy | Kind::DockerIptables => {
            let (proxies, rss) = rss_kib(c.host_ns(), "docker-proxy");
            record(
                samples,
                "memory",
                false,
                c,
                &["docker-proxy processes", "docker-proxy RSS KiB"],
                &[proxies as f64, rss],
            );
            let (_, dockerd) = rss_kib(c.host_ns(), "dockerd");
            record(samples, "memory", false, c, &["daemon RSS KiB"], &[dockerd]);
        }
        _ => {}
    }
    Ok(())
}
