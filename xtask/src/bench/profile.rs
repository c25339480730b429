//! `--profile`: where the time goes in each pinned measurement. CPU 0 carries client,
//! server and data plane in those runs, so one `perf record -C 0` sees the whole path; the
//! kernel's BPF run-time statistics (enabled while the profiler lives) add each program's
//! cost per run.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;

pub struct Profiler {
    dir: PathBuf,
    /// BPF_ENABLE_STATS holds while this descriptor is open.
    _stats: OwnedFd,
}

/// Run count and nanoseconds of one loaded program.
#[derive(Clone, Copy, Default)]
struct ProgStats {
    runs: u64,
    ns: u64,
}

fn prog_stats() -> anyhow::Result<BTreeMap<(u64, String), ProgStats>> {
    let out = super::topology::run("bpftool", &["-j", "prog", "show"])?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let key = (p["id"].as_u64()?, p["name"].as_str()?.to_owned());
            let stats = ProgStats {
                runs: p["run_cnt"].as_u64().unwrap_or(0),
                ns: p["run_time_ns"].as_u64().unwrap_or(0),
            };
            Some((key, stats))
        })
        .collect())
}

/// A profile being taken.
pub struct Running {
    file: PathBuf,
    perf: Child,
    before: BTreeMap<(u64, String), ProgStats>,
}

impl Profiler {
    pub fn new(out: &Path) -> anyhow::Result<Self> {
        let dir = out.join("profiles");
        std::fs::create_dir_all(&dir)?;
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        Ok(Self { dir, _stats: stats })
    }

    /// Starts recording CPU 0 for `seconds`, alongside a measurement.
    pub fn start(&self, name: &str, seconds: u32) -> anyhow::Result<Running> {
        let file = self.dir.join(name);
        let perf = Command::new("perf")
            .args(["record", "-q", "-C", "0", "-g", "-o"])
            .arg(file.with_extension("data"))
            .args(["--", "sleep", &seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf (linux-perf) is needed for --profile")?;
        Ok(Running {
            file,
            perf,
            before: prog_stats()?,
        })
    }
}

impl Running {
    /// Writes `<name>.txt`: the BPF programs that ran, then perf's hottest symbols.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let after = prog_stats()?;
        self.perf.wait()?;
        let mut text = String::from("BPF programs that ran (kernel run-time statistics)\n\n");
        writeln!(text, "{:<28} {:>12} {:>10}", "program", "runs", "ns/run")?;
        for (key, now) in &after {
            let then = self.before.get(key).copied().unwrap_or_default();
            let runs = now.runs.saturating_sub(then.runs);
            if runs > 0 {
                let ns = now.ns.saturating_sub(then.ns) as f64 / runs as f64;
                writeln!(text, "{:<28} {runs:>12} {ns:>10.1}", key.1)?;
            }
        }
        let data = self.file.with_extension("data");
        let report = Command::new("perf")
            .args(["report", "--no-children", "--stdio", "-g", "none"])
            .args(["--percent-limit", "0.7", "--sort", "sym", "-i"])
            .arg(&data)
            .output()?;
        text.push_str("\nperf record -C 0 (CPU 0 carries client, server and data plane)\n\n");
        text.extend(
            String::from_utf8_lossy(&report.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(|l| format!("{l}\n")),
        );
        std::fs::write(self.file.with_extension("txt"), text)?;
        let _ = std::fs::remove_file(data);
        Ok(())
    }
}
