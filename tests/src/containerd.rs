//! [`Containerd`]: a real containerd (Debian's) for one test, in the test host's network
//! namespace, and `ctr` run where `/opt/cni/bin` and `/etc/cni/net.d` — the directories
//! `ctr run --cni` always reads — are the test's own (a private mount namespace per call),
//! as is `/run/containerd`, where ctr and containerd meet at the task's fifos.

use std::{
    path::PathBuf,
    process::{Child, Command},
};

use crate::{Run, TestHost, host::netbpf_bin, must};

/// The image `ctr` runs: the busybox rootfs of [`crate::image`].
pub const IMAGE: &str = "docker.io/library/bb:latest";

pub struct Containerd {
    dir: PathBuf,
    host_ns: String,
    child: Child,
}

impl Containerd {
    /// Starts containerd for `host` with a CNI config for netbpf's network `network` (the
    /// only one in its `net.d`), and imports [`IMAGE`] serving `page`.
    pub fn start(host: &TestHost, network: &str, page: &str) -> Self {
        let dir = host.dir.join("containerd");
        for sub in ["root", "state", "run", "opt", "cni-bin", "net.d"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(netbpf_bin(), dir.join("cni-bin/netbpf")).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{"type": "netbpf", "network": network, "socket": host.socket}],
        });
        std::fs::write(dir.join("net.d/10-netbpf.conflist"), conflist.to_string()).unwrap();
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        // Mount points made once on the machine; each test's processes see their own dirs.
        for point in ["/run/containerd", "/opt/cni/bin", "/etc/cni/net.d"] {
            std::fs::create_dir_all(point).unwrap();
        }
        let script = format!(
            "mount --bind {d}/run /run/containerd && exec nsenter --net=/run/netns/{ns} \
             containerd --config {d}/config.toml",
            ns = host.host_ns,
        );
        let child = crate::spawn_with_private_mounts(&script, &dir.join("containerd.log"));
        let containerd = Self {
            dir,
            host_ns: host.host_ns.clone(),
            child,
        };
        // (Its log is printed when the test fails.)
        crate::eventually(30, "containerd to answer", || {
            containerd.ctr(&["version"]).code == 0
        });
        let tar = crate::image::busybox_oci(&host.dir, page, IMAGE);
        let imported = containerd.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            tar.to_str().unwrap(),
        ]);
        assert_eq!(imported.code, 0, "ctr images import: {}", imported.stderr);
        containerd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd, with the test's CNI directories.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.display();
        let script = format!(
            "mount --bind {d}/cni-bin /opt/cni/bin && mount --bind {d}/net.d /etc/cni/net.d \
             && mount --bind {d}/run /run/containerd && exec nsenter --net=/run/netns/{ns} ctr --address {d}/c.sock \"$@\"",
            ns = self.host_ns,
        );
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .args(args);
        command
    }

    pub fn ctr(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("ctr");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.ctr(&["tasks", "ls", "-q"]).stdout;
        for task in tasks.lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", task]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // containerd's own group (its shims) goes with it.
        let _ = Command::new("pkill")
            .args(["-f", &format!("containerd-shim.*{}", self.dir.display())])
            .status();
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log());
        }
        let _ = must(
            "sh",
            &[
                "-c",
                &format!(
                    "umount -R {d}/state {d}/root 2>/dev/null; true",
                    d = self.dir.display()
                ),
            ],
        );
    }
}
