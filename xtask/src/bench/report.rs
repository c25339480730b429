//! results.json, results.md (min/median/max and ratios) and one SVG bar chart per scenario.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use plotters::prelude::*;
use serde::Serialize;

use super::Sample;

/// Writes the results of a run that started at `started` (the machine described from
/// namespace `ns`, the command line as given).
pub fn write_run(
    out: &std::path::Path,
    samples: &[super::Sample],
    ns: &str,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    write(
        out,
        samples,
        &Machine::detect(ns),
        &format!("cargo xtask {command}"),
        started.elapsed().as_secs(),
    )
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    /// Whether bridged traffic goes through iptables (Docker hosts usually have it on).
    pub bridge_nf_call_iptables: String,
}

impl Machine {
    /// The machine, and bridge netfilter as the host namespace `ns` has it.
    pub fn detect(ns: &str) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        Self {
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            bridge_nf_call_iptables: super::topology::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "cat",
                    "/proc/sys/net/bridge/bridge-nf-call-iptables",
                ],
            )
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "br_netfilter not loaded (off)".into()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    scenario: String,
    pinned: bool,
    metric: String,
    contender: String,
    min: f64,
    median: f64,
    max: f64,
    n: usize,
}

fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, bool, String, String), Vec<f64>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((
                s.scenario.clone(),
                !s.pinned,
                s.metric.clone(),
                s.contender.clone(),
            ))
            .or_default()
            .push(s.value);
    }
    groups
        .into_iter()
        .map(|((scenario, unpinned, metric, contender), mut v)| {
            v.sort_by(f64::total_cmp);
            let median = if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            };
            Summary {
                scenario,
                pinned: !unpinned,
                metric,
                contender,
                min: v[0],
                median,
                max: v[v.len() - 1],
                n: v.len(),
            }
        })
        .collect()
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn write(
    out: &Path,
    samples: &[Sample],
    machine: &Machine,
    command: &str,
    seconds: u64,
) -> anyhow::Result<()> {
    let summary = summarize(samples);
    let json = serde_json::json!({ "command": command, "machine": machine, "seconds": seconds, "samples": samples, "summary": summary });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let mut md = String::new();
    writeln!(md, "Command: `{command}` ({seconds} s)\n")?;
    writeln!(
        md,
        "Machine: {} CPUs, {}, kernel {}; bridge-nf-call-iptables: {}\n",
        machine.cpus, machine.cpu, machine.kernel, machine.bridge_nf_call_iptables
    )?;
    let mut tables: BTreeMap<(String, bool, String), Vec<&Summary>> = BTreeMap::new();
    for s in &summary {
        tables
            .entry((s.scenario.clone(), s.pinned, s.metric.clone()))
            .or_default()
            .push(s);
    }
    for ((scenario, pinned, metric), rows) in &tables {
        // Ratios against each netbpf variant that took part.
        let references: Vec<(&str, f64)> = ["netbpf", "netbpf-xdp"]
            .into_iter()
            .filter_map(|name| {
                let row = rows.iter().find(|r| r.contender == name)?;
                Some((name, row.median))
            })
            .collect();
        let ceiling = rows
            .iter()
            .find(|r| r.contender == "ceiling")
            .map(|r| r.median);
        writeln!(
            md,
            "### {scenario} — {metric} ({})\n",
            if *pinned {
                "pinned to CPU 0"
            } else {
                "unpinned"
            }
        )?;
        let ratio_heads: String = references
            .iter()
            .map(|(name, _)| format!(" {name} ÷ this |"))
            .collect();
        writeln!(
            md,
            "| contender | median | min | max | n |{ratio_heads} this ÷ ceiling |"
        )?;
        writeln!(
            md,
            "|---|---|---|---|---|{}---|",
            "---|".repeat(references.len())
        )?;
        for r in rows {
            let ratios: String = references
                .iter()
                .map(|(_, reference)| {
                    if r.median > 0.0 {
                        format!(" {:.2}× |", reference / r.median)
                    } else {
                        " |".to_owned()
                    }
                })
                .collect();
            let vs_ceiling = ceiling
                .filter(|c| *c > 0.0)
                .map(|c| format!("{:.2}×", r.median / c))
                .unwrap_or_default();
            writeln!(
                md,
                "| {} | {} | {} | {} | {} |{ratios} {vs_ceiling} |",
                r.contender,
                fmt(r.median),
                fmt(r.min),
                fmt(r.max),
                r.n
            )?;
        }
        writeln!(md)?;
        plot(out, scenario, *pinned, metric, rows)?;
    }
    std::fs::write(out.join("results.md"), md)?;
    Ok(())
}

/// A bar per contender (the median) with a min–max whisker.
fn plot(
    out: &Path,
    scenario: &str,
    pinned: bool,
    metric: &str,
    rows: &[&Summary],
) -> anyhow::Result<()> {
    let file_metric: String = metric
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = out.join(format!(
        "{scenario}-{}-{file_metric}.svg",
        if pinned { "pinned" } else { "unpinned" }
    ));
    let root = SVGBackend::new(&path, (640, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().map(|r| r.max).fold(0.0, f64::max) * 1.15 + f64::EPSILON;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: {metric}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d((0..rows.len()).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => rows
                .get(*i)
                .map(|r| r.contender.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let color = if r.contender.starts_with("netbpf") {
            BLUE.mix(0.7)
        } else {
            BLACK.mix(0.3)
        };
        Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), r.median),
            ],
            color.filled(),
        )
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        PathElement::new(
            vec![
                (SegmentValue::CenterOf(i), r.min),
                (SegmentValue::CenterOf(i), r.max),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    root.present()?;
    Ok(())
}
