//! Attaching programs and pinning their links: a veth's fast path, the uplink's tcx and XDP
//! stages, decapsulation on the VTEP's interface, the cgroup socket hooks, container XDP
//! receivers and the embedded DNS's `lo` steering. A restart swaps the new program into each
//! pinned link (`bpf_link_update`), so traffic never stops.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};
use netbpf_common::names;

use super::{Datapath, DatapathError, SOCK_PROGRAMS, pins_in};

impl Datapath {
    fn tc_program(&mut self, name: &str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in load")
    }

    fn link_pin(&self, host_veth: &str) -> PathBuf {
        self.links_dir.join(host_veth)
    }

    /// Attaches the fast path to a host-side veth (tcx ingress) and pins the link. If a
    /// pinned link is already there (a restart), the new program replaces the old one in it
    /// atomically instead.
    pub fn attach(&mut self, host_veth: &str) -> Result<(), DatapathError> {
        let pin = self.link_pin(host_veth);
        self.attach_tc(
            names::PROG_FROM_CONTAINER,
            host_veth,
            TcAttachType::Ingress,
            &pin,
        )
    }

    /// Attaches a TC program with tcx and pins the link at `pin`, or swaps the program into
    /// the link already pinned there.
    fn attach_tc(
        &mut self,
        name: &str,
        iface: &str,
        attach_type: TcAttachType,
        pin: &Path,
    ) -> Result<(), DatapathError> {
        if pin.exists() {
            match PinnedLink::from_pin(pin) {
                Ok(pinned) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
                    let program = self.tc_program(name);
                    let id = program.attach_to_link(link)?;
                    // Dropping our copy closes one fd; the pin keeps the link.
                    drop(program.take_link(id)?);
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, pin = %pin.display(), "stale link pin, attaching anew");
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let program = self.tc_program(name);
        let id = program.attach_with_options(
            iface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link = FdLink::try_from(program.take_link(id)?)?;
        link.pin(pin)?;
        Ok(())
    }

    /// Attaches the published-port and masquerade programs to the uplink (tcx ingress and
    /// egress), dropping links pinned for a different uplink by an earlier run.
    pub fn attach_uplink(&mut self, uplink: &str) -> Result<(), DatapathError> {
        let ingress = self.host_links_dir.join(format!("uplink-ingress-{uplink}"));
        let egress = self.host_links_dir.join(format!("uplink-egress-{uplink}"));
        for stale in pins_in(&self.host_links_dir) {
            if stale.starts_with("uplink-") && !stale.ends_with(&format!("-{uplink}")) {
                let _ = std::fs::remove_file(self.host_links_dir.join(stale));
            }
        }
        self.attach_tc(
            names::PROG_UPLINK_INGRESS,
            uplink,
            TcAttachType::Ingress,
            &ingress,
        )?;
        self.attach_tc(
            names::PROG_UPLINK_EGRESS,
            uplink,
            TcAttachType::Egress,
            &egress,
        )
    }

    /// Puts VXLAN decapsulation on the interface that holds this host's VTEP address.
    pub fn attach_overlay_ingress(&mut self, iface: &str) -> Result<(), DatapathError> {
        let pin = self.host_links_dir.join(format!("overlay-ingress-{iface}"));
        self.attach_tc(
            names::PROG_OVERLAY_INGRESS,
            iface,
            TcAttachType::Ingress,
            &pin,
        )
    }

    /// Attaches the socket programs to the cgroup whose processes count as "the host". A
    /// new link is pinned first and then replaces the old pin (rename is atomic), so host
    /// processes never see a moment without translation.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let dir = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let pin = self.host_links_dir.join(format!("cgroup-{name}"));
            let fresh = self.host_links_dir.join(format!("cgroup-{name}-new"));
            let _ = std::fs::remove_file(&fresh);
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .expect("loaded");
            // bpffs refuses names with a dot, hence "-new". A bpf_link on a cgroup always allows other programs next to it; `Single` means
            // "no flags", which is what BPF_LINK_CREATE accepts.
            let id = program.attach(&dir, CgroupAttachMode::Single)?;
            let link = FdLink::try_from(program.take_link(id)?)?;
            link.pin(&fresh)?;
            std::fs::rename(&fresh, &pin).map_err(|source| DatapathError::PinDir {
                path: pin.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Detaches from a veth by dropping the pins, the links' last references.
    pub fn detach(&mut self, host_veth: &str) {
        let _ = std::fs::remove_file(self.link_pin(host_veth));
        let _ = std::fs::remove_file(self.xdp_links_dir.join(host_veth));
    }

    /// Attaches an XDP program in driver mode and pins the link, or swaps the program into
    /// a link already pinned there. Runs in the calling thread's namespace.
    fn attach_xdp(&mut self, name: &str, ifindex: u32, pin: &Path) -> Result<(), DatapathError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded");
        if let Ok(pinned) = PinnedLink::from_pin(pin) {
            let id = program.attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?;
            drop(program.take_link(id)?);
            return Ok(());
        }
        let _ = std::fs::remove_file(pin);
        let id = program.attach_to_if_index(ifindex, XdpMode::Driver)?;
        FdLink::try_from(program.take_link(id)?)?.pin(pin)?;
        Ok(())
    }

    /// Puts the XDP stage on the uplink (driver mode only: generic XDP would be slower
    /// than the tcx path it fronts).
    pub fn attach_uplink_xdp(&mut self, uplink: &str, ifindex: u32) -> Result<(), DatapathError> {
        let pin = self.host_links_dir.join(format!("uplink-xdp-{uplink}"));
        self.remove_uplink_xdp_except(Some(uplink));
        self.attach_xdp(names::PROG_UPLINK_XDP, ifindex, &pin)
    }

    /// Drops the uplink XDP links, except the one for `keep`.
    pub fn remove_uplink_xdp_except(&mut self, keep: Option<&str>) {
        for pin in pins_in(&self.host_links_dir) {
            let kept = keep.is_some_and(|k| pin == format!("uplink-xdp-{k}"));
            if pin.starts_with("uplink-xdp-") && !kept {
                let _ = std::fs::remove_file(self.host_links_dir.join(pin));
            }
        }
    }

    /// Gives a container interface the XDP program that lets it receive frames the uplink's
    /// XDP stage redirects. `ifindex` is inside `ns`, where the attach must happen.
    pub fn attach_container_xdp(
        &mut self,
        ns: &File,
        ifindex: u32,
        host_veth: &str,
    ) -> Result<(), DatapathError> {
        let pin = self.xdp_links_dir.join(host_veth);
        crate::netns::run_in(ns, || {
            self.attach_xdp(names::PROG_CONTAINER_XDP_PASS, ifindex, &pin)
        })?
    }

    /// Attaches the embedded-DNS port steering to `lo` inside `ns`. The links are returned,
    /// not pinned: the steering lives exactly as long as the DNS server that owns them, so
    /// with no daemon a query fails at once instead of waiting for a socket nobody reads.
    pub fn attach_dns_steering(&mut self, ns: &File) -> Result<Vec<FdLink>, DatapathError> {
        let attach = |dp: &mut Self| -> Result<Vec<FdLink>, DatapathError> {
            let mut links = vec![];
            for (name, attach_type) in [
                (names::PROG_DNS_LO_INGRESS, TcAttachType::Ingress),
                (names::PROG_DNS_LO_EGRESS, TcAttachType::Egress),
            ] {
                let program = dp.tc_program(name);
                let id = program.attach_with_options(
                    "lo",
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )?;
                links.push(FdLink::try_from(program.take_link(id)?)?);
            }
            Ok(links)
        };
        crate::netns::run_in(ns, || attach(self))?
    }

    /// Veths with a pinned container XDP link.
    pub fn pinned_xdp_links(&self) -> Vec<String> {
        pins_in(&self.xdp_links_dir)
    }

    pub fn remove_container_xdp(&mut self, host_veth: &str) {
        let _ = std::fs::remove_file(self.xdp_links_dir.join(host_veth));
    }

    /// Names of the veths that have a pinned link.
    pub fn pinned_links(&self) -> Vec<String> {
        pins_in(&self.links_dir)
    }
}
