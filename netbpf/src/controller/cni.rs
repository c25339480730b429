//! The CNI front-end (docs/runtimes.md): a runtime (Podman, containerd, a CRI) made the
//! namespace and runs `netbpf` as a CNI plugin, which forwards each call here. An
//! attachment is a container record with one endpoint, wired by the endpoint operation as
//! `attach --netns` wires one, and found again by the runtime's container id and interface
//! name ([`CniKey`]), the only names CNI's `DEL`, `CHECK` and `GC` give.

use std::{net::Ipv4Addr, path::PathBuf};

use super::{
    Controller,
    endpoints::{check_aliases_allowed, check_fixed_ip_allowed},
    error::{Error, Result},
    specs::{AttachSpec, NetnsSource},
};
use crate::{
    netlink::Netlink,
    publish::PortSpec,
    state::{CniKey, ContainerRecord},
};

/// `ADD`: wire `netns` into `network` for the runtime's container and interface.
#[derive(Debug, Clone)]
pub struct CniAddSpec {
    pub key: CniKey,
    pub netns: PathBuf,
    pub network: String,
    /// The `portMappings` capability, published in BPF (no `portmap` plugin needed).
    pub ports: Vec<PortSpec>,
    /// Names for the embedded DNS: the runtime's name for the container (`K8S_POD_NAME`)
    /// and the `aliases` capability.
    pub aliases: Vec<String>,
    /// A fixed address (`CNI_ARGS` `IP=`, or the `ips` capability).
    pub ip: Option<Ipv4Addr>,
}

/// netbpf's name for an attachment: unique per container id and interface, and a valid
/// container name (the id is cut, as CNI ids are often 64 hex digits).
pub fn record_name(key: &CniKey) -> String {
    let id = &key.container_id[..key.container_id.len().min(24)];
    format!("cni-{id}-{}", key.ifname)
}

impl Controller {
    fn cni_record(&self, key: &CniKey) -> Option<&ContainerRecord> {
        self.state
            .containers
            .values()
            .find(|c| c.cni.as_ref() == Some(key))
    }

    /// `ADD`. A second `ADD` for the same container and interface is refused (the spec
    /// says a runtime must `DEL` first).
    pub fn cni_add(&mut self, spec: CniAddSpec) -> Result<ContainerRecord> {
        if let Some(c) = self.cni_record(&spec.key) {
            return Err(Error::conflict(format!(
                "container {} already has interface {} (netbpf container {}): DEL it first",
                spec.key.container_id, spec.key.ifname, c.name
            )));
        }
        let net = self.network(&spec.network)?.clone();
        check_fixed_ip_allowed(&net, spec.ip)?;
        let aliases: Vec<String> = if net.name == crate::network::DEFAULT_NETWORK {
            vec![]
        } else {
            spec.aliases
        };
        check_aliases_allowed(&net, &aliases)?;
        let name = self.attach(AttachSpec {
            name: record_name(&spec.key),
            netns: NetnsSource::Path(spec.netns),
            network: Some(net.name),
            ip: spec.ip,
            ports: spec.ports,
            ifname: Some(spec.key.ifname.clone()),
            aliases,
            cni: Some(spec.key),
        })?;
        Ok(self.container(&name)?.clone())
    }

    /// `DEL`: idempotent, as the spec wants; an attachment netbpf does not know is gone.
    pub fn cni_del(&mut self, key: &CniKey) -> Result<()> {
        match self.cni_record(key).map(|c| c.name.clone()) {
            Some(name) => self.container_remove(&name),
            None => Ok(()),
        }
    }

    /// `CHECK`: the attachment is recorded, its namespace still exists, and its veth is
    /// still the one in the maps.
    pub fn cni_check(&self, key: &CniKey) -> Result<ContainerRecord> {
        let c = self.cni_record(key).ok_or_else(|| {
            Error::not_found(format!(
                "no attachment of container {} with interface {}",
                key.container_id, key.ifname
            ))
        })?;
        if !c.netns.as_deref().is_some_and(crate::netns::is_namespace) {
            return Err(Error::invalid(format!(
                "the namespace of container {} is gone",
                key.container_id
            )));
        }
        for ep in c.endpoints.iter().filter(|ep| ep.has_veth()) {
            let link = Netlink::run(None, |nl| nl.link_by_name(&ep.host_veth))?;
            if link.is_none_or(|l| l.index != ep.host_ifindex) {
                return Err(Error::invalid(format!(
                    "the host end {} of container {}'s interface is gone",
                    ep.host_veth, key.container_id
                )));
            }
        }
        Ok(c.clone())
    }

    /// `GC`: removes this network's attachments that the runtime no longer lists as valid;
    /// returns their netbpf names.
    pub fn cni_gc(&mut self, network: &str, valid: &[CniKey]) -> Result<Vec<String>> {
        let stale: Vec<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.cni.as_ref().is_some_and(|key| !valid.contains(key)))
            .filter(|c| c.networks.iter().any(|r| r.network == network))
            .map(|c| c.name.clone())
            .collect();
        for name in &stale {
            self.container_remove(name)?;
        }
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_valid_container_names() {
        let key = CniKey {
            container_id: "f".repeat(64),
            ifname: "eth0".into(),
        };
        let name = record_name(&key);
        assert_eq!(name.len(), 4 + 24 + 1 + 4);
        crate::network::validate_name("container", &name).unwrap();
    }
}
