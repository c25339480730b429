//! The uplink service: NAT between containers and the outside (published ports from
//! outside, masquerade out), its tcx programs and optional XDP stage on the uplink, the
//! socket hooks for host processes, and the host addresses the programs count as "this host".

use std::{fs::File, net::Ipv4Addr, path::Path};

use netbpf_common::{IpAddrKey, NatConfig};

use crate::{
    datapath::{Datapath, DatapathError, TrackedFlows},
    netlink::{Netlink, NetlinkError},
    netns,
    state::EndpointRecord,
    sysctl::{self, SysctlError},
};

/// The source ports masquerade gives containers' flows on the uplink address: above the
/// kernel's default ephemeral range (32768–60999) and below the embedded DNS's port, and
/// reserved (`ip_local_reserved_ports`) so that no host socket binding port 0 or connecting
/// unbound gets one. A container's flow can then never take the 4-tuple of a host
/// connection. 4000 ports for each remote address, port and protocol.
pub const MASQUERADE_PORTS: (u16, u16) = (61000, 64999);
const _: () = assert!(MASQUERADE_PORTS.1 < netbpf_common::DNS_SERVER_PORT);

/// Whether published ports from outside get the XDP stage on the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChoice {
    /// Driver-mode XDP if the uplink supports it and is not a veth, else tcx only.
    Auto,
    /// Driver-mode XDP whenever the driver supports it (a veth uplink's peer must then
    /// send complete checksums).
    Native,
    /// tcx only.
    Off,
}

/// How published ports from outside are translated on the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMode {
    /// tcx programs only.
    Tc,
    /// An XDP stage in front of the tcx programs.
    Xdp,
}

impl NatMode {
    /// As `info` reports it.
    pub fn name(self) -> &'static str {
        match self {
            NatMode::Tc => "tc",
            NatMode::Xdp => "xdp",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("reading this namespace's cookie: {0}")]
    Cookie(std::io::Error),
    #[error("reserving the masquerade ports: {0}")]
    Reserve(#[from] SysctlError),
}

pub struct Uplink {
    /// The uplink's name, if there is one.
    name: Option<String>,
    /// What the programs were told (kept to change the masquerade address alone).
    nat_config: NatConfig,
    /// Set once the uplink programs are attached.
    mode: Option<NatMode>,
    /// Tracked NAT flows at the last expiry pass.
    tracked_flows: TrackedFlows,
}

impl Uplink {
    /// Attaches the socket hooks to `cgroup` and the uplink programs to `uplink`, and fills
    /// the NAT settings.
    pub fn start(
        datapath: &mut Datapath,
        uplink: Option<&str>,
        xdp: XdpChoice,
        cgroup: &Path,
    ) -> Result<Self, UplinkError> {
        let mut this = Self {
            name: uplink.map(str::to_owned),
            nat_config: NatConfig::default(),
            mode: None,
            tracked_flows: TrackedFlows::default(),
        };
        this.refresh_host_addrs(datapath)?;
        datapath.attach_cgroup(cgroup)?;
        let (port_min, port_max) = MASQUERADE_PORTS;
        sysctl::reserve_local_ports(port_min, port_max)?;
        let mut config = NatConfig {
            port_min,
            port_max,
            netns_cookie: netns::current_cookie().map_err(UplinkError::Cookie)?,
            ..NatConfig::default()
        };
        if let Some(uplink) = uplink {
            let (link, addr) = Netlink::run(None, |nl| {
                let link = nl.link(uplink)?;
                let addr = nl.addresses_of(link.index)?.into_iter().next();
                Ok((link, addr))
            })?;
            config.uplink_ifindex = link.index;
            match addr {
                Some(addr) => config.uplink_addr = IpAddrKey::from_v4(addr.octets()),
                None => tracing::warn!(uplink, "uplink has no IPv4 address: no masquerade"),
            }
            datapath.attach_uplink(uplink)?;
            let want_xdp = match xdp {
                XdpChoice::Auto => !link.is_veth,
                XdpChoice::Native => true,
                XdpChoice::Off => false,
            };
            let mut mode = NatMode::Tc;
            if want_xdp {
                match datapath.attach_uplink_xdp(uplink, link.index) {
                    Ok(()) => mode = NatMode::Xdp,
                    Err(error) => {
                        tracing::warn!(%error, uplink, "native XDP not available; using tc only")
                    }
                }
            }
            if mode == NatMode::Tc {
                datapath.remove_uplink_xdp_except(None);
            }
            this.mode = Some(mode);
            tracing::info!(
                uplink,
                mode = mode.name(),
                "published ports and masquerade attached to the uplink"
            );
        }
        datapath.set_nat_config(config)?;
        this.nat_config = config;
        Ok(this)
    }

    /// After an address change (a DHCP renew, an operator's `ip addr`): the host-address
    /// map again, and masquerade to the uplink's address as it is now. Returns whether
    /// the masquerade address changed.
    pub fn follow_addresses(&mut self, datapath: &mut Datapath) -> Result<bool, UplinkError> {
        self.refresh_host_addrs(datapath)?;
        let Some(uplink) = &self.name else {
            return Ok(false);
        };
        let addr = Netlink::run(None, |nl| {
            let link = nl.link(uplink)?;
            Ok(nl.addresses_of(link.index)?.into_iter().next())
        })?;
        let key = addr.map_or_else(IpAddrKey::default, |a| IpAddrKey::from_v4(a.octets()));
        if key == self.nat_config.uplink_addr {
            return Ok(false);
        }
        match addr {
            Some(addr) => {
                tracing::info!(uplink, %addr, "uplink address changed: masquerade follows")
            }
            None => tracing::warn!(uplink, "uplink lost its IPv4 address: no masquerade"),
        }
        self.nat_config.uplink_addr = key;
        datapath.set_nat_config(self.nat_config)?;
        Ok(true)
    }

    pub fn mode(&self) -> Option<NatMode> {
        self.mode
    }

    pub fn tracked_flows(&self) -> TrackedFlows {
        self.tracked_flows
    }

    /// Whether container interfaces need the XDP program that lets them receive frames the
    /// uplink's XDP stage redirects.
    pub fn xdp_active(&self) -> bool {
        self.mode == Some(NatMode::Xdp)
    }

    /// Tells the programs which addresses are the host's own (for ports on 0.0.0.0).
    /// Loopback addresses are left out: a packet from the LAN or a container with a 127/8
    /// destination is never translated (moby#45610); localhost publishing is the socket
    /// hooks' job alone.
    pub fn refresh_host_addrs(&self, datapath: &mut Datapath) -> Result<(), UplinkError> {
        let addrs: Vec<Ipv4Addr> = Netlink::run(None, |nl| nl.addresses())?
            .into_iter()
            .filter_map(|a| match a.addr() {
                std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
                _ => None,
            })
            .collect();
        datapath.set_host_addrs(&addrs)?;
        Ok(())
    }

    /// Gives a new endpoint the receiving XDP program when the XDP stage is on.
    pub fn attach_endpoint(
        &self,
        datapath: &mut Datapath,
        ns: &File,
        ep: &EndpointRecord,
    ) -> Result<(), UplinkError> {
        if self.xdp_active() {
            let ifindex = Netlink::run(Some(ns), |nl| nl.link(&ep.ifname))?.index;
            datapath.attach_container_xdp(ns, ifindex, &ep.host_veth)?;
        }
        Ok(())
    }

    /// With the XDP stage on, every running endpoint gets the receiving XDP program (a
    /// restart swaps in the new one); without it, none keeps one.
    pub fn sync_endpoints<'a>(
        &self,
        datapath: &mut Datapath,
        running: impl IntoIterator<Item = (File, Vec<&'a EndpointRecord>)>,
    ) {
        for (ns, endpoints) in running {
            for ep in endpoints {
                if !self.xdp_active() {
                    datapath.remove_container_xdp(&ep.host_veth);
                } else if let Err(error) = self.attach_endpoint(datapath, &ns, ep) {
                    tracing::warn!(%error, veth = ep.host_veth, "container XDP");
                }
            }
        }
    }

    /// Expires idle NAT flows; the daemon calls it periodically.
    /// What the last flow-expiry sweep left (the daemon sweeps off the lock).
    pub fn set_tracked_flows(&mut self, flows: TrackedFlows) {
        self.tracked_flows = flows;
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
