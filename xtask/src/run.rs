//! `cargo xtask run [-- ARGS]`: build, then `netbpf daemon ARGS` as root.

use crate::{is_root, root, setup, sh};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !setup::ready() {
        setup::run()?;
    }
    sh("cargo", &["build", "--package", "netbpf"], &[])?;
    let bin = root().join("target/debug/netbpf");
    let bin = bin.to_str().expect("utf-8 path");
    let mut daemon = vec!["daemon"];
    daemon.extend(args.iter().map(String::as_str));
    if is_root() {
        sh(bin, &daemon, &[])
    } else {
        let mut with = vec![bin];
        with.extend(daemon);
        sh("sudo", &with, &[])
    }
}
