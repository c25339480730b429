//! The daemon's cluster-store flags (where etcd is, how to trust it and log in to it, this
//! host's tunnel endpoint), checked before the daemon changes anything, and the start of
//! the store session once the controller runs.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;

use crate::{
    controller::Shared,
    netlink::Netlink,
    overlay::{
        self,
        access::{AccessFlags, StoreAccess},
    },
};

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The cluster store for overlay networks: etcd://HOST:PORT, or etcds://HOST:PORT for
    /// TLS (the server's certificate checked against --cluster-ca, else the system's roots);
    /// every member of an etcd cluster comma-separated (etcd://m1:2379,m2:2379,m3:2379).
    #[arg(long)]
    pub cluster_store: Option<String>,
    /// The CA certificate(s), PEM, that the store's server certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub cluster_ca: Option<PathBuf>,
    /// This host's client certificate, PEM, for a store that asks for one
    /// (etcd's --client-cert-auth); with --cluster-key.
    #[arg(long, value_name = "FILE")]
    pub cluster_cert: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[arg(long, value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
    /// An etcd user to log in as (a store with `etcdctl auth enable`); with
    /// --cluster-password-file.
    #[arg(long, value_name = "NAME")]
    pub cluster_user: Option<String>,
    /// A file whose first line is --cluster-user's password (kept off the command line,
    /// where `ps` would show it).
    #[arg(long, value_name = "FILE")]
    pub cluster_password_file: Option<PathBuf>,
    /// This host's tunnel endpoint on the underlay (default: the uplink's address).
    #[arg(long)]
    pub vtep_addr: Option<Ipv4Addr>,
}

impl ClusterArgs {
    /// The checked access to the store, if one is given; an error names the flag or file
    /// that is wrong.
    pub fn access(&self) -> anyhow::Result<Option<StoreAccess>> {
        let Some(url) = &self.cluster_store else {
            let stray = [
                ("--cluster-ca", self.cluster_ca.is_some()),
                ("--cluster-cert", self.cluster_cert.is_some()),
                ("--cluster-key", self.cluster_key.is_some()),
                ("--cluster-user", self.cluster_user.is_some()),
                (
                    "--cluster-password-file",
                    self.cluster_password_file.is_some(),
                ),
                ("--vtep-addr", self.vtep_addr.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
                bail!("{flag} needs --cluster-store");
            }
            return Ok(None);
        };
        let access = StoreAccess::new(AccessFlags {
            url: url.clone(),
            ca: self.cluster_ca.clone(),
            cert: self.cluster_cert.clone(),
            key: self.cluster_key.clone(),
            user: self.cluster_user.clone(),
            password_file: self.cluster_password_file.clone(),
        })
        .map_err(anyhow::Error::msg)?;
        Ok(Some(access))
    }

    /// Who this host is in the cluster: its tunnel endpoint, given or the uplink's address.
    pub fn identity(&self, uplink: Option<&str>) -> anyhow::Result<overlay::store::Identity> {
        let vtep = match (self.vtep_addr, uplink) {
            (Some(vtep), _) => vtep,
            (None, Some(uplink)) => {
                let uplink = uplink.to_owned();
                Netlink::run(None, move |nl| nl.addresses_of(nl.link(&uplink)?.index))?
                    .into_iter()
                    .next()
                    .context("the uplink has no IPv4 address for the overlay: give --vtep-addr")?
            }
            (None, None) => bail!("--cluster-store needs an underlay address: give --vtep-addr"),
        };
        Ok(overlay::store::Identity {
            host: vtep.to_string(),
            vtep,
        })
    }
}

/// Starts the cluster store session and the task that hands its views to the controller,
/// in the order they come.
pub fn start_cluster(
    access: StoreAccess,
    me: overlay::store::Identity,
    ctl: &Shared,
) -> tokio::task::JoinHandle<()> {
    let (views_tx, mut views) = mpsc::unbounded_channel();
    {
        let mut c = ctl.lock();
        // The blocks this host's overlay networks have: it asks for the same ones again,
        // and takes up its lease again while etcd still has it.
        let held = c.overlay_blocks();
        let lease_file = c.config().state_dir.join("cluster-lease");
        let cluster = overlay::store::Cluster::start(access, me, views_tx, held, lease_file);
        c.set_cluster(cluster);
    }
    let ctl = ctl.clone();
    tokio::spawn(async move {
        while let Some(view) = views.recv().await {
            let _ = ctl.run(move |c| c.apply_cluster(view)).await;
        }
    })
}
