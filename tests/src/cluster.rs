//! Several hosts on one segment: [`Underlay`], the switch their second NICs plug into, and
//! [`Etcd`], a real cluster store on it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{TestHost, eventually, must, pki::Pki, unique_id};

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
    /// A TLS store's certificates (it asks clients for theirs: `--client-cert-auth`).
    pub pki: Option<Pki>,
    /// This member's name and every member's, as etcd's `--initial-cluster` lists them.
    name: String,
    members: String,
}

impl Etcd {
    /// etcd listening on `addr` (an address of the underlay's subnet, without prefix).
    pub fn start(underlay: &Underlay, addr: &str) -> Self {
        Self::start_with(underlay, addr, false)
    }

    /// As [`Etcd::start`], serving clients over TLS only and asking them for a certificate
    /// signed by its CA.
    pub fn start_tls(underlay: &Underlay, addr: &str) -> Self {
        Self::start_with(underlay, addr, true)
    }

    fn start_with(underlay: &Underlay, addr: &str, tls: bool) -> Self {
        let mut etcd = Self::member(underlay, "etcd", addr, "test", "");
        if tls {
            etcd.pki = Some(Pki::new(&etcd.dir.join("pki"), addr));
        }
        etcd.resume();
        etcd
    }

    /// An etcd cluster of one member at each of `addrs` (plain HTTP), all up.
    pub fn start_members(underlay: &Underlay, addrs: &[&str]) -> Vec<Self> {
        let name = |i: usize| format!("m{i}");
        let members = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}=http://{addr}:2380", name(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster: Vec<Self> = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| Self::member(underlay, &format!("etcd{i}"), addr, &name(i), &members))
            .collect();
        // (A member answers only once a quorum is up: start them all, then wait.)
        cluster.iter_mut().for_each(Self::spawn);
        cluster.iter().for_each(Self::wait_healthy);
        cluster
    }

    /// A member `name` at `addr` in a station of its own, not started; `members` as etcd's
    /// `--initial-cluster` takes it (empty: this member alone).
    fn member(underlay: &Underlay, station: &str, addr: &str, name: &str, members: &str) -> Self {
        let ns = underlay.station(station, &format!("{addr}/24"));
        let dir = std::env::temp_dir().join(format!("netbpf-test-{ns}"));
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let members = match members {
            "" => format!("{name}=http://{addr}:2380"),
            all => all.to_owned(),
        };
        Self {
            ns,
            addr: addr.to_owned(),
            pki: None,
            dir,
            child: None,
            name: name.to_owned(),
            members,
        }
    }

    /// Every member's client URL, as one `--cluster-store` value.
    pub fn cluster_url(members: &[Self]) -> String {
        let addrs: Vec<String> = members.iter().map(|m| format!("{}:2379", m.addr)).collect();
        format!("etcd://{}", addrs.join(","))
    }

    pub fn url(&self) -> String {
        match self.pki {
            Some(_) => format!("etcds://{}:2379", self.addr),
            None => format!("etcd://{}:2379", self.addr),
        }
    }

    fn client_url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:2379", self.addr)
    }

    /// `--cacert`, `--cert`, `--key` for a TLS store (curl and etcdctl spell them alike).
    fn client_certificate_args(&self) -> Vec<String> {
        match &self.pki {
            Some(pki) => vec![
                "--cacert".into(),
                pki.ca(),
                "--cert".into(),
                pki.file("client.pem"),
                "--key".into(),
                pki.file("client.key"),
            ],
            None => vec![],
        }
    }

    /// `curl` in the store's namespace, with the client certificate a TLS store wants.
    fn curl(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.ns)).args([
            "curl",
            "-s",
            "--max-time",
            "2",
        ]);
        command.args(self.client_certificate_args());
        command.args(args);
        command
    }

    /// `etcdctl ARGS` against the store, as its administrator would run it (with the client
    /// certificate, and `--user` when given in `args`); what it printed.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.ns)).args([
            "etcdctl",
            "--endpoints",
            &self.client_url(),
        ]);
        command.args(self.client_certificate_args());
        command
            .args(args)
            .output()
            .expect("etcdctl (Debian's etcd-client) is needed: run cargo xtask test")
    }

    /// Starts (or restarts, with the same data) the server and waits until it answers.
    pub fn resume(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn spawn(&mut self) {
        let client = self.client_url();
        let peer = format!("http://{}:2380", self.addr);
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ]);
        if let Some(pki) = &self.pki {
            command
                .args(["--cert-file", &pki.file("server.pem")])
                .args(["--key-file", &pki.file("server.key")])
                .args(["--trusted-ca-file", &pki.ca(), "--client-cert-auth"]);
        }
        let child = command
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.members])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("etcd (Debian's etcd-server) is needed: run cargo xtask test");
        self.child = Some(child);
    }

    fn wait_healthy(&self) {
        let client = self.client_url();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = self
                .curl(&[&format!("{client}/health")])
                .output()
                .expect("curl");
            if String::from_utf8_lossy(&health.stdout).contains("true") {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cuts the server off the underlay without a word (its link down: no RST, no FIN), as
    /// a partition does; [`Etcd::heal`] undoes it.
    pub fn partition(&self) {
        must("ip", &["-n", &self.ns, "link", "set", "eth0", "down"]);
    }

    pub fn heal(&self) {
        must("ip", &["-n", &self.ns, "link", "set", "eth0", "up"]);
    }

    /// Writes `value` at `key` as any etcd client could (the v3 JSON gateway), bypassing
    /// netbpf: for records netbpf would never write.
    pub fn put_raw(&self, key: &str, value: &str) {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(key), b64(value));
        let url = format!("{}/v3/kv/put", self.client_url());
        let out = self
            .curl(&["-f", "-X", "POST", "-d", &body, &url])
            .output()
            .expect("curl");
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains("revision"), "etcd put: {out}");
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

/// A host on the underlay at `10.0.0.<n>`, its daemon using `etcd` as cluster store.
pub fn host_on(underlay: &Underlay, etcd: &Etcd, n: u8) -> TestHost {
    host_with(underlay, etcd, n, &[])
}

/// As `host_on`, with more daemon flags.
pub fn host_with(underlay: &Underlay, etcd: &Etcd, n: u8, extra: &[&str]) -> TestHost {
    let mut host = TestHost::bare();
    let mut args = cluster_args(underlay, etcd, &host, n);
    args.extend(extra.iter().map(|a| a.to_string()));
    host.start_daemon(&args.iter().map(String::as_str).collect::<Vec<_>>());
    host
}

/// Plugs `host` (not started yet) into the underlay as `eth1` with VTEP `10.0.0.<n>` and
/// returns the daemon flags that put it on the cluster.
pub fn cluster_args(underlay: &Underlay, etcd: &Etcd, host: &TestHost, n: u8) -> Vec<String> {
    store_args(underlay, &etcd.url(), host, n)
}

/// As [`cluster_args`], for the store at `url` (e.g. [`Etcd::cluster_url`]).
pub fn store_args(underlay: &Underlay, url: &str, host: &TestHost, n: u8) -> Vec<String> {
    underlay.plug(host, "eth1");
    let vtep = format!("10.0.0.{n}");
    must(
        "ip",
        &[
            "-n",
            &host.host_ns,
            "addr",
            "add",
            &format!("{vtep}/24"),
            "dev",
            "eth1",
        ],
    );
    vec![
        "--cluster-store".into(),
        url.to_owned(),
        "--vtep-addr".into(),
        vtep,
    ]
}

/// The blocks of `network` as `host` sees them: (block, VTEP) pairs, sorted.
pub fn peers(host: &TestHost, network: &str) -> Vec<(String, String)> {
    let run = host.netbpf(&["network", "inspect", network]);
    if run.code != 0 {
        return vec![];
    }
    let view: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let mut peers: Vec<(String, String)> = view[0]["Peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["Block"].as_str().unwrap().to_owned(),
                        p["IP"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    peers.sort();
    peers
}

/// Creates overlay network `ovl` on `subnet` from `hosts[0]` (with `opts`, e.g. `vni=77`)
/// and waits until every one of `hosts` holds a block of it.
pub fn create_overlay(hosts: &[&TestHost], subnet: &str, opts: &[&str]) {
    let mut args = vec!["network", "create", "-d", "overlay", "--subnet", subnet];
    for opt in opts {
        args.extend(["-o", opt]);
    }
    args.push("ovl");
    hosts[0].ok(&args);
    for host in hosts {
        eventually(10, "every host to hold a block", || {
            peers(host, "ovl").len() == hosts.len()
        });
    }
}
