//! [`NarrowPath`]: a client beyond a router whose link has a smaller MTU, as the internet
//! often is, for path-MTU discovery through netbpf's NAT.

use crate::{TestHost, must};

/// `client` (198.51.100.2, MTU 1500) behind router `router`, joined to the host's `outside`
/// namespace by a link of MTU 1400 (192.0.2.0/30). Packets of 1500 bytes between the host
/// and the client make `outside` (towards the client) or `router` (towards the host) send
/// "fragmentation needed". Namespaces removed on drop.
pub struct NarrowPath {
    pub router: String,
    pub client: String,
}

pub const CLIENT_IP: &str = "198.51.100.2";

impl NarrowPath {
    pub fn new(host: &TestHost) -> Self {
        let path = Self {
            router: format!("{}-rt", host.id),
            client: format!("{}-cl", host.id),
        };
        for ns in [&path.router, &path.client] {
            must("ip", &["netns", "add", ns]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let (out, rt, cl) = (
            host.outside_ns.as_str(),
            path.router.as_str(),
            path.client.as_str(),
        );
        let ip = |ns: &str, args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend(args);
            must("ip", &all);
        };
        ip(
            out,
            &[
                "link", "add", "nar0", "mtu", "1400", "type", "veth", "peer", "name", "nar0",
                "netns", rt,
            ],
        );
        ip(rt, &["link", "set", "nar0", "mtu", "1400"]);
        ip(
            rt,
            &[
                "link", "add", "cli0", "type", "veth", "peer", "name", "eth0", "netns", cl,
            ],
        );
        for (ns, addr, dev) in [
            (out, "192.0.2.1/30", "nar0"),
            (rt, "192.0.2.2/30", "nar0"),
            (rt, "198.51.100.1/24", "cli0"),
            (cl, "198.51.100.2/24", "eth0"),
        ] {
            ip(ns, &["addr", "add", addr, "dev", dev]);
            ip(ns, &["link", "set", dev, "up"]);
        }
        ip(
            out,
            &["route", "add", "198.51.100.0/24", "via", "192.0.2.2"],
        );
        ip(rt, &["route", "add", "default", "via", "192.0.2.1"]);
        ip(cl, &["route", "add", "default", "via", "198.51.100.1"]);
        for ns in [out, rt] {
            must(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ],
            );
        }
        path
    }

    /// A command in the client's namespace.
    pub fn client(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.client, program])
            .args(args);
        command
    }
}

impl Drop for NarrowPath {
    fn drop(&mut self) {
        for ns in [&self.router, &self.client] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}
