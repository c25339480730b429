//! The names service: how a container finds others and how people find its namespace.
//! It owns the embedded DNS servers (one per container on a user-defined network, see
//! [`crate::dns`]), the host's upstream resolvers, each container's resolv.conf and hosts
//! files, and the `/run/netns/<prefix><name>` exposure that makes `ip netns exec` work.

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::{
    datapath::Datapath,
    dns::{self, server::DnsServers, table::Table},
    netns,
    overlay::NameRecord,
    state::{ContainerRecord, State},
};

/// A name file and where it is mounted inside the container.
pub type NameFile = (PathBuf, &'static str);

pub struct Names {
    dns: DnsServers,
    /// The host's resolv.conf (`--resolv-conf`) as last read, and the embedded DNS's
    /// upstreams from it.
    host_resolv_conf: String,
    host_upstreams: Vec<SocketAddr>,
    /// `--state-dir`: each container's files are in `containers/<id>/`.
    state_dir: PathBuf,
    /// `--netns-prefix`; `None`: namespaces are not exposed.
    netns_prefix: Option<String>,
}

/// One `--link` as the hosts file lists it: (address, alias, container name).
pub type HostsLink = (Ipv4Addr, String, String);

impl Names {
    pub fn new(
        runtime: tokio::runtime::Handle,
        state_dir: &Path,
        netns_prefix: Option<String>,
        host_resolv_conf: String,
    ) -> Self {
        Self {
            dns: DnsServers::new(runtime),
            host_upstreams: dns::table::host_upstreams(&host_resolv_conf),
            host_resolv_conf,
            state_dir: state_dir.to_owned(),
            netns_prefix,
        }
    }

    /// The host's resolv.conf changed (a DHCP lease, a VPN, systemd-resolved): the
    /// embedded DNS forwards to its new resolvers from the next query on (once `sync`ed).
    /// Returns whether anything changed.
    pub fn set_host_resolv_conf(&mut self, text: String) -> bool {
        if text == self.host_resolv_conf {
            return false;
        }
        self.host_upstreams = dns::table::host_upstreams(&text);
        tracing::info!(upstreams = ?self.host_upstreams, "host resolvers changed");
        self.host_resolv_conf = text;
        true
    }

    /// Brings the embedded DNS table in line with `state` and the names other hosts publish
    /// for their containers on overlay networks.
    pub fn sync<'a>(&self, state: &State, remote: impl IntoIterator<Item = &'a NameRecord>) {
        let mut table = Table::from_state(state, &self.host_upstreams);
        for name in remote {
            table.add_remote(&name.network, &name.name, name.ip);
        }
        self.dns.set_table(table);
    }

    /// Starts the embedded DNS inside `ns` for container `id`, with its `lo` steering.
    /// Returns whether it was started now (`false`: it already ran).
    pub fn start_dns(&mut self, id: &str, ns: &File, datapath: &mut Datapath) -> io::Result<bool> {
        if self.dns.is_serving(id) {
            return Ok(false);
        }
        self.dns.start(id, ns, || {
            datapath.attach_dns_steering(ns).map_err(io::Error::other)
        })?;
        Ok(true)
    }

    pub fn stop_dns(&mut self, id: &str) {
        self.dns.stop(id);
    }

    fn files_of(&self, id: &str) -> (PathBuf, PathBuf) {
        let dir = self.state_dir.join("containers").join(id);
        (dir.join("resolv.conf"), dir.join("hosts"))
    }

    /// The files of container `id` that exist, for a container sharing its namespace
    /// (sharing a namespace means sharing its names too).
    pub fn shared_files(&self, id: &str) -> Vec<NameFile> {
        let (resolv, hosts) = self.files_of(id);
        [(resolv, "/etc/resolv.conf"), (hosts, "/etc/hosts")]
            .into_iter()
            .filter(|(p, _)| p.exists())
            .collect()
    }

    /// Writes the container's resolv.conf (the embedded DNS, or its upstreams directly) and
    /// hosts (itself at `ip`, and its `--link`s).
    pub fn write_files(
        &self,
        c: &ContainerRecord,
        embedded: bool,
        ip: Option<Ipv4Addr>,
        links: &[HostsLink],
    ) -> io::Result<Vec<NameFile>> {
        let (resolv, hosts) = self.files_of(&c.id);
        let resolv_text = if embedded {
            dns::files::resolv_conf_embedded(&c.dns_search)
        } else {
            dns::files::resolv_conf_direct(
                &self.host_resolv_conf,
                &systemd_resolved_servers(),
                &c.dns,
                &c.dns_search,
            )
        };
        std::fs::write(&resolv, resolv_text)?;
        std::fs::write(&hosts, dns::files::hosts(&c.name, ip, links))?;
        Ok(vec![(resolv, "/etc/resolv.conf"), (hosts, "/etc/hosts")])
    }

    fn exposed_name(&self, name: &str) -> Option<String> {
        self.netns_prefix.as_ref().map(|p| format!("{p}{name}"))
    }

    /// Names the namespace for `ip netns`: a bind mount in /run/netns and the name files in
    /// /etc/netns, which `ip netns exec` mounts over /etc. Best effort: a failure is logged.
    /// Returns whether it exposed anything (to undo).
    pub fn expose(&self, name: &str, netns: &Path, files: &[NameFile]) -> bool {
        let Some(exposed) = self.exposed_name(name) else {
            return false;
        };
        let run = Path::new("/run/netns").join(&exposed);
        let etc = Path::new("/etc/netns").join(&exposed);
        let result = (|| -> io::Result<()> {
            // The /etc/netns directory first: it marks the name as netbpf's (see
            // `unexpose_all_but`), so a crash never leaves a bind mount unmarked.
            std::fs::create_dir_all(&etc)?;
            std::fs::create_dir_all("/run/netns")?;
            netns::bind(netns, &run).map_err(io::Error::other)?;
            for (source, target) in files {
                let file = Path::new(target).file_name().expect("a file name");
                std::fs::copy(source, etc.join(file))?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(%error, netns = exposed, "cannot expose the namespace to ip netns");
        }
        true
    }

    /// Removes the `ip netns` names (and /etc/netns files) of containers not in `running`:
    /// what a crash between exposing a namespace and saving its container left. Only names
    /// netbpf made count: those with an /etc/netns directory (made before the bind mount),
    /// never another program's `ip netns add` that happens to share the prefix.
    pub fn unexpose_all_but(&self, running: &std::collections::BTreeSet<String>) {
        let Some(prefix) = &self.netns_prefix else {
            return;
        };
        for entry in std::fs::read_dir("/etc/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_prefix(prefix.as_str())
                && !running.contains(name)
            {
                tracing::info!(netns = file, "removing a leftover namespace name");
                self.unexpose(name);
            }
        }
    }

    pub fn unexpose(&self, name: &str) {
        let Some(exposed) = self.exposed_name(name) else {
            return;
        };
        netns::remove_persistent(&Path::new("/run/netns").join(&exposed));
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&exposed));
    }
}

/// systemd-resolved's list of the real servers behind its 127.0.0.53 stub (empty without
/// it), for containers that cannot reach the host's loopback.
fn systemd_resolved_servers() -> String {
    std::fs::read_to_string("/run/systemd/resolve/resolv.conf").unwrap_or_default()
}
