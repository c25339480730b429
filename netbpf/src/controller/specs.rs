//! What front-ends ask the controller for, already parsed and checked for form (the API's
//! request bodies are turned into these in `api/`); what needs the state is checked here.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use ipnet::Ipv4Net;

use crate::{macvlan, overlay, publish::PortSpec, state::ParentRecord};

/// `network create`.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    pub name: String,
    /// The id to give it: a front-end's own (Docker's network id); a new one if `None`.
    pub id: Option<String>,
    pub driver: DriverSpec,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
}

/// The driver of a new network and its options.
#[derive(Debug, Clone)]
pub enum DriverSpec {
    Bridge,
    /// Defined in the cluster store; `vni: None` takes the next free one.
    Overlay {
        vni: Option<u32>,
        port: u16,
    },
    /// macvlan or ipvlan on a parent interface.
    Direct {
        driver: String,
        parent: ParentRecord,
    },
}

impl DriverSpec {
    /// The driver named `driver` (`bridge` if none) with its `-o` options, as both the CLI
    /// and Docker's `-o netbpf.driver=…` ask for it; the error is the one-line message.
    pub fn parse(driver: Option<&str>, options: &BTreeMap<String, String>) -> Result<Self, String> {
        Ok(match driver.unwrap_or("bridge") {
            "bridge" if options.is_empty() => DriverSpec::Bridge,
            "bridge" => return Err("bridge networks take no -o options".into()),
            "overlay" => {
                let (vni, port) = overlay::parse_options(options)?;
                DriverSpec::Overlay { vni, port }
            }
            driver if macvlan::DRIVERS.contains(&driver) => DriverSpec::Direct {
                driver: driver.to_owned(),
                parent: macvlan::parse_options(driver, options).map_err(|e| e.to_string())?,
            },
            other => {
                return Err(format!(
                    "driver {other:?} is not supported: use bridge, macvlan, ipvlan or overlay"
                ));
            }
        })
    }
}

/// `run` (create and start).
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub cmd: Vec<String>,
    /// `bridge` (default), a network, `host`, `none` or `container:NAME`.
    pub network: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub auto_remove: bool,
    pub ports: Vec<PortSpec>,
    pub aliases: Vec<String>,
    /// `--link` as (container, alias).
    pub links: Vec<(String, String)>,
    pub dns: Vec<IpAddr>,
    pub dns_search: Vec<String>,
}

/// Where an attached container's namespace is.
#[derive(Debug, Clone)]
pub enum NetnsSource {
    /// The namespace of this process, watched until it exits.
    Pid(i32),
    /// A namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    Path(PathBuf),
}

/// `attach`: wire a namespace someone else made.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    pub name: String,
    pub netns: NetnsSource,
    pub network: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub ports: Vec<PortSpec>,
    /// The interface name in the namespace (a CNI runtime's); `eth0` otherwise.
    pub ifname: Option<String>,
    /// Names for the embedded DNS on the network.
    pub aliases: Vec<String>,
    /// Set by the CNI front-end: the runtime's names for this attachment.
    pub cni: Option<crate::state::CniKey>,
}

/// `network connect`.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub container: String,
    pub ip: Option<Ipv4Addr>,
    pub aliases: Vec<String>,
}
