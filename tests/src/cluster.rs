//! Several hosts on one segment: [`Underlay`], the switch their second NICs plug into, and
//! [`Etcd`], a real cluster store on it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{TestHost, must, unique_id};

/// A shared L2 segment between test hosts, like the switch their second NICs plug into: a
/// bridge in a namespace of its own, with one veth into each host. The bridge does no VLAN
/// filtering (the default), so tagged frames cross it as a switch trunk port would carry them. Removed on
/// drop (taking the host ends with it).
pub struct Underlay {
    pub ns: String,
    ports: AtomicU32,
    stations: std::sync::Mutex<Vec<String>>,
}

impl Underlay {
    #[expect(
        clippy::new_without_default,
        reason = "making a namespace is no default"
    )]
    pub fn new() -> Self {
        let ns = format!("{}-ul", unique_id());
        must("ip", &["netns", "add", &ns]);
        // Made before the bridge, so that a failure from here on still removes the namespace.
        let underlay = Self {
            ns,
            ports: AtomicU32::new(0),
            stations: std::sync::Mutex::new(vec![]),
        };
        must(
            "ip",
            &["-n", &underlay.ns, "link", "add", "sw", "type", "bridge"],
        );
        must("ip", &["-n", &underlay.ns, "link", "set", "sw", "up"]);
        underlay
    }

    /// Gives `host` an interface `ifname` on this segment, up, with no address.
    pub fn plug(&self, host: &TestHost, ifname: &str) {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::SeqCst));
        must(
            "ip",
            &[
                "-n",
                &self.ns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                &host.host_ns,
            ],
        );
        must(
            "ip",
            &["-n", &self.ns, "link", "set", &port, "master", "sw", "up"],
        );
        must("ip", &["-n", &host.host_ns, "link", "set", ifname, "up"]);
    }
}

impl Underlay {
    /// A namespace of its own on this segment with `addr` (CIDR) on its interface, for a
    /// service the hosts share (the cluster store). Removed with the underlay.
    pub fn station(&self, name: &str, addr: &str) -> String {
        let ns = format!("{}-{name}", self.ns);
        must("ip", &["netns", "add", &ns]);
        self.stations.lock().unwrap().push(ns.clone());
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::SeqCst));
        must(
            "ip",
            &[
                "-n", &self.ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        );
        must(
            "ip",
            &["-n", &self.ns, "link", "set", &port, "master", "sw", "up"],
        );
        must("ip", &["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }
}

/// A real etcd server (Debian's `etcd-server`) in a namespace on an underlay, with its data
/// in a directory of its own. Stop and start it to test outages; killed and removed on drop.
pub struct Etcd {
    pub ns: String,
    pub addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// etcd listening on `addr` (an address of the underlay's subnet, without prefix).
    pub fn start(underlay: &Underlay, addr: &str) -> Self {
        let ns = underlay.station("etcd", &format!("{addr}/24"));
        let dir = std::env::temp_dir().join(format!("netbpf-test-{ns}"));
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let mut etcd = Self {
            ns,
            addr: addr.to_owned(),
            dir,
            child: None,
        };
        etcd.resume();
        etcd
    }

    pub fn url(&self) -> String {
        format!("etcd://{}:2379", self.addr)
    }

    /// Starts (or restarts, with the same data) the server and waits until it answers.
    pub fn resume(&mut self) {
        let client = format!("http://{}:2379", self.addr);
        let peer = format!("http://{}:2380", self.addr);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("etcd (Debian's etcd-server) is needed: run cargo xtask test");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.ns))
                .args(["curl", "-s", "--max-time", "1", &format!("{client}/health")])
                .output()
                .expect("curl");
            if String::from_utf8_lossy(&health.stdout).contains("true") {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for ns in self.stations.lock().unwrap().iter() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
