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

/// The image's web server, as `run` arguments after the image name: busybox httpd on port
/// 80 in the foreground, serving the page.
pub const HTTPD: [&str; 6] = ["httpd", "-f", "-p", "80", "-h", "/www"];

/// A shell command for the image that fetches `/` from `ip`:80 with busybox nc (its
/// static wget cannot resolve names without NSS, and crashes trying).
pub fn http_get(ip: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 80")
}
