//! Containers: run (create and start), start, stop, remove, attach, and what happens when
//! a process exits. Wiring a container's namespace is the endpoint operation's job
//! ([`Controller::plug`]); this module makes the namespace, writes the name files and
//! starts the process around it.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use super::{
    Controller, Error, Result, Step, Undo,
    endpoints::{Plugged, check_aliases_allowed, check_fixed_ip_allowed, uses_embedded_dns},
    specs::{AttachSpec, ContainerSpec, NetnsSource},
};
use crate::{
    container, endpoint,
    exits::{ExitEvent, ExitWatch, WaitFor},
    names::NameFile,
    netns,
    network::{self, DEFAULT_NETWORK},
    publish::PortSpec,
    state::{AttachedTo, ContainerRecord, EndpointRecord, NetworkMode, NetworkRequest, Status},
};

impl Controller {
    /// `run`: records the container and starts it; returns its name.
    pub fn container_create(&mut self, spec: ContainerSpec) -> Result<String> {
        self.check_new_container_name(&spec.name)?;
        if spec.cmd.is_empty() {
            return Err(Error::invalid(
                "no command given: netbpf run --name NAME -- CMD [ARGS...]",
            ));
        }
        let (mode, networks) = self.parse_mode(spec.network.as_deref(), spec.ip, &spec.aliases)?;
        check_ports_allowed(&spec.ports, &mode)?;
        let links = self.check_links(&spec.links, &mode)?;
        let record = ContainerRecord {
            cmd: spec.cmd,
            auto_remove: spec.auto_remove,
            ports: spec.ports,
            links,
            dns: spec.dns,
            dns_search: spec.dns_search,
            ..ContainerRecord::new(&spec.name, mode, networks)
        };
        self.transaction(|ctl, undo| {
            let dir = ctl.config.container_dir(&record.id);
            std::fs::create_dir_all(&dir)?;
            undo.push(Step::Dir(dir));
            ctl.state
                .containers
                .insert(record.name.clone(), record.clone());
            ctl.launch(undo, &record.name)
        })?;
        Ok(spec.name)
    }

    /// `start`: starts a created or exited container again; returns its name.
    pub fn container_start(&mut self, key: &str) -> Result<String> {
        let c = self.container(key)?.clone();
        if c.is_running() {
            return Err(Error::conflict(format!(
                "container {} is already running",
                c.name
            )));
        }
        if c.attached.is_some() {
            return Err(Error::conflict(format!(
                "container {} was attached, not started by netbpf: attach it again",
                c.name
            )));
        }
        self.transaction(|ctl, undo| ctl.launch(undo, &c.name))?;
        Ok(c.name)
    }

    /// Makes the namespace, wires it, writes the name files and starts the process.
    fn launch(&mut self, undo: &mut Undo, name: &str) -> Result<()> {
        let c = self
            .state
            .containers
            .get(name)
            .expect("caller checked")
            .clone();
        let netns_path = self.netns_for_launch(undo, &c)?;
        let mut plugged = Plugged::default();
        if let Some(path) = netns_path.as_deref().filter(|_| c.owns_netns()) {
            let ns = netns::open(path)?;
            endpoint::loopback_up(&ns)?;
            plugged = self.plug(undo, &c, &ns, &c.networks, &c.ports)?;
        }
        let files = self.name_files(&c, &plugged.endpoints)?;
        if let Some(path) = netns_path.as_deref().filter(|_| c.owns_netns())
            && self.names.expose(&c.name, path, &files)
        {
            undo.push(Step::Exposed(c.name.clone()));
        }
        // The process may ask for a name as soon as it runs: the table must already know it
        // as a running container on its networks.
        let mut starting = self.state.clone();
        if let Some(record) = starting.containers.get_mut(name) {
            record.endpoints = plugged.endpoints.clone();
            record.status = Status::Running;
        }
        self.names.sync(&starting, self.overlay.remote_names());
        let binds: Vec<(&Path, &Path)> = files
            .iter()
            .map(|(s, t)| (s.as_path(), Path::new(*t)))
            .collect();
        let (child, gate) = container::spawn(
            &c.cmd,
            netns_path.as_deref(),
            &self.config.log_path(&c.id),
            &self.config.netns_dir(),
            &binds,
        )
        .map_err(|e| Error::invalid(format!("cannot start {:?}: {e}", c.cmd[0])))?;
        // The process waits at its gate until the transaction has saved it.
        self.gates.push(gate);
        fail::fail_point!("container-spawned-before-saved", |_| std::process::abort());
        let pid = child.id() as i32;
        undo.push(Step::Process {
            id: c.id.clone(),
            pid,
        });
        self.exits.watch_child(&c.id, child);
        let record = self.state.containers.get_mut(name).expect("exists");
        record.endpoints = plugged.endpoints;
        record.published = plugged.published;
        record.status = Status::Running;
        record.pid = Some(pid);
        record.pid_start_time = container::start_time(pid);
        record.exit_code = None;
        record.netns = netns_path;
        tracing::info!(container = name, pid, "container started");
        Ok(())
    }

    /// The namespace a container starts in: a new one of its own, the one of the container
    /// it shares, or `None` for the daemon's (host mode).
    fn netns_for_launch(&self, undo: &mut Undo, c: &ContainerRecord) -> Result<Option<PathBuf>> {
        match &c.mode {
            NetworkMode::Host => Ok(None),
            NetworkMode::Networks | NetworkMode::None => {
                let own = self.config.netns_dir().join(&c.id);
                netns::remove_persistent(&own);
                netns::create_persistent(&own)?;
                undo.push(Step::Netns(own.clone()));
                Ok(Some(own))
            }
            NetworkMode::Container(target) => {
                let target = self.container(target)?;
                if !target.is_running() {
                    return Err(Error::conflict(format!(
                        "cannot join the namespace of container {}: it is not running",
                        target.name
                    )));
                }
                Ok(self.netns_path_of(target))
            }
        }
    }

    /// Writes the container's resolv.conf and hosts; returns (file, mount target) pairs.
    fn name_files(
        &self,
        c: &ContainerRecord,
        endpoints: &[EndpointRecord],
    ) -> Result<Vec<NameFile>> {
        match &c.mode {
            NetworkMode::Host => Ok(vec![]),
            NetworkMode::Container(target) => {
                Ok(self.names.shared_files(&self.container(target)?.id))
            }
            NetworkMode::Networks | NetworkMode::None => {
                let mut links = vec![];
                for (target, alias) in &c.links {
                    let target = self.container(target)?;
                    let ip = target.endpoints.first().map(|ep| ep.ip).ok_or_else(|| {
                        Error::conflict(format!("linked container {} is not running", target.name))
                    })?;
                    links.push((ip, alias.clone(), target.name.clone()));
                }
                let embedded = uses_embedded_dns(&c.mode, endpoints);
                let own_ip = endpoints.first().map(|ep| ep.ip);
                Ok(self.names.write_files(c, embedded, own_ip, &links)?)
            }
        }
    }

    /// Tears down what a running container holds: what [`Controller::plug`] made and the
    /// namespace the daemon made for it. The record keeps its requests, not its leases.
    pub(super) fn release(&mut self, c: &ContainerRecord) {
        self.unplug(c);
        if let Some(record) = self.state.containers.get_mut(&c.name) {
            record.endpoints.clear();
            record.published.clear();
        }
        if c.owns_netns() {
            netns::remove_persistent(&self.config.netns_dir().join(&c.id));
        }
    }

    /// First half of `stop`: signal the process group, return what to wait on.
    pub fn container_signal(&mut self, key: &str, signal: libc::c_int) -> Result<Option<WaitFor>> {
        let c = self.container(key)?.clone();
        if c.attached.is_some() {
            return Err(Error::conflict(format!(
                "container {} was attached, not started by netbpf: use rm to detach it",
                c.name
            )));
        }
        if !c.is_running() {
            return Ok(None);
        }
        if let Some(pid) = container::live_pid(&c) {
            container::signal_group(pid, signal);
        }
        self.wait(&c.id).map(Some)
    }

    /// What `wait` waits on: the exit status, or the watch that will carry it.
    pub fn wait(&self, key: &str) -> Result<WaitFor> {
        if let Some(code) = self.exits.finished(key) {
            return Ok(WaitFor::Exited(code));
        }
        let c = self.container(key)?;
        match (c.is_running(), self.exits.subscribe(&c.id)) {
            (true, Some(watch)) => Ok(WaitFor::Running(watch)),
            _ => Ok(WaitFor::Exited(c.exit_code)),
        }
    }

    /// A container's process ended: release its endpoints and namespace, record the status,
    /// wake waiters, and remove it if it was `--rm`.
    pub fn on_exit(&mut self, event: ExitEvent) {
        let Some(c) = self
            .state
            .containers
            .values()
            .find(|c| c.id == event.id && c.pid == Some(event.pid))
            .cloned()
        else {
            return;
        };
        self.release(&c);
        let saved = self.transaction(|ctl, _| {
            let record = ctl.state.containers.get_mut(&c.name).expect("exists");
            record.mark_exited(event.code);
            Ok(())
        });
        if let Err(error) = saved {
            tracing::error!(%error, "saving state");
        }
        self.exits.exited(&c.id, event.code, c.auto_remove);
        tracing::info!(container = c.name, code = ?event.code, "container exited");
        if c.auto_remove
            && let Err(error) = self.container_remove(&c.name)
        {
            tracing::warn!(%error, "auto-remove");
        }
    }

    /// Removes a container that is not running (`rm -f` stops it first, in the API layer).
    pub fn container_remove(&mut self, key: &str) -> Result<()> {
        let c = self.container(key)?.clone();
        if c.is_running() && c.attached.is_none() {
            return Err(Error::conflict(format!(
                "container {} is running: stop it first or use rm -f",
                c.name
            )));
        }
        if let Some(dependent) = self
            .state
            .containers
            .values()
            .find(|d| d.is_running() && d.mode == NetworkMode::Container(c.name.clone()))
        {
            return Err(Error::conflict(format!(
                "container {} shares the network namespace of {}: remove it first",
                dependent.name, c.name
            )));
        }
        self.release(&c);
        self.transaction(|ctl, _| {
            ctl.state.containers.remove(&c.name);
            Ok(())
        })?;
        self.exits.forget(&c.id);
        self.remove_container_dir(&c.id);
        tracing::info!(container = c.name, "container removed");
        Ok(())
    }

    pub(super) fn remove_container_dir(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.config.container_dir(id));
    }

    /// `attach`: wire a namespace someone else made, as the manual walkthrough does;
    /// returns the new container's name.
    pub fn attach(&mut self, spec: AttachSpec) -> Result<String> {
        self.check_new_container_name(&spec.name)?;
        let (path, attached, pid) = match spec.netns {
            NetnsSource::Pid(pid) => {
                if container::start_time(pid).is_none() {
                    return Err(Error::not_found(format!("no process with pid {pid}")));
                }
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                (path, AttachedTo::Pid, Some(pid))
            }
            NetnsSource::Path(path) => {
                if !netns::is_namespace(&path) {
                    return Err(Error::invalid(format!(
                        "{} is not a network namespace",
                        path.display()
                    )));
                }
                (path, AttachedTo::Netns, None)
            }
        };
        let ns = netns::open(&path).map_err(|e| Error::invalid(e.to_string()))?;
        if same_netns(&ns, Path::new("/proc/self/ns/net")) {
            return Err(Error::invalid(
                "that namespace is the daemon's own (host) namespace: nothing to attach",
            ));
        }
        let (mode, mut networks) = self.parse_mode(spec.network.as_deref(), spec.ip, &[])?;
        if mode != NetworkMode::Networks {
            return Err(Error::invalid("attach needs a bridge network"));
        }
        if let Some(request) = networks.first_mut() {
            request.ifname = spec.ifname;
            request.aliases = spec.aliases;
        }
        check_ports_allowed(&spec.ports, &mode)?;
        let mut record = ContainerRecord {
            ports: spec.ports,
            status: Status::Running,
            pid,
            pid_start_time: pid.and_then(container::start_time),
            netns: Some(path.clone()),
            attached: Some(attached),
            cni: spec.cni,
            ..ContainerRecord::new(&spec.name, mode, networks)
        };
        self.transaction(|ctl, undo| {
            endpoint::loopback_up(&ns)?;
            let (requests, ports) = (record.networks.clone(), record.ports.clone());
            let plugged = ctl.plug(undo, &record, &ns, &requests, &ports)?;
            record.endpoints = plugged.endpoints;
            record.published = plugged.published;
            if ctl.names.expose(&record.name, &path, &[]) {
                undo.push(Step::Exposed(record.name.clone()));
            }
            ctl.state
                .containers
                .insert(record.name.clone(), record.clone());
            Ok(())
        })?;
        if let Some(pid) = pid {
            self.exits.watch_foreign(&record.id, pid);
        }
        Ok(spec.name)
    }

    /// Where and as whom `exec` runs: (network namespace, pid whose mount namespace to use).
    pub fn exec_target(&self, key: &str) -> Result<(Option<PathBuf>, Option<i32>)> {
        let c = self.container(key)?;
        if !c.is_running() {
            return Err(Error::conflict(format!(
                "container {} is not running",
                c.name
            )));
        }
        Ok((self.netns_path_of(c), container::live_pid(c)))
    }

    /// The log file, and while the container runs the watch that says when it stopped
    /// (logs follow until then).
    pub fn log_of(&self, key: &str) -> Result<(PathBuf, Option<ExitWatch>)> {
        let c = self.container(key)?;
        let watch = c
            .is_running()
            .then(|| self.exits.subscribe(&c.id))
            .flatten();
        Ok((self.config.log_path(&c.id), watch))
    }

    /// Pids of the containers the daemon started and that still run, for shutdown.
    pub fn running_pids(&self) -> Vec<(String, i32)> {
        self.state
            .containers
            .values()
            .filter(|c| c.is_running() && c.attached.is_none())
            .filter_map(|c| c.pid.map(|pid| (c.id.clone(), pid)))
            .collect()
    }

    fn check_new_container_name(&self, name: &str) -> Result<()> {
        network::validate_name("container", name)?;
        if let Some(c) = self.state.containers.get(name) {
            return Err(Error::conflict(format!(
                "container name {name} is already in use by container {}: remove it or choose another name",
                c.short_id()
            )));
        }
        Ok(())
    }

    /// `--network`: a network (with `--ip` and aliases on it), `host`, `none` or
    /// `container:NAME`.
    fn parse_mode(
        &self,
        network: Option<&str>,
        ip: Option<Ipv4Addr>,
        aliases: &[String],
    ) -> Result<(NetworkMode, Vec<NetworkRequest>)> {
        let network = network.unwrap_or(DEFAULT_NETWORK);
        let plain = |mode| {
            if ip.is_some() {
                return Err(Error::invalid(format!(
                    "--ip cannot be used with --network {network}"
                )));
            }
            if !aliases.is_empty() {
                return Err(Error::invalid(format!(
                    "--network-alias cannot be used with --network {network}"
                )));
            }
            Ok((mode, vec![]))
        };
        match network {
            "host" => plain(NetworkMode::Host),
            "none" => plain(NetworkMode::None),
            _ => {
                if let Some(target) = network.strip_prefix("container:") {
                    let target = self.container(target)?;
                    if let NetworkMode::Container(_) = target.mode {
                        return Err(Error::invalid(format!(
                            "container {} itself shares another container's namespace: join that one",
                            target.name
                        )));
                    }
                    return plain(NetworkMode::Container(target.name.clone()));
                }
                let net = self.network(network)?;
                check_fixed_ip_allowed(net, ip)?;
                check_aliases_allowed(net, aliases)?;
                Ok((
                    NetworkMode::Networks,
                    vec![NetworkRequest {
                        ifname: None,
                        mac: None,
                        network: net.name.clone(),
                        ip,
                        aliases: aliases.to_vec(),
                    }],
                ))
            }
        }
    }

    /// `--link NAME:ALIAS`: the target must run; only for containers with networks.
    /// Returns the links with the targets' names (a link may give an id prefix).
    fn check_links(
        &self,
        links: &[(String, String)],
        mode: &NetworkMode,
    ) -> Result<Vec<(String, String)>> {
        if !links.is_empty() && *mode != NetworkMode::Networks {
            return Err(Error::invalid(format!(
                "--link cannot be used with network mode {}",
                mode.name()
            )));
        }
        links
            .iter()
            .map(|(name, alias)| {
                let target = self.container(name)?;
                if !target.is_running() {
                    return Err(Error::conflict(format!(
                        "cannot link to {}: it is not running",
                        target.name
                    )));
                }
                Ok((target.name.clone(), alias.clone()))
            })
            .collect()
    }
}

/// Only containers with networks of their own can publish ports.
fn check_ports_allowed(ports: &[PortSpec], mode: &NetworkMode) -> Result<()> {
    if !ports.is_empty() && *mode != NetworkMode::Networks {
        return Err(Error::invalid(format!(
            "ports cannot be published with network mode {}",
            mode.name()
        )));
    }
    Ok(())
}

fn same_netns(a: &File, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (a.metadata(), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}
