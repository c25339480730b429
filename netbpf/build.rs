//! Builds the eBPF programs with the pinned nightly (aya-build runs
//! `cargo build -Z build-std=core --target bpfel-unknown-none` on `netbpf-ebpf`) and leaves
//! the object in OUT_DIR for `datapath.rs` to embed.

use std::path::PathBuf;

use aya_build::{Package, Toolchain};

/// The nightly whose LLVM (22) matches the bpf-linker that `cargo xtask setup` builds.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../netbpf-ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [Package {
            name: "netbpf-ebpf",
            root_dir: root,
            no_default_features: false,
            features: &[],
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
