//! `cargo xtask test`: everything CI checks, in order of cost.

use crate::{is_root, root, setup, sh, upgrade};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !setup::ready() {
        setup::run()?;
    }
    sh("cargo", &["fmt", "--all", "--check"], &[])?;
    sh(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "netbpf-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    sh(
        "cargo",
        &["test", "--package", "netbpf", "--package", "netbpf-common"],
        &[],
    )?;
    // Integration tests make namespaces, interfaces and BPF programs: they need root, and
    // fail (rather than skip) without it.
    anyhow::ensure!(
        is_root(),
        "the integration tests need root: run `sudo -E cargo xtask test`"
    );
    // The Docker tests drive a real dockerd (Debian's docker.io), one of the benchmark's
    // packages: on a fresh machine they must be there before the first test, not only before
    // the quick benchmark run at the end.
    setup::bench()?;
    let previous = upgrade::previous_release()?;
    sh("cargo", &["build", "--package", "netbpf"], &[])?;
    let bin = root().join("target/debug/netbpf");
    let mut test_args = vec!["test", "--package", "netbpf-tests", "--"];
    test_args.extend(args.iter().map(String::as_str));
    sh(
        "cargo",
        &test_args,
        &[
            ("NETBPF_BIN", bin.to_str().expect("utf-8 path")),
            (
                "NETBPF_PREVIOUS_BIN",
                previous.to_str().expect("utf-8 path"),
            ),
        ],
    )?;
    // The benchmark harness, once and short: it must keep working (no timing assertions).
    if args.is_empty() {
        crate::bench::quick_check(&root().join("target/bench-quick"))?;
    }
    Ok(())
}
