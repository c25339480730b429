//! `cargo xtask bench`: netbpf side by side with the data planes people run today, on the
//! same topology, interleaved across repetitions, reported as min/median/max and ratios.

mod contender;
mod docker;
mod overlay;
mod packet_socket;
mod pps;
mod profile;
mod report;
mod scale;
mod soak;
mod topology;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use contender::{CTRL_PORT, Contender, DATA_PORT, Kind};
use serde::Serialize;
use topology::in_ns;

use crate::{root, sh};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A short run (under 3 minutes) that proves the harness works.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated): ext-rr, ext-crr, ext-stream, ext-udp,
    /// local-rr, local-stream, c2c-rr, xdp-pps, overlay, scale, memory; or soak (the
    /// control plane's soak and crash loop, on its own).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Repetitions of every measurement (interleaved across contenders).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per measurement.
    #[arg(long)]
    duration: Option<u32>,
    /// Also profile every pinned measurement (perf on CPU 0 and BPF run-time statistics)
    /// into OUT/profiles.
    #[arg(long)]
    profile: bool,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub scenario: String,
    pub pinned: bool,
    pub contender: String,
    pub metric: String,
    pub value: f64,
}

/// A netperf run: which test, from where, to where.
struct Netperf<'a> {
    test: &'a str,
    extra: &'a [&'a str],
    selectors: &'a str,
}

fn netperf(
    ns: &str,
    pinned: bool,
    host: &str,
    duration: u32,
    np: &Netperf,
) -> anyhow::Result<Vec<f64>> {
    netperf_in(ns, None, pinned, host, duration, np)
}

/// netperf, in `cgroup` when given (a host-side client of netbpf's socket hooks).
fn netperf_in(
    ns: &str,
    cgroup: Option<&Path>,
    pinned: bool,
    host: &str,
    duration: u32,
    np: &Netperf,
) -> anyhow::Result<Vec<f64>> {
    let duration = duration.to_string();
    let ctrl = CTRL_PORT.to_string();
    let data = format!(",{DATA_PORT}");
    let mut args = vec![
        "-H", host, "-p", &ctrl, "-l", &duration, "-t", np.test, "-P", "0", "--", "-P", &data,
    ];
    args.extend(np.extra);
    args.extend(["-o", np.selectors]);
    let mut command = match cgroup {
        Some(cgroup) => topology::in_ns_cgroup(ns, pinned, cgroup, "netperf", &args),
        None => in_ns(ns, pinned, "netperf", &args),
    };
    let out = command.output().context("netperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "netperf {}: {}{}",
        np.test,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text.lines().last().unwrap_or_default();
    line.split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .with_context(|| format!("netperf output {line:?}"))
        })
        .collect()
}

const RR: Netperf = Netperf {
    test: "TCP_RR",
    extra: &[],
    selectors: "THROUGHPUT,P50_LATENCY,P90_LATENCY,P99_LATENCY",
};
const CRR: Netperf = Netperf {
    test: "TCP_CRR",
    extra: &[],
    selectors: "THROUGHPUT",
};
/// Connections with their latency: every connection's first packet takes the new-flow path
/// (a PUBLISHED lookup for netbpf, a walk of the DNAT rules for the others).
const CRR_LATENCY: Netperf = Netperf {
    test: "TCP_CRR",
    extra: &[],
    selectors: "THROUGHPUT,P99_LATENCY",
};
const STREAM: Netperf = Netperf {
    test: "TCP_STREAM",
    extra: &[],
    selectors: "THROUGHPUT",
};
const UDP: Netperf = Netperf {
    test: "UDP_STREAM",
    // -R 1: UDP_STREAM sets SO_DONTROUTE unless told; the ceiling is a routed path.
    extra: &["-m", "64", "-R", "1"],
    selectors: "LOCAL_SEND_CALLS,REMOTE_RECV_CALLS,ELAPSED_TIME",
};

/// Records netperf's numbers under their names.
fn record(
    samples: &mut Vec<Sample>,
    scenario: &str,
    pinned: bool,
    c: &Contender,
    names: &[&str],
    values: &[f64],
) {
    for (name, value) in names.iter().zip(values) {
        samples.push(Sample {
            scenario: scenario.into(),
            pinned,
            contender: c.kind.name().into(),
            metric: (*name).into(),
            value: *value,
        });
    }
}

fn measure(
    c: &Contender,
    scenario: &str,
    pinned: bool,
    duration: u32,
    generator: Option<&mut pps::Generator>,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<()> {
    let (client, ext) = (c.client_ns(), c.external_addr.as_str());
    match scenario {
        "ext-rr" => {
            let v = netperf(client, pinned, ext, duration, &RR)?;
            record(
                samples,
                scenario,
                pinned,
                c,
                &["trans/s", "p50 us", "p90 us", "p99 us"],
                &v,
            );
        }
        "ext-crr" => record(
            samples,
            scenario,
            pinned,
            c,
            &["conn/s"],
            &netperf(client, pinned, ext, duration, &CRR)?,
        ),
        "ext-stream" => record(
            samples,
            scenario,
            pinned,
            c,
            &["Mbit/s"],
            &netperf(client, pinned, ext, duration, &STREAM)?,
        ),
        "ext-udp" => {
            let v = netperf(client, pinned, ext, duration, &UDP)?;
            let (sent, received, elapsed) = (v[0], v[1], v[2].max(0.001));
            let loss = if sent > 0.0 {
                100.0 * (1.0 - received / sent)
            } else {
                0.0
            };
            record(
                samples,
                scenario,
                pinned,
                c,
                &["received pps", "loss %"],
                &[received / elapsed, loss],
            );
        }
        "local-stream" => {
            let cgroup = c.host_cgroup.as_deref();
            let v = netperf_in(
                c.host_ns(),
                cgroup,
                pinned,
                &c.local_addr,
                duration,
                &STREAM,
            )?;
            record(samples, scenario, pinned, c, &["Mbit/s"], &v);
        }
        "local-rr" => {
            let cgroup = c.host_cgroup.as_deref();
            let v = netperf_in(c.host_ns(), cgroup, pinned, &c.local_addr, duration, &RR)?;
            record(
                samples,
                scenario,
                pinned,
                c,
                &["trans/s", "p50 us", "p90 us", "p99 us"],
                &v,
            );
        }
        "c2c-rr" => {
            let v = netperf(&c.peer_ns, pinned, &c.server_ip, duration, &RR)?;
            record(
                samples,
                scenario,
                pinned,
                c,
                &["trans/s", "p50 us", "p90 us", "p99 us"],
                &v,
            );
        }
        "xdp-pps" => {
            let generator = generator.context("the traffic generator is loaded")?;
            let (pps, delivered) = generator.measure(c, duration)?;
            record(
                samples,
                scenario,
                true,
                c,
                &[generator.rate_metric(), "delivered %"],
                &[pps, delivered],
            );
        }
        other => anyhow::bail!("unknown scenario {other}"),
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::is_root(),
        "the benchmark builds namespaces: run it as root"
    );
    if !crate::setup::ready() || !crate::setup::bench_ready() {
        crate::setup::run()?;
        crate::setup::bench()?;
    }
    sh("cargo", &["build", "--release", "--package", "netbpf"], &[])?;
    let bin = root().join("target/release/netbpf");
    if args.only.iter().any(|o| o == "soak") {
        return run_soak(&args, &bin);
    }
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 5 });
    let duration = args.duration.unwrap_or(if args.quick { 2 } else { 10 });
    let all = [
        "ext-rr",
        "ext-crr",
        "ext-stream",
        "ext-udp",
        "local-rr",
        "local-stream",
        "c2c-rr",
        "xdp-pps",
        "overlay",
        "scale",
        "memory",
    ];
    let scenarios: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s))
        .collect();
    let sizes: &[u32] = if args.quick {
        &[1, 100]
    } else {
        &[1, 100, 1_000, 10_000]
    };

    eprintln!("bench: setting up {} contenders", Kind::ALL.len());
    let setup_started = Instant::now();
    let contenders: Vec<Contender> = Kind::ALL
        .iter()
        .map(|k| Contender::new(*k, &bin))
        .collect::<anyhow::Result<_>>()?;
    let overlay_bench = if scenarios.contains(&"overlay") {
        Some(overlay::OverlayBench::new(&bin)?)
    } else {
        None
    };
    let mut generator = if scenarios.contains(&"xdp-pps") {
        Some(pps::Generator::load(&pps::build_object()?)?)
    } else {
        None
    };
    // Let servers come up.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root().join(&args.out)
    };
    std::fs::create_dir_all(&out)?;
    let profiler = if args.profile {
        Some(profile::Profiler::new(&out)?)
    } else {
        None
    };
    let started = Instant::now();
    let mut samples = vec![];
    for rep in 0..reps {
        for scenario in scenarios
            .iter()
            .filter(|s| !matches!(**s, "scale" | "memory" | "overlay"))
        {
            for pinned in [true, false] {
                // The generator pins the whole path to CPU 0 itself.
                if (args.quick || *scenario == "xdp-pps") && !pinned {
                    continue;
                }
                // Interleaved: each contender once per repetition, in turn.
                for c in contenders.iter().filter(|c| c.kind.runs(scenario)) {
                    c.pin_server(pinned)?;
                    eprintln!(
                        "bench: [{:>4}s] rep {}/{reps} {scenario} {} {}",
                        setup_started.elapsed().as_secs(),
                        rep + 1,
                        if pinned { "pinned" } else { "unpinned" },
                        c.kind.name()
                    );
                    let profiling = match &profiler {
                        Some(p) if pinned => Some(p.start(
                            &format!("{scenario}-{}-rep{}", c.kind.name(), rep + 1),
                            duration,
                        )?),
                        _ => None,
                    };
                    measure(
                        c,
                        scenario,
                        pinned,
                        duration,
                        generator.as_mut(),
                        &mut samples,
                    )
                    .with_context(|| format!("{scenario} on {}", c.kind.name()))?;
                    if let Some(running) = profiling {
                        running.finish()?;
                    }
                }
            }
        }
        if let Some(bench) = &overlay_bench {
            for pinned in [true, false] {
                if args.quick && !pinned {
                    continue;
                }
                overlay::measure(bench, pinned, duration, &mut samples).context("overlay")?;
            }
        }
    }
    if scenarios.contains(&"memory") {
        for c in contenders.iter().filter(|c| c.kind.runs("memory")) {
            scale::memory(c, if args.quick { 2 } else { 5 }, &mut samples)?;
        }
    }
    if scenarios.contains(&"scale") {
        for c in contenders.iter().filter(|c| c.kind.runs("scale")) {
            c.pin_server(true)?;
            scale::scale(c, sizes, duration.min(5), &mut samples)?;
        }
    }
    report::write_run(&out, &samples, contenders[0].host_ns(), started)?;
    eprintln!(
        "bench: [{:>4}s] wrote {}",
        setup_started.elapsed().as_secs(),
        out.display()
    );
    drop(contenders);
    drop(overlay_bench);
    Ok(())
}

/// `--only soak`: the control plane's soak and crash loop (no data-plane contenders).
fn run_soak(args: &Args, bin: &Path) -> anyhow::Result<()> {
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root().join(&args.out)
    };
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let mut samples = vec![];
    soak::measure(bin, args.quick, &mut samples)?;
    report::write_run(&out, &samples, "", started)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

pub fn quick_check(out: &Path) -> anyhow::Result<()> {
    run(Args {
        quick: true,
        only: vec![],
        reps: None,
        duration: None,
        profile: false,
        out: out.to_owned(),
    })
}
