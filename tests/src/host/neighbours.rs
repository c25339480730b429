//! What a test host can have around it besides its uplink: a second LAN it must not route
//! to, and a resolver beyond the uplink.

use std::time::Duration;

use super::{OUTSIDE_IP, TestHost};
use crate::must;

impl TestHost {
    /// A second LAN on the host: interface `lan0` with 203.0.113.1/24, leading to a
    /// namespace (returned) with 203.0.113.2 whose default route is the host — a network
    /// the host is attached to but must not route to from the uplink.
    pub fn add_lan(&mut self) -> String {
        let ns = format!("{}-lan", self.id);
        must("ip", &["netns", "add", &ns]);
        self.extra_ns.push(ns.clone());
        must(
            "ip",
            &[
                "-n",
                &self.host_ns,
                "link",
                "add",
                "lan0",
                "type",
                "veth",
                "peer",
                "name",
                "lan0",
                "netns",
                &ns,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &self.host_ns,
                "addr",
                "add",
                "203.0.113.1/24",
                "dev",
                "lan0",
            ],
        );
        must(
            "ip",
            &["-n", &ns, "addr", "add", "203.0.113.2/24", "dev", "lan0"],
        );
        for (n, ifname) in [(&self.host_ns, "lan0"), (&ns, "lan0"), (&ns, "lo")] {
            must("ip", &["-n", n, "link", "set", ifname, "up"]);
        }
        must(
            "ip",
            &["-n", &ns, "route", "add", "default", "via", "203.0.113.1"],
        );
        ns
    }

    /// An upstream resolver beyond the uplink (dnsmasq on the outside address): answers
    /// `*.outside.test` with 192.0.2.77 and NXDOMAIN else.
    pub fn start_outside_resolver(&mut self) {
        let cmd = self.outside(
            "dnsmasq",
            &[
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={OUTSIDE_IP}"),
                "--address=/outside.test/192.0.2.77",
                // No upstream of its own: everything else is NXDOMAIN, not REFUSED.
                "--address=/#/",
                "--pid-file=",
                "--user=root",
            ],
        );
        self.background(cmd);
        std::thread::sleep(Duration::from_millis(300));
    }
}
