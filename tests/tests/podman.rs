//! A real Podman 4 (Debian's, with its CNI backend) running containers on a netbpf network
//! through the CNI plugin: published ports in BPF, names from netbpf's embedded DNS, and
//! nothing left behind. No registry: the image is a busybox rootfs imported by hand.

use std::{path::Path, process::Command};

use netbpf_tests::{TestHost, must, run_ok};

/// Podman with its own storage, run root, config and CNI dirs under `dir`, in the test
/// host's network namespace (where the daemon runs and the CNI plugin is called).
struct Podman {
    host_ns: String,
    dir: std::path::PathBuf,
}

impl Podman {
    fn new(host: &TestHost, network: &str) -> Self {
        let dir = host.dir.join("podman");
        for sub in ["cni-bin", "net.d", "st", "rr", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let netbpf = std::env::var("NETBPF_BIN")
            .unwrap_or_else(|_| format!("{}/../target/debug/netbpf", env!("CARGO_MANIFEST_DIR")));
        std::os::unix::fs::symlink(&netbpf, dir.join("cni-bin/netbpf")).unwrap();
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/cni-bin\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{d}/net.d\"\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{d}/events.log\"\nruntime = \"runc\"\ntmp_dir = \"{d}/tmp\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": network,
            "plugins": [{
                "type": "netbpf",
                "network": network,
                "socket": host.socket,
                "capabilities": {"portMappings": true, "aliases": true},
            }],
        });
        std::fs::write(
            dir.join(format!("net.d/{network}.conflist")),
            conflist.to_string(),
        )
        .unwrap();
        let podman = Self {
            host_ns: host.host_ns.clone(),
            dir,
        };
        podman.import_busybox();
        podman
    }

    fn command(&self, args: &[&str]) -> Command {
        // nsenter, not `ip netns exec`: that would give Podman a mount namespace of its own,
        // and the daemon could not see the namespace mounts Podman makes under /run/netns.
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("st"))
            .arg("--runroot")
            .arg(self.dir.join("rr"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("XDG_RUNTIME_DIR", self.dir.join("rr"));
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(self.command(args))
    }

    /// `localhost/bb`: busybox-static as /bin/*, and a page for its httpd.
    fn import_busybox(&self) {
        let tar = netbpf_tests::image::busybox_tar(&self.dir, "hello from podman\n");
        self.ok(&["import", tar.to_str().unwrap(), "localhost/bb"]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "-af", "-t", "0"]).output();
        // Podman's CNI namespaces live under /run/netns as cni-*; its own rm removes them.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("st"))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn podman_runs_containers_on_a_netbpf_network() {
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is not installed: run `cargo xtask setup`"
    );
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.121.0.0/24", "nbpod"]);
    let podman = Podman::new(&host, "nbpod");
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "nbpod",
        "-p",
        "8081:80",
        "localhost/bb",
    ]
    .into_iter()
    .chain(netbpf_tests::image::HTTPD)
    .collect::<Vec<_>>());
    // The published port, from outside, through netbpf's BPF DNAT (no portmap plugin).
    netbpf_tests::eventually(20, "the published port", || {
        host.answers_from_outside("http://198.18.0.2:8081/")
    });
    // By name, from another container: netbpf's embedded DNS, as the CNI result told Podman
    // (asked with busybox's own resolver: its static wget and nc cannot resolve names
    // without NSS), then the page through the fast path.
    let record = host.ok(&["ps", "-q"]);
    let web_ip = host.ip_of(record.trim(), "nbpod");
    let found = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "nbpod",
        "localhost/bb",
        "nslookup",
        "web",
    ]);
    assert!(found.contains(&format!("Address: {web_ip}")), "{found}");
    let request = netbpf_tests::image::http_get(&web_ip);
    let page = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "nbpod",
        "localhost/bb",
        "sh",
        "-c",
        &request,
    ]);
    assert!(page.contains("hello from podman"), "{page}");
    assert!(
        host.ok(&["ps"]).contains("cni-"),
        "netbpf does not show the attachment"
    );
    // No netfilter rule was needed for any of it.
    let rules = must("ip", &["netns", "exec", &host.host_ns, "iptables-save"]);
    assert!(!rules.contains("DNAT"), "{rules}");
    // rm: CNI DEL, and netbpf forgets the attachment and its port.
    podman.ok(&["rm", "-f", "-t", "0", "web"]);
    assert!(
        !host.ok(&["ps", "-a"]).contains("cni-"),
        "the attachment outlived the container"
    );
    assert!(!host.answers_from_outside("http://198.18.0.2:8081/"));
}
