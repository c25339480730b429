//! A new view of the cluster store, carried out: the overlay service plans which overlay
//! networks this host joins (a local bridge network on its block) and leaves, this module
//! makes those changes, then the overlay maps are written from the view.

use super::{
    Controller,
    networks::{BridgeNetwork, Created, Removal},
    specs::NetworkSpec,
};
use crate::{
    ipam::Pool,
    overlay::{ClusterView, plan::Join, store::Cluster},
    state::OverlayRecord,
};

impl Controller {
    /// Overlay networks across hosts: defined in the cluster store, where every daemon sees
    /// them and leases a block of the subnet for its own containers.
    pub fn set_cluster(&mut self, cluster: Cluster) {
        self.overlay.set_cluster(cluster);
    }

    /// The handle on the cluster store session, if this host is in a cluster.
    pub fn cluster(&self) -> Option<Cluster> {
        self.overlay.cluster().cloned()
    }

    /// This host's block of each overlay network it has joined (from its state, so they
    /// survive restarts).
    pub fn overlay_blocks(&self) -> std::collections::BTreeMap<String, ipnet::Ipv4Net> {
        self.state
            .networks
            .values()
            .filter(|n| n.overlay.is_some())
            .map(|n| (n.name.clone(), n.subnet))
            .collect()
    }

    /// A new view of the cluster store: overlay networks and which host holds which block.
    pub fn apply_cluster(&mut self, view: ClusterView) {
        if let Some(plan) = self.overlay.apply(view, &self.state) {
            for warning in &plan.warnings {
                tracing::warn!("{warning}");
            }
            for join in plan.join {
                let name = join.spec.name.clone();
                match self.join_overlay(join) {
                    Ok(()) => tracing::info!(network = name, "joined overlay network"),
                    Err(error) => {
                        tracing::warn!(%error, network = name, "cannot join overlay network")
                    }
                }
            }
            for name in plan.leave {
                if let Err(error) = self.remove_local_network(&name) {
                    tracing::warn!(%error, network = name, "overlay network left the store but stays here");
                }
            }
            if let Err(error) = self.overlay.program(&mut self.datapath, &self.state) {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "programming the overlay data plane"
                );
            }
        }
        self.sync_names();
    }

    /// This host's block of an overlay network becomes a local bridge network, where its
    /// containers join as on any bridge.
    fn join_overlay(&mut self, join: Join) -> super::Result<()> {
        let pool =
            Pool::new(join.block, None, None).map_err(|e| super::Error::invalid(e.to_string()))?;
        let network = BridgeNetwork {
            name: &join.spec.name,
            id: join.spec.id.clone(),
            bridge: None,
            pool,
            internal: false,
            overlay: Some(OverlayRecord {
                subnet: join.spec.subnet,
                vni: join.spec.vni,
                port: join.spec.port,
            }),
        };
        self.transaction(|ctl, undo| ctl.create_bridge_network(undo, network))
    }
}

/// Changes that write to the cluster store: checked under the controller lock, written to
/// the store off it (an etcd that hangs holds up only the one request, for at most
/// [`crate::overlay::store::ASK_DEADLINE`]), then recorded under the lock again.
impl super::Shared {
    /// `network create`.
    pub async fn network_create(&self, spec: NetworkSpec) -> super::Result<String> {
        match self
            .run(move |c| c.network_create(spec))
            .await
            .map_err(panicked)??
        {
            Created::Local(name) => Ok(name),
            Created::Overlay(pending) => {
                let name = pending.spec.name.clone();
                pending.cluster.create_network(pending.spec.clone()).await?;
                let spec = pending.spec;
                self.run(move |c| c.overlay_defined(spec))
                    .await
                    .map_err(panicked)?;
                Ok(name)
            }
        }
    }

    /// `network rm`.
    pub async fn network_remove(&self, name: String) -> super::Result<()> {
        let removal = self
            .run(move |c| c.network_remove(&name))
            .await
            .map_err(panicked)??;
        if let Removal::Overlay { cluster, name } = removal {
            cluster.remove_network(&name).await?;
            self.run(move |c| c.overlay_removed(&name))
                .await
                .map_err(panicked)??;
        }
        Ok(())
    }
}

fn panicked(error: tokio::task::JoinError) -> super::Error {
    super::Error::Other(anyhow::anyhow!("controller call failed: {error}"))
}
