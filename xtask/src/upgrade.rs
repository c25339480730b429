//! The previous release, for the upgrade test: a daemon of this build must take over a
//! host that one left after `kill -9` (state file, pins, map layouts).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{root, sh};

/// The release hosts are upgraded from: the last commit before the controller redesign.
/// Move it forward to each release that changes what is left on a host.
const PREVIOUS_RELEASE: &str = "741a7bcc1e6ac052aa105ef0c9bf4f7f65a05d43";

/// Builds the previous release's `netbpf` (once; kept under target/) and returns its path.
/// It gets a target dir of its own: cargo names a workspace's path packages by their place
/// in the workspace, so in a shared target dir both releases' `netbpf` would be one unit,
/// and `git archive`'s old mtimes would make the current build's artifacts look fresh.
pub fn previous_release() -> anyhow::Result<PathBuf> {
    let dir = root()
        .join("target/previous-release")
        .join(&PREVIOUS_RELEASE[..12]);
    let bin = dir.join("netbpf");
    if bin.exists() {
        return Ok(bin);
    }
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    let root = root();
    let archive = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["archive", "--format=tar", PREVIOUS_RELEASE])
        .output()
        .context("running git archive")?;
    anyhow::ensure!(
        archive.status.success(),
        "the previous release {PREVIOUS_RELEASE} is not in this clone ({}): the upgrade test \
         needs the full history (git fetch --unshallow)",
        String::from_utf8_lossy(&archive.stderr).trim()
    );
    let mut tar = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running tar")?;
    std::io::Write::write_all(tar.stdin.as_mut().expect("piped"), &archive.stdout)?;
    anyhow::ensure!(
        tar.wait()?.success(),
        "unpacking the previous release failed"
    );
    let manifest = src.join("Cargo.toml");
    let target = dir.join("target");
    sh(
        "cargo",
        &[
            "build",
            "--package",
            "netbpf",
            "--manifest-path",
            manifest.to_str().expect("utf-8 path"),
            "--target-dir",
            target.to_str().expect("utf-8 path"),
        ],
        &[],
    )?;
    std::fs::copy(target.join("debug/netbpf"), &bin)?;
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&target);
    Ok(bin)
}
