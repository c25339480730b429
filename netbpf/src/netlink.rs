//! Typed netlink verbs over rtnetlink: bridges, veths, addresses, routes.
//!
//! [`Netlink::run`] opens a connection on a fresh thread (optionally inside a namespace) and
//! hands the caller blocking methods; kernel errors come back with a hint of what they mean.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt as _;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::{
    Handle, LinkBridge, LinkIpVlan, LinkMacVlan, LinkUnspec, LinkVeth, LinkVlan,
    RouteMessageBuilder,
    packet_route::{
        link::{IpVlanMode, LinkAttribute, LinkFlags, LinkMessage, MacVlanMode},
        route::{RouteAddress, RouteAttribute},
    },
};
use tokio::runtime::Runtime;

use crate::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op}: {hint}")]
    Kernel { op: String, hint: String },
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// An interface in the way that netbpf did not make.
    #[error("{0}")]
    Conflict(String),
}

/// The hint of a kernel error for a feature the kernel was built without.
const UNSUPPORTED: &str = "not supported by this kernel";

impl NetlinkError {
    /// Whether the kernel lacks what was asked for (e.g. an interface type not built in).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, NetlinkError::Kernel { hint, .. } if hint == UNSUPPORTED)
    }
}

/// The interface alias of the bridges and host-side veths netbpf makes: a leftover one (a
/// crash between making it and recording it) is known as netbpf's, not Docker's.
pub const OWNED_ALIAS: &str = "netbpf";

/// What the daemon needs to know about one interface.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub controller: Option<u32>,
    pub up: bool,
    /// Whether it is a veth (the XDP stage is not used on veth uplinks by default).
    pub is_veth: bool,
    pub is_bridge: bool,
    /// IFLA_IFALIAS: netbpf marks the bridges it makes (see [`OWNED_ALIAS`]).
    pub alias: Option<String>,
    pub mtu: u32,
}

/// The kinds of interface that sit on a parent.
#[derive(Debug, Clone, Copy)]
pub enum SubLink {
    MacVlan(MacVlanMode),
    IpVlan(IpVlanMode),
    /// An 802.1Q sub-interface with this VLAN id.
    Vlan(u16),
}

/// An IPv4 route of the main table, as far as overlap checks need it.
#[derive(Debug, Clone)]
pub struct Route {
    pub destination: Ipv4Net,
    pub oif: Option<u32>,
}

/// A netlink connection bound to the namespace of the thread that made it.
pub struct Netlink {
    runtime: Runtime,
    handle: Handle,
}

impl Netlink {
    /// Runs `work` with a connection in `ns`, or in the caller's namespace when `None`.
    pub fn run<T: Send>(
        ns: Option<&File>,
        work: impl FnOnce(&Netlink) -> Result<T, NetlinkError> + Send,
    ) -> Result<T, NetlinkError> {
        let in_thread = || Netlink::connect().and_then(|nl| work(&nl));
        match ns {
            Some(ns) => netns::run_in(ns, in_thread)?,
            None => netns::on_fresh_thread(in_thread)?,
        }
    }

    fn connect() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            Ok::<_, std::io::Error>(handle)
        })?;
        Ok(Self { runtime, handle })
    }

    fn block<T>(
        &self,
        op: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T, rtnetlink::Error>>,
    ) -> Result<T, NetlinkError> {
        self.runtime
            .block_on(fut)
            .map_err(|e| kernel_error(op(), e))
    }

    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut request = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match self.runtime.block_on(request.try_next()) {
            Ok(msg) => Ok(msg.map(link_from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(kernel_error(format!("looking up interface {name}"), e)),
        }
    }

    pub fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let request = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> =
            self.block(|| "listing interfaces".into(), request.try_collect())?;
        Ok(msgs.into_iter().map(link_from_message).collect())
    }

    /// Looks up an interface that must exist.
    pub fn link(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link_by_name(name)?
            .ok_or_else(|| NetlinkError::Kernel {
                op: format!("looking up interface {name}"),
                hint: "no such interface".into(),
            })
    }

    /// A bridge, up, marked with [`OWNED_ALIAS`] so that a leftover one (a crash between
    /// forgetting a network and deleting its bridge) is known as netbpf's.
    pub fn create_bridge(&self, name: &str, mac: [u8; 6]) -> Result<Link, NetlinkError> {
        let msg = LinkBridge::new(name).address(mac.to_vec()).up().build();
        self.block(
            || format!("creating bridge {name}"),
            self.handle.link().add(msg).execute(),
        )?;
        let bridge = self.link(name)?;
        self.mark_owned(bridge.index)?;
        self.link(name)
    }

    /// Gives an interface [`OWNED_ALIAS`] (the kernel takes an alias only on a link that
    /// exists, not in the request that makes it).
    pub fn mark_owned(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).alias(OWNED_ALIAS).build();
        self.set(|| format!("marking interface {index} as netbpf's"), msg)
    }

    /// Creates a veth pair, both ends in this namespace, both down.
    pub fn create_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        let msg = LinkVeth::new(name, peer).build();
        self.block(
            || format!("creating veth pair {name}/{peer}"),
            self.handle.link().add(msg).execute(),
        )
    }

    /// Creates an interface on top of `parent` (a macvlan, ipvlan or VLAN sub-interface),
    /// down.
    pub fn create_sublink(
        &self,
        name: &str,
        parent: u32,
        kind: SubLink,
    ) -> Result<(), NetlinkError> {
        let (what, msg) = match kind {
            SubLink::MacVlan(mode) => ("macvlan", LinkMacVlan::new(name, parent, mode).build()),
            SubLink::IpVlan(mode) => ("ipvlan", LinkIpVlan::new(name, parent, mode).build()),
            SubLink::Vlan(id) => ("VLAN", LinkVlan::new(name, parent, id).build()),
        };
        self.block(
            || format!("creating {what} interface {name} on interface {parent}"),
            self.handle.link().add(msg).execute(),
        )
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set(|| format!("setting MTU {mtu} on interface {index}"), msg)
    }

    /// Renames an interface (it must be down).
    pub fn rename(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .name(name.to_owned())
            .build();
        self.set(|| format!("renaming interface {index} to {name}"), msg)
    }

    fn set(&self, op: impl FnOnce() -> String, msg: LinkMessage) -> Result<(), NetlinkError> {
        self.block(op, self.handle.link().set(msg).execute())
    }

    pub fn set_controller(&self, index: u32, controller: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .controller(controller)
            .build();
        self.set(
            || format!("attaching interface {index} to bridge {controller}"),
            msg,
        )
    }

    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set(|| format!("bringing interface {index} up"), msg)
    }

    /// Moves an interface into the namespace `ns`.
    pub fn move_to_netns(&self, index: u32, ns: &File) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        self.set(
            || format!("moving interface {index} into the container namespace"),
            msg,
        )
    }

    /// Renames an interface and sets its MAC address (it must be down).
    pub fn rename_with_mac(
        &self,
        index: u32,
        name: &str,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .name(name.to_owned())
            .address(mac.to_vec())
            .build();
        self.set(|| format!("renaming interface {index} to {name}"), msg)
    }

    pub fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        self.block(
            || format!("adding address {addr}/{prefix}"),
            self.handle.address().add(index, addr, prefix).execute(),
        )
    }

    /// Like [`Self::add_address`], but an address that is already there is fine.
    pub fn ensure_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        match self
            .runtime
            .block_on(self.handle.address().add(index, addr, prefix).execute())
        {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(|e| kernel_error(format!("adding address {addr}/{prefix}"), e)),
        }
    }

    pub fn add_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.block(
            || format!("adding default route via {gateway}"),
            self.handle.route().add(msg).execute(),
        )
    }

    /// A default route straight out of an interface, for ipvlan's L3 modes (which answer
    /// no ARP, so a gateway could never be resolved).
    pub fn add_default_route_dev(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .build();
        self.block(
            || format!("adding default route out of interface {index}"),
            self.handle.route().add(msg).execute(),
        )
    }

    pub fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self
            .runtime
            .block_on(self.handle.link().del(index).execute())
        {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(|e| kernel_error(format!("deleting interface {index}"), e)),
        }
    }

    /// Deletes the interface called `name` if there is one (deleting a veth end deletes its
    /// peer wherever it is).
    pub fn delete_link_named(&self, name: &str) -> Result<(), NetlinkError> {
        match self.link_by_name(name)? {
            Some(link) => self.delete_link(link.index),
            None => Ok(()),
        }
    }

    pub fn routes_v4(&self) -> Result<Vec<Route>, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<_> = self.block(
            || "listing routes".into(),
            self.handle.route().get(msg).execute().try_collect(),
        )?;
        Ok(routes
            .into_iter()
            // Only the main table: the local table lists every address of the host, which
            // the overlap checks look at separately.
            .filter(|r| r.header.table == libc::RT_TABLE_MAIN)
            .filter_map(|r| {
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut oif = None;
                for attr in &r.attributes {
                    match attr {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let destination = Ipv4Net::new(dst, r.header.destination_prefix_length).ok()?;
                Some(Route { destination, oif })
            })
            .collect())
    }

    /// The interface of the IPv4 default route, if there is one.
    pub fn default_route_link(&self) -> Result<Option<Link>, NetlinkError> {
        let Some(oif) = self
            .routes_v4()?
            .into_iter()
            .find(|r| r.destination.prefix_len() == 0)
            .and_then(|r| r.oif)
        else {
            return Ok(None);
        };
        Ok(self.links()?.into_iter().find(|l| l.index == oif))
    }

    /// IPv4 addresses of one interface, in the kernel's order (primary first).
    pub fn addresses_of(&self, index: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let msgs: Vec<_> = self.block(
            || format!("listing addresses of interface {index}"),
            request.try_collect(),
        )?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            })
            .collect())
    }

    /// Addresses configured on any interface, for overlap checks.
    pub fn addresses(&self) -> Result<Vec<IpNet>, NetlinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self.block(
            || "listing addresses".into(),
            self.handle.address().get().execute().try_collect(),
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }
}

fn link_from_message(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        controller: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        is_veth: false,
        is_bridge: false,
        alias: None,
        mtu: 1500,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                link.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]])
            }
            LinkAttribute::Controller(c) => link.controller = Some(c),
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
            LinkAttribute::LinkInfo(infos) => {
                use rtnetlink::packet_route::link::{InfoKind, LinkInfo};
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Veth) => link.is_veth = true,
                        LinkInfo::Kind(InfoKind::Bridge) => link.is_bridge = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Address changes in the caller's namespace (netlink's IPv4 address group): a message per
/// address added or removed, for the daemon to follow a DHCP renew. Must be called on the
/// daemon's runtime (the connection is spawned there).
pub fn address_changes() -> Result<futures::channel::mpsc::UnboundedReceiver<()>, NetlinkError> {
    use futures::StreamExt as _;
    use rtnetlink::sys::AsyncSocket as _;
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    let groups = rtnetlink::sys::SocketAddr::new(0, rtnetlink::constants::RTMGRP_IPV4_IFADDR);
    connection.socket_mut().socket_mut().bind(&groups)?;
    tokio::spawn(connection);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            if tx.unbounded_send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Best-effort teardown: deletes interface `name` (in `ns`, or the daemon's namespace) if it
/// exists, logging rather than failing, so a teardown carries on with its other steps.
pub fn remove_link(ns: Option<&File>, name: &str, what: &str) {
    if let Err(error) = Netlink::run(ns, |nl| nl.delete_link_named(name)) {
        tracing::warn!(%error, interface = name, "could not delete {what}");
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// Turns a kernel error into "what we were doing: what it means".
fn kernel_error(op: String, e: rtnetlink::Error) -> NetlinkError {
    let hint = match errno(&e) {
        Some(libc::EEXIST) => "it already exists".to_owned(),
        Some(libc::ENODEV) => "no such interface".to_owned(),
        Some(libc::EPERM) => "permission denied (the daemon must run as root)".to_owned(),
        Some(libc::EADDRNOTAVAIL) => "address not available".to_owned(),
        Some(libc::EOPNOTSUPP) => UNSUPPORTED.to_owned(),
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    };
    NetlinkError::Kernel { op, hint }
}
