//! A container image without a registry: Debian's busybox-static as a rootfs tarball, for
//! `docker import` and `podman import`, with a page for its httpd at /www.

use std::path::{Path, PathBuf};

use crate::must;

/// Writes the rootfs under `dir` and returns the tarball's path.
pub fn busybox_tar(dir: &Path, page: &str) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "httpd", "nc", "sleep", "ping", "cat", "ip", "nslookup",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), page).unwrap();
    let tar = dir.join("rootfs.tar");
    must(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    tar
}
