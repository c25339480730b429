//! Published ports: parsing `-p` specs, choosing host ports, holding each host port so no
//! host process can take it while it is published, and the map entries that translate it
//! ([`Ports`], the service).
//!
//! Holding a port is a bound, never listening, socket in the daemon: a host process that
//! tries to bind the port gets EADDRINUSE, as with Docker's reservation, but no process and
//! no proxy carries traffic. Packets never reach the socket: BPF translates them first.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::OwnedFd,
};

use netbpf_common::{IpAddrKey, PUBLISHED_FLAG_NO_XDP, PublishedKey, PublishedTarget};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Datapath, DatapathError},
    state::EndpointRecord,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => netbpf_common::PROTO_TCP,
            Proto::Udp => netbpf_common::PROTO_UDP,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `-p` argument as given: `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: Ipv4Addr,
    /// `None`: any free port from the ephemeral range.
    pub host_ports: Option<(u16, u16)>,
    pub container_ports: (u16, u16),
    pub proto: Proto,
}

/// One published port while its container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for PublishedPort {
    /// As `docker port` prints it: `80/tcp -> 0.0.0.0:5050`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            host_ip,
            host_port,
            container_port,
            proto,
        } = self;
        write!(
            f,
            "{container_port}/{} -> {host_ip}:{host_port}",
            proto.name()
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error(
        "invalid port spec {spec:?}: {why} (use [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp])"
    )]
    Invalid { spec: String, why: String },
    #[error("port {0} is already published by container {1}")]
    Published(String, String),
    #[error("port {0} is already in use on the host")]
    InUse(String),
    #[error("no free host port left for {0}")]
    Exhausted(String),
}

fn invalid(spec: &str, why: impl Into<String>) -> PublishError {
    PublishError::Invalid {
        spec: spec.to_owned(),
        why: why.into(),
    }
}

fn parse_range(spec: &str, text: &str) -> Result<(u16, u16), PublishError> {
    let port = |p: &str| -> Result<u16, PublishError> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid(spec, format!("{p:?} is not a port (1-65535)"))),
            Ok(n) => Ok(n),
        }
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(invalid(spec, format!("range {a}-{b} is backwards")));
            }
            Ok((a, b))
        }
        None => port(text).map(|p| (p, p)),
    }
}

impl PortSpec {
    pub fn parse(spec: &str) -> Result<Self, PublishError> {
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Proto::Tcp),
            Some((rest, "udp")) => (rest, Proto::Udp),
            Some((_, other)) => {
                return Err(invalid(
                    spec,
                    format!("protocol {other:?} is not tcp or udp"),
                ));
            }
            None => (spec, Proto::Tcp),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), Some(*h).filter(|h| !h.is_empty()), *c),
            _ => {
                return Err(invalid(
                    spec,
                    "too many ':' (IPv6 host addresses are not supported yet)",
                ));
            }
        };
        let host_ip = match ip {
            None | Some("") => Ipv4Addr::UNSPECIFIED,
            Some(ip) => ip
                .parse()
                .map_err(|_| invalid(spec, format!("{ip:?} is not an IPv4 address")))?,
        };
        let container_ports = parse_range(spec, container)?;
        let host_ports = host.map(|h| parse_range(spec, h)).transpose()?;
        if let Some((a, b)) = host_ports {
            let (ca, cb) = container_ports;
            if b - a != cb - ca && ca != cb {
                return Err(invalid(spec, "host and container ranges differ in length"));
            }
        }
        Ok(Self {
            host_ip,
            host_ports,
            container_ports,
            proto,
        })
    }

    /// The (container port, candidate host ports) pairs this spec asks for. A host range
    /// with a single container port means "one free port from that range", as on Docker.
    pub fn wanted(&self) -> Vec<(u16, Option<(u16, u16)>)> {
        let (ca, cb) = self.container_ports;
        match self.host_ports {
            None => (ca..=cb).map(|c| (c, None)).collect(),
            Some((ha, hb)) if ca == cb && ha != hb => vec![(ca, Some((ha, hb)))],
            Some((ha, _)) => (ca..=cb)
                .map(|c| (c, Some((ha + (c - ca), ha + (c - ca)))))
                .collect(),
        }
    }
}

/// Whether two host bindings collide: same port and protocol, and the same address or
/// either on all addresses.
pub fn collides(a: (Ipv4Addr, u16, Proto), b: (Ipv4Addr, u16, Proto)) -> bool {
    a.1 == b.1 && a.2 == b.2 && (a.0 == b.0 || a.0.is_unspecified() || b.0.is_unspecified())
}

/// Binds (without listening) a socket on the host port, so nobody else can.
pub fn reserve(ip: Ipv4Addr, port: u16, proto: Proto) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, socket};
    let ty = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let fd = socket(AddressFamily::Inet, ty, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(ip, port)),
    )?;
    Ok(fd)
}

/// The kernel's ephemeral port range in the daemon's namespace.
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// Picks host ports for `spec` and reserves them. `taken` lists bindings already published
/// (with their owner); on error nothing stays reserved.
pub fn allocate(
    spec: &PortSpec,
    taken: &[(PublishedPort, String)],
    ephemeral: (u16, u16),
) -> Result<Vec<(PublishedPort, OwnedFd)>, PublishError> {
    let mut out: Vec<(PublishedPort, OwnedFd)> = vec![];
    let mut used: BTreeSet<(Ipv4Addr, u16, Proto)> = BTreeSet::new();
    for (container_port, candidates) in spec.wanted() {
        let label = |port: u16| format!("{}:{port}/{}", spec.host_ip, spec.proto.name());
        let (lo, hi, explicit) = match candidates {
            Some((a, b)) => (a, b, a == b),
            None => (ephemeral.0, ephemeral.1, false),
        };
        // Start somewhere in the range so random ports differ from run to run.
        let span = u32::from(hi - lo) + 1;
        let start = if explicit {
            0
        } else {
            std::process::id().wrapping_mul(7919) % span
        };
        let mut chosen = None;
        let mut last_error = None;
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            let me = (spec.host_ip, port, spec.proto);
            if let Some((_, owner)) = taken
                .iter()
                .find(|(p, _)| collides((p.host_ip, p.host_port, p.proto), me))
            {
                last_error = Some(PublishError::Published(label(port), owner.clone()));
                continue;
            }
            if used.iter().any(|u| collides(*u, me)) {
                continue;
            }
            match reserve(spec.host_ip, port, spec.proto) {
                Ok(fd) => {
                    chosen = Some((port, fd));
                    break;
                }
                Err(_) => last_error = Some(PublishError::InUse(label(port))),
            }
        }
        let Some((host_port, fd)) = chosen else {
            return Err(if explicit {
                last_error.unwrap_or(PublishError::InUse(label(lo)))
            } else {
                PublishError::Exhausted(format!("{container_port}/{}", spec.proto.name()))
            });
        };
        used.insert((spec.host_ip, host_port, spec.proto));
        let port = PublishedPort {
            host_ip: spec.host_ip,
            host_port,
            container_port,
            proto: spec.proto,
        };
        out.push((port, fd));
    }
    Ok(out)
}

/// The published-ports service: the sockets holding host ports, and the `PUBLISHED` map
/// entries that send each port's traffic to its container.
#[derive(Default)]
pub struct Ports {
    /// Bound sockets holding published host ports against host processes.
    reservations: BTreeMap<(Ipv4Addr, u16, Proto), OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

impl Ports {
    /// Publishes `specs` to `target`: host ports chosen and (with `hold`) held, map entries
    /// written. All or nothing. `taken` lists the ports other containers publish, with
    /// their names. Without `hold` a port is only checked free: a CNI runtime holds its
    /// containers' host ports itself (Podman's conmon binds them after `ADD`).
    pub fn publish(
        &mut self,
        datapath: &mut Datapath,
        specs: &[PortSpec],
        target: &EndpointRecord,
        taken: &[(PublishedPort, String)],
        owner: &str,
        hold: bool,
    ) -> Result<Vec<PublishedPort>, PortsError> {
        let ephemeral = ephemeral_range();
        let mut done: Vec<PublishedPort> = vec![];
        for spec in specs {
            let mut taken = taken.to_vec();
            taken.extend(done.iter().map(|p| (*p, owner.to_owned())));
            let allocated = match allocate(spec, &taken, ephemeral) {
                Ok(allocated) => allocated,
                Err(e) => {
                    self.unpublish(datapath, &done);
                    return Err(e.into());
                }
            };
            for (port, fd) in allocated {
                if hold {
                    self.reservations
                        .insert((port.host_ip, port.host_port, port.proto), fd);
                }
                done.push(port);
                let entry = (published_key(&port), published_target(target, &port));
                if let Err(e) = datapath.set_published(entry.0, entry.1) {
                    self.unpublish(datapath, &done);
                    return Err(e.into());
                }
            }
        }
        Ok(done)
    }

    /// Takes the ports out of the map and lets go of their host ports.
    pub fn unpublish(&mut self, datapath: &mut Datapath, ports: &[PublishedPort]) {
        for port in ports {
            datapath.remove_published(&published_key(port));
            self.reservations
                .remove(&(port.host_ip, port.host_port, port.proto));
        }
    }

    /// After a restart: holds the recorded ports' host ports again (the map entries were
    /// pinned and never went away).
    pub fn restore(&mut self, ports: &[PublishedPort]) {
        for port in ports {
            match reserve(port.host_ip, port.host_port, port.proto) {
                Ok(fd) => {
                    self.reservations
                        .insert((port.host_ip, port.host_port, port.proto), fd);
                }
                Err(error) => {
                    tracing::warn!(%error, port = %port, "cannot hold published port again")
                }
            }
        }
    }

    /// Makes `PUBLISHED` hold exactly `wanted`: each port with the endpoint it leads to.
    pub fn sync<'a>(
        datapath: &mut Datapath,
        wanted: impl IntoIterator<Item = (&'a PublishedPort, &'a EndpointRecord)>,
    ) -> Result<(), DatapathError> {
        let wanted: std::collections::HashMap<PublishedKey, PublishedTarget> = wanted
            .into_iter()
            .map(|(port, ep)| (published_key(port), published_target(ep, port)))
            .collect();
        for key in datapath.published_keys() {
            if !wanted.contains_key(&key) {
                datapath.remove_published(&key);
            }
        }
        for (key, target) in wanted {
            datapath.set_published(key, target)?;
        }
        Ok(())
    }
}

/// The map key of a published port.
pub fn published_key(port: &PublishedPort) -> PublishedKey {
    PublishedKey {
        addr: IpAddrKey::from_v4(port.host_ip.octets()),
        port: port.host_port,
        proto: port.proto.number(),
        _pad: 0,
    }
}

/// Where a published port's packets go: the endpoint's address, MAC and host veth.
pub fn published_target(ep: &EndpointRecord, port: &PublishedPort) -> PublishedTarget {
    PublishedTarget {
        addr: IpAddrKey::from_v4(ep.ip.octets()),
        port: port.container_port,
        _pad: [0; 2],
        host_ifindex: ep.host_ifindex,
        mac: ep.mac,
        flags: if ep.no_xdp_receiver {
            PUBLISHED_FLAG_NO_XDP
        } else {
            0
        },
        _pad2: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap()
    }

    #[test]
    fn docker_forms_parse() {
        let any = Ipv4Addr::UNSPECIFIED;
        assert_eq!(
            spec("80"),
            PortSpec {
                host_ip: any,
                host_ports: None,
                container_ports: (80, 80),
                proto: Proto::Tcp
            }
        );
        assert_eq!(spec("5050:80").host_ports, Some((5050, 5050)));
        assert_eq!(spec("127.0.0.1:8080:80").host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(spec("127.0.0.1::80").host_ports, None);
        assert_eq!(spec("53:53/udp").proto, Proto::Udp);
        let range = spec("9000-9002:9100-9102");
        assert_eq!(
            range.wanted(),
            vec![
                (9100, Some((9000, 9000))),
                (9101, Some((9001, 9001))),
                (9102, Some((9002, 9002)))
            ]
        );
        assert_eq!(
            spec("8000-8010:80").wanted(),
            vec![(80, Some((8000, 8010)))]
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "",
            "0",
            "70000",
            "80/sctp",
            "a:80",
            "1.2.3:80:80",
            "9000-9001:80-82",
            "90-80",
            "::1:80:80",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn collisions_respect_addresses() {
        let any = Ipv4Addr::UNSPECIFIED;
        let lo = Ipv4Addr::LOCALHOST;
        let other = Ipv4Addr::new(10, 0, 0, 1);
        assert!(collides((any, 80, Proto::Tcp), (lo, 80, Proto::Tcp)));
        assert!(!collides((other, 80, Proto::Tcp), (lo, 80, Proto::Tcp)));
        assert!(!collides((any, 80, Proto::Tcp), (any, 80, Proto::Udp)));
    }

    #[test]
    fn printed_like_docker_port() {
        let p = PublishedPort {
            host_ip: Ipv4Addr::UNSPECIFIED,
            host_port: 5050,
            container_port: 80,
            proto: Proto::Tcp,
        };
        assert_eq!(p.to_string(), "80/tcp -> 0.0.0.0:5050");
    }
}
