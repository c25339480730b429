//! `cargo xtask setup`: installs what a bare Debian 12 machine lacks, and nothing else.
//! Facts behind each step are in ../shared/ebpf-toolchain.md (LLVM 22 from Debian, the
//! nightly pinned to one whose LLVM is 22, bpf-linker built against it).

use std::process::Command;

use crate::{is_root, sh};

/// The nightly whose LLVM matches Debian's LLVM 22 (later nightlies use LLVM 23).
pub const NIGHTLY: &str = "nightly-2026-05-19";
const BPF_LINKER_VERSION: &str = "0.13.0";
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iputils-ping",
    "iperf3",
    "ethtool",
    "bpftool",
    "curl",
    "dnsutils",
    "tcpdump",
    // Only to show, in tests, that netbpf creates no netfilter rules.
    "iptables",
    "nftables",
    "python3",
    // A small upstream DNS server for the embedded DNS tests.
    "dnsmasq-base",
    // protoc and its well-known types, for etcd-client's generated gRPC code.
    "protobuf-compiler",
    "libprotobuf-dev",
    // The cluster store the overlay tests run (as Flannel and Calico use it).
    "etcd-server",
    // etcdctl, to set up an authenticated store; openssl, to make its certificates.
    "etcd-client",
    "openssl",
    // A real runtime for the CNI plugin's tests: Podman 4 with its CNI backend, the
    // reference plugins it wants to find, its OCI runtime and monitor.
    "podman",
    "containernetworking-plugins",
    "crun",
    "conmon",
    "catatonit",
    "busybox-static",
    // `ctr run --cni` for the containerd smoke test (runc is docker.io's dependency).
    "containerd",
    "runc",
];

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p]).contains("install ok installed")
        })
        .collect()
}

fn nightly_ready() -> bool {
    output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", NIGHTLY],
    )
    .lines()
    .any(|l| l.starts_with("rust-src"))
}

fn stable_components_ready() -> bool {
    let installed = output("rustup", &["component", "list", "--installed"]);
    installed.lines().any(|l| l.starts_with("clippy"))
        && installed.lines().any(|l| l.starts_with("rustfmt"))
}

fn bpf_linker_ready() -> bool {
    output("bpf-linker", &["--version"]).contains(BPF_LINKER_VERSION)
}

/// Whether everything is in place (cheap; `run` and `test` call it first).
pub fn ready() -> bool {
    missing_packages().is_empty()
        && nightly_ready()
        && stable_components_ready()
        && bpf_linker_ready()
}

pub fn run() -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        eprintln!("xtask setup: Debian packages present");
    } else {
        eprintln!(
            "xtask setup: installing Debian packages: {}",
            missing.join(" ")
        );
        let apt = |args: &[&str]| {
            if is_root() {
                sh("apt-get", args, &[("DEBIAN_FRONTEND", "noninteractive")])
            } else {
                let mut with = vec!["apt-get"];
                with.extend_from_slice(args);
                sh("sudo", &with, &[("DEBIAN_FRONTEND", "noninteractive")])
            }
        };
        apt(&["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }
    if nightly_ready() {
        eprintln!("xtask setup: {NIGHTLY} with rust-src present");
    } else {
        eprintln!("xtask setup: installing {NIGHTLY} with rust-src (builds the eBPF programs)");
        sh(
            "rustup",
            &[
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
            &[],
        )?;
    }
    if stable_components_ready() {
        eprintln!("xtask setup: clippy and rustfmt present");
    } else {
        eprintln!("xtask setup: adding clippy and rustfmt");
        sh("rustup", &["component", "add", "clippy", "rustfmt"], &[])?;
    }
    if bpf_linker_ready() {
        eprintln!("xtask setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        eprintln!(
            "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        sh(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ],
            &[("LLVM_PREFIX", "/usr/lib/llvm-22"), ("PATH", &path)],
        )?;
    }
    eprintln!("xtask setup: done");
    Ok(())
}

/// What `cargo xtask bench` needs on top: netperf (Debian non-free), Docker's real data
/// plane (docker.io: dockerd, docker-proxy), a busybox for images, perf for `--profile`.
const BENCH_PACKAGES: &[&str] = &["netperf", "docker.io", "busybox-static", "linux-perf"];
const NON_FREE_SOURCES: &str = "/etc/apt/sources.list.d/netbpf-bench-non-free.sources";

pub fn bench_ready() -> bool {
    BENCH_PACKAGES
        .iter()
        .all(|p| output("dpkg-query", &["-W", "-f=${Status}", p]).contains("install ok installed"))
}

pub fn bench() -> anyhow::Result<()> {
    if bench_ready() {
        eprintln!("xtask setup: benchmark packages present");
        return Ok(());
    }
    if !std::path::Path::new(NON_FREE_SOURCES).exists() {
        eprintln!(
            "xtask setup: enabling Debian's non-free component (netperf) in {NON_FREE_SOURCES}"
        );
        std::fs::write(
            NON_FREE_SOURCES,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: non-free\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )?;
    }
    eprintln!("xtask setup: installing {}", BENCH_PACKAGES.join(" "));
    sh(
        "apt-get",
        &["update", "-q"],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(BENCH_PACKAGES);
    sh("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
}
