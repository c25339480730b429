//! What tests ask a [`TestHost`] about its containers and interfaces: addresses, counters,
//! drops, MACs, links, and whether a URL answers from outside.

use std::process::Command;

use serde_json::Value;

use super::TestHost;
use crate::{must, succeeds};

impl TestHost {
    /// The first IPv4 address of a container on a network.
    pub fn ip_of(&self, container: &str, network: &str) -> String {
        let view = self.json(&["inspect", container]);
        view["Networks"][network]["IPAddress"]
            .as_str()
            .expect("IP address")
            .to_owned()
    }

    /// Whether `from` can ping `ip` (one packet, one second).
    pub fn pings(&self, from: &str, ip: &str) -> bool {
        self.netbpf(&["exec", from, "--", "ping", "-c", "1", "-W", "1", ip])
            .code
            == 0
    }

    /// Counters of one endpoint from `netbpf stats`.
    pub fn counters(&self, container: &str, network: &str) -> Value {
        let stats = self.json(&["stats", "--format", "json"]);
        stats["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["container"] == container && s["network"] == network)
            .cloned()
            .unwrap_or_else(|| panic!("no stats for {container} on {network}: {stats}"))
    }

    /// How many packets `hook` dropped for `reason`, from `netbpf stats`.
    pub fn drops(&self, hook: &str, reason: &str) -> u64 {
        let stats = self.json(&["stats", "--format", "json"]);
        stats["drops"][hook][reason].as_u64().unwrap_or(0)
    }

    /// The MAC address of `ifname` in namespace `ns`.
    pub fn mac(&self, ns: &str, ifname: &str) -> [u8; 6] {
        let out = must("ip", &["-n", ns, "-j", "link", "show", ifname]);
        let links: Value = serde_json::from_str(&out).unwrap();
        let text = links[0]["address"].as_str().expect("a MAC address");
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(part, 16).expect("hex");
        }
        mac
    }

    /// Interface names in a namespace of this host.
    pub fn links(&self, ns: &str) -> Vec<String> {
        let out = must("ip", &["-n", ns, "-j", "link", "show"]);
        let links: Value = serde_json::from_str(&out).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Whether `url` answers (2xx) to a client in the `outside` namespace within a second.
    pub fn answers_from_outside(&self, url: &str) -> bool {
        succeeds(self.outside("curl", &["-sf", "--max-time", "1", url]))
    }

    /// `program` in container `name`'s network namespace, found through the pid the state
    /// file records: works while no daemon runs.
    pub fn in_container(&self, name: &str, program: &str, args: &[&str]) -> Command {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(self.state_dir.join("state.json")).unwrap(),
        )
        .unwrap();
        let pid = state["containers"][name]["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no pid for {name}"));
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg(program)
            .args(args);
        command
    }

    /// Packets the fast path has carried, over every endpoint (`netbpf stats`).
    pub fn fast_packets(&self) -> u64 {
        let stats = self.json(&["stats", "--format", "json"]);
        stats["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("{stats}"))
            .iter()
            .filter_map(|e| e["fast_packets"].as_u64())
            .sum()
    }
}
