//! The undo list: every multi-step change records each step it completed, and on failure
//! the controller undoes them in reverse, as netavark's setup does. An operation first
//! validates everything (making no kernel object), then sets up step by step, then commits;
//! a refused or failed request leaves nothing behind.

use std::{fmt, fs::File, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;

use crate::{
    publish::PublishedPort,
    state::{EndpointRecord, NetworkRecord, ParentRecord},
};

/// One completed step, with what it takes to undo it (no lookups in a state that may have
/// changed since).
#[derive(Debug)]
pub enum Step {
    /// A network's bridge device was made.
    Bridge(NetworkRecord),
    /// A subnet entry was written to `SUBNETS`.
    Subnet(Ipv4Net),
    /// A VLAN sub-interface was made as a network's parent.
    Parent(ParentRecord),
    /// A network namespace mount was made at this path.
    Netns(PathBuf),
    /// A veth endpoint was wired (and perhaps installed in the maps) on network `index`.
    Endpoint {
        network_index: u32,
        endpoint: EndpointRecord,
    },
    /// A macvlan or ipvlan interface was made inside the namespace `ns`.
    DirectEndpoint { ns: File, ifname: String },
    /// Host ports were held and their `PUBLISHED` entries written.
    Ports(Vec<PublishedPort>),
    /// The embedded DNS was started for this container id.
    Dns(String),
    /// The namespace was exposed to `ip netns` under this container name.
    Exposed(String),
    /// A container process was started (its group is killed).
    Process { id: String, pid: i32 },
    /// A directory was made (a container's log and name files).
    Dir(PathBuf),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Bridge(n) => write!(f, "bridge {} of network {}", n.bridge, n.name),
            Step::Subnet(s) => write!(f, "subnet {s}"),
            Step::Parent(p) => write!(f, "parent interface {}", p.name),
            Step::Netns(p) => write!(f, "namespace {}", p.display()),
            Step::Endpoint { endpoint, .. } => write!(
                f,
                "endpoint {} ({}) on {}",
                endpoint.host_veth, endpoint.ip, endpoint.network
            ),
            Step::DirectEndpoint { ifname, .. } => write!(f, "interface {ifname}"),
            Step::Ports(ports) => write!(f, "{} published ports", ports.len()),
            Step::Dns(id) => write!(f, "embedded DNS of {}", &id[..id.len().min(12)]),
            Step::Exposed(name) => write!(f, "ip netns name of {name}"),
            Step::Process { pid, .. } => write!(f, "process {pid}"),
            Step::Dir(p) => write!(f, "directory {}", p.display()),
        }
    }
}

/// The steps of one operation so far.
#[derive(Debug, Default)]
#[must_use = "an undo list is either committed or rolled back"]
pub struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// The operation succeeded: nothing is to be undone.
    pub fn commit(self) {}

    /// The steps to undo, last first.
    pub fn into_reverse(self) -> impl Iterator<Item = Step> {
        self.steps.into_iter().rev()
    }

    /// The addresses of endpoints this operation made on `network_index`, which the state
    /// does not show yet (so that one operation never hands out an address twice).
    pub fn addresses_on(&self, network_index: u32) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.steps.iter().filter_map(move |s| match s {
            Step::Endpoint {
                network_index: n,
                endpoint,
            } if *n == network_index => Some(endpoint.ip),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures;

    #[test]
    fn steps_are_undone_last_first() {
        let mut undo = Undo::default();
        undo.push(Step::Netns("/run/x".into()));
        undo.push(Step::Dns("c".repeat(64)));
        undo.push(Step::Exposed("web".into()));
        let order: Vec<String> = undo.into_reverse().map(|s| s.to_string()).collect();
        assert_eq!(
            order,
            [
                "ip netns name of web",
                "embedded DNS of cccccccccccc",
                "namespace /run/x"
            ]
        );
    }

    #[test]
    fn a_committed_list_undoes_nothing_and_an_empty_one_is_fine() {
        let mut undo = Undo::default();
        undo.push(Step::Subnet("10.9.0.0/24".parse().unwrap()));
        undo.commit();
        assert_eq!(Undo::default().into_reverse().count(), 0);
    }

    #[test]
    fn endpoints_made_so_far_count_as_taken_on_their_network() {
        let c = fixtures::container(
            "a",
            "abc",
            &[("app", "10.9.0.2", &[]), ("db", "10.8.0.2", &[])],
        );
        let mut undo = Undo::default();
        for (index, endpoint) in [1, 2].into_iter().zip(c.endpoints) {
            undo.push(Step::Endpoint {
                network_index: index,
                endpoint,
            });
        }
        let on_app: Vec<Ipv4Addr> = undo.addresses_on(1).collect();
        assert_eq!(on_app, ["10.9.0.2".parse::<Ipv4Addr>().unwrap()]);
    }
}
