//! The daemon's session with the cluster store: a lease it keeps alive, the blocks it holds
//! under that lease, a watch that keeps its view of every host current, and the changes the
//! controller asks for. When etcd cannot be reached, the last view stays in force (traffic
//! between existing containers does not depend on etcd), changes are refused with a clear
//! error, and the session is retried every two seconds with a log line until etcd is back.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, bail};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot};

use super::{
    BLOCK_PREFIX_LEN, BLOCKS_PREFIX, BlockLease, ClusterView, LEASE_TTL_SECS, NAMES_PREFIX,
    NETWORKS_PREFIX, NameRecord, OverlaySpec, block_key, network_key,
};
use crate::ipam;

const RETRY: Duration = Duration::from_secs(2);

/// Who this host is in the cluster.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: String,
    pub vtep: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("network with name {0} already exists in the cluster store")]
    Exists(String),
    #[error("cluster store {0} is unreachable: the change was not made, try again")]
    Unreachable(String),
    #[error("cluster store: {0}")]
    Failed(String),
}

enum Request {
    Create(OverlaySpec, oneshot::Sender<Result<(), StoreError>>),
    Remove(String, oneshot::Sender<Result<(), StoreError>>),
    /// This host's container names now (the whole set).
    Names(Vec<NameRecord>),
}

/// The controller's handle on the session task.
#[derive(Clone)]
pub struct Cluster {
    requests: mpsc::UnboundedSender<Request>,
    pub endpoint: String,
    /// This host's tunnel endpoint: the blocks registered with it are this host's.
    pub vtep: Ipv4Addr,
}

impl Cluster {
    /// Starts the session task (on the current tokio runtime). Every new view of the store
    /// goes to `views`, in order.
    pub fn start(
        endpoint: String,
        me: Identity,
        views: mpsc::UnboundedSender<ClusterView>,
    ) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let vtep = me.vtep;
        tokio::spawn(run(endpoint.clone(), me, views, rx));
        Self {
            requests,
            endpoint,
            vtep,
        }
    }

    fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> Request,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Unreachable(self.endpoint.clone());
        self.requests.send(make(tx)).map_err(|_| gone())?;
        // Called from the controller, which runs on blocking threads.
        rx.blocking_recv().map_err(|_| gone())?
    }

    /// Defines a network in the store, unless one of that name exists there.
    pub fn create_network(&self, spec: OverlaySpec) -> Result<(), StoreError> {
        self.ask(|tx| Request::Create(spec, tx))
    }

    /// Publishes this host's container names on overlay networks (replacing the last set);
    /// kept, and published again after an outage, until the next call.
    pub fn publish_names(&self, names: Vec<NameRecord>) {
        let _ = self.requests.send(Request::Names(names));
    }

    /// Deletes a network's definition and every host's block of it.
    pub fn remove_network(&self, name: &str) -> Result<(), StoreError> {
        self.ask(|tx| Request::Remove(name.to_owned(), tx))
    }
}

async fn run(
    endpoint: String,
    me: Identity,
    views: mpsc::UnboundedSender<ClusterView>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    // The blocks this host held, kept across sessions so that it asks for the same ones
    // again (its containers keep their addresses) after etcd comes back.
    let mut held: BTreeMap<String, Ipv4Net> = BTreeMap::new();
    // The names this host wants published; written again under each new session's lease.
    let mut names: Vec<NameRecord> = vec![];
    loop {
        let result = session(&endpoint, &me, &views, &mut requests, &mut held, &mut names).await;
        match result {
            Ok(()) => return,
            Err(error) => tracing::warn!(
                store = endpoint,
                error = format!("{error:#}"),
                "cluster store unreachable or session lost: overlay changes wait; retrying every 2 s"
            ),
        }
        let deadline = tokio::time::Instant::now() + RETRY;
        // Changes asked for while there is no session are refused at once.
        while let Ok(Some(request)) = tokio::time::timeout_at(deadline, requests.recv()).await {
            match request {
                Request::Create(_, reply) | Request::Remove(_, reply) => {
                    let _ = reply.send(Err(StoreError::Unreachable(endpoint.clone())));
                }
                Request::Names(wanted) => names = wanted,
            }
        }
    }
}

async fn session(
    endpoint: &str,
    me: &Identity,
    views: &mpsc::UnboundedSender<ClusterView>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    held: &mut BTreeMap<String, Ipv4Net>,
    names: &mut Vec<NameRecord>,
) -> anyhow::Result<()> {
    let options = ConnectOptions::new()
        .with_connect_timeout(RETRY)
        .with_timeout(Duration::from_secs(3));
    let mut client = Client::connect([endpoint], Some(options)).await?;
    let lease = client.lease_grant(LEASE_TTL_SECS, None).await?.id();
    let (mut keeper, mut keep_alive) = client.lease_keep_alive(lease).await?;
    tracing::info!(store = endpoint, lease, vtep = %me.vtep, "cluster store session started");
    publish(&mut client, lease, &[], names).await?;
    let mut revision = sync(&mut client, me, lease, held, views).await?;
    let mut watch = client
        .watch(
            "/netbpf/v1/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_secs(LEASE_TTL_SECS as u64 / 3));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await?;
                match keep_alive.message().await? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => bail!("lease {lease} expired"),
                }
            }
            message = watch.message() => {
                let message = message?.context("the watch ended")?;
                if message.events().iter().any(|e| e.kv().is_some_and(|kv| kv.mod_revision() > revision)) {
                    revision = sync(&mut client, me, lease, held, views).await?;
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { return Ok(()) };
                match request {
                    Request::Create(spec, reply) => {
                        let _ = reply.send(create(&mut client, &spec).await);
                    }
                    Request::Remove(name, reply) => {
                        let _ = reply.send(remove(&mut client, &name).await);
                    }
                    Request::Names(wanted) => {
                        publish(&mut client, lease, names, &wanted).await?;
                        *names = wanted;
                    }
                }
            }
        }
    }
}

/// Writes the names in `wanted` under `lease` and deletes those of `before` that are gone.
async fn publish(
    client: &mut Client,
    lease: i64,
    before: &[NameRecord],
    wanted: &[NameRecord],
) -> anyhow::Result<()> {
    for gone in before.iter().filter(|n| !wanted.contains(n)) {
        client.delete(gone.key(), None).await?;
    }
    for name in wanted.iter().filter(|n| !before.contains(n)) {
        client
            .put(
                name.key(),
                serde_json::to_vec(name)?,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
    }
    Ok(())
}

fn failed(e: etcd_client::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

async fn create(client: &mut Client, spec: &OverlaySpec) -> Result<(), StoreError> {
    let key = network_key(&spec.name);
    let value = serde_json::to_vec(spec).expect("serializable");
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)]);
    if client.txn(txn).await.map_err(failed)?.succeeded() {
        tracing::info!(network = spec.name, subnet = %spec.subnet, vni = spec.vni, "overlay network defined");
        Ok(())
    } else {
        Err(StoreError::Exists(spec.name.clone()))
    }
}

async fn remove(client: &mut Client, name: &str) -> Result<(), StoreError> {
    client
        .delete(
            format!("{BLOCKS_PREFIX}{name}/"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(failed)?;
    client
        .delete(network_key(name), None)
        .await
        .map_err(failed)?;
    tracing::info!(network = name, "overlay network removed");
    Ok(())
}

/// What the keys under /netbpf/v1/ say; malformed values are skipped with a warning.
fn view_of(kvs: &[KeyValue]) -> ClusterView {
    let mut view = ClusterView::default();
    for kv in kvs {
        let key = kv.key_str().unwrap_or_default();
        if key.starts_with(NETWORKS_PREFIX) {
            match serde_json::from_slice::<OverlaySpec>(kv.value()) {
                Ok(spec) => {
                    view.networks.insert(spec.name.clone(), spec);
                }
                Err(error) => tracing::warn!(key, %error, "ignoring a malformed network"),
            }
        } else if key.starts_with(NAMES_PREFIX) {
            match serde_json::from_slice::<NameRecord>(kv.value()) {
                Ok(name) => view.names.push(name),
                Err(error) => tracing::warn!(key, %error, "ignoring a malformed name"),
            }
        } else if key.starts_with(BLOCKS_PREFIX) {
            match serde_json::from_slice::<BlockLease>(kv.value()) {
                Ok(lease) => view
                    .blocks
                    .entry(lease.network.clone())
                    .or_default()
                    .push(lease),
                Err(error) => tracing::warn!(key, %error, "ignoring a malformed block"),
            }
        }
    }
    view
}

/// Reads the store, leases a block of every network this host has none of, and hands the
/// resulting view on. Returns the store revision the view is of.
async fn sync(
    client: &mut Client,
    me: &Identity,
    lease: i64,
    held: &mut BTreeMap<String, Ipv4Net>,
    views: &mpsc::UnboundedSender<ClusterView>,
) -> anyhow::Result<i64> {
    loop {
        let answer = client
            .get("/netbpf/v1/", Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = answer.header().map(|h| h.revision()).unwrap_or(0);
        let view = view_of(answer.kvs());
        held.retain(|name, _| view.networks.contains_key(name));
        let mut claimed = false;
        for (name, spec) in &view.networks {
            let blocks = view.blocks.get(name).map(Vec::as_slice).unwrap_or_default();
            if let Some(mine) = blocks.iter().find(|b| b.vtep == me.vtep) {
                held.insert(name.clone(), mine.block);
                continue;
            }
            let taken: Vec<Ipv4Net> = blocks.iter().map(|b| b.block).collect();
            let len = BLOCK_PREFIX_LEN.max(spec.subnet.prefix_len());
            let Some(block) = held
                .get(name)
                .copied()
                .filter(|b| !taken.iter().any(|t| ipam::overlaps(*t, *b)))
                .or_else(|| ipam::free_subnet(spec.subnet, len, &taken))
            else {
                tracing::warn!(network = name, subnet = %spec.subnet, "no free block left for this host");
                continue;
            };
            let record = BlockLease {
                network: name.clone(),
                block,
                host: me.host.clone(),
                vtep: me.vtep,
            };
            let key = block_key(name, block);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    serde_json::to_vec(&record)?,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if client.txn(txn).await?.succeeded() {
                tracing::info!(network = name, %block, "overlay block leased");
                held.insert(name.clone(), block);
            }
            claimed = true;
        }
        if !claimed {
            let _ = views.send(view);
            return Ok(revision);
        }
    }
}
