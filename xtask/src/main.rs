//! `cargo xtask`: set-up, run and test netbpf on a bare Debian machine.

mod bench;
mod run;
mod setup;
mod test;
mod upgrade;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: Debian packages, the pinned nightly, bpf-linker. Idempotent.
    Setup,
    /// Build everything and run `netbpf daemon ARGS` as root.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Performance comparison against Docker (docker-proxy, iptables DNAT), nftables DNAT
    /// and the no-NAT ceiling (as root).
    Bench(bench::Args),
    /// Every check and test: fmt, clippy, unit tests, integration tests, a quick bench (as root).
    Test {
        /// Passed to the integration test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Setup => setup::run(),
        Command::Run { args } => run::run(&args),
        Command::Test { args } => test::run(&args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Runs a command, echoing it, failing on a non-zero exit.
pub fn sh(program: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = std::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    anyhow::ensure!(
        status.success(),
        "{program} {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
