//! The cluster store's records, read and written in a session: this host's names, network
//! definitions and their removal, and the whole view (with this host's block claims) that
//! the controller acts on.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use super::{
    BLOCKS_PREFIX, BlockLease, ClusterView, NAMES_PREFIX, NETWORKS_PREFIX, NameRecord, OverlaySpec,
    claim::{self, Choice},
    network_key,
    store::{Identity, StoreError},
};

/// Writes the names in `wanted` under `lease` and deletes those of `before` that are gone.
pub async fn publish(
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

/// A call's error as the controller reports it: a deadline that passed (etcd silent, as
/// in a partition) says so; anything else is etcd's own message.
fn failed(e: etcd_client::Error) -> StoreError {
    match &e {
        // gRPC's Cancelled (1) and DeadlineExceeded (4): the request's timeout passed.
        etcd_client::Error::GRpcStatus(status) if matches!(status.code() as i32, 1 | 4) => {
            StoreError::Timeout
        }
        _ => StoreError::Failed(e.to_string()),
    }
}

pub async fn create(client: &mut Client, spec: &OverlaySpec) -> Result<(), StoreError> {
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

pub async fn remove(client: &mut Client, name: &str) -> Result<(), StoreError> {
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

/// What the keys under /netbpf/v1/ say, and the blocks held by records that do not parse
/// (by network): those count as taken, so no host claims them and no claim loops on one.
/// Each malformed key is logged once (`warned`).
fn view_of(
    kvs: &[KeyValue],
    warned: &mut BTreeSet<String>,
) -> (ClusterView, BTreeMap<String, Vec<Ipv4Net>>) {
    let mut view = ClusterView::default();
    let mut unusable: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
    for kv in kvs {
        let key = kv.key_str().unwrap_or_default();
        let mut malformed = |error: &dyn std::fmt::Display| {
            if warned.insert(key.to_owned()) {
                tracing::warn!(key, %error, "ignoring a malformed record in the cluster store");
            }
        };
        if key.starts_with(NETWORKS_PREFIX) {
            match serde_json::from_slice::<OverlaySpec>(kv.value()) {
                Ok(spec) => {
                    view.networks.insert(spec.name.clone(), spec);
                }
                Err(error) => malformed(&error),
            }
        } else if key.starts_with(NAMES_PREFIX) {
            match serde_json::from_slice::<NameRecord>(kv.value()) {
                Ok(name) => view.names.push(name),
                Err(error) => malformed(&error),
            }
        } else if let Some(path) = key.strip_prefix(BLOCKS_PREFIX) {
            match serde_json::from_slice::<BlockLease>(kv.value()) {
                Ok(lease) => view
                    .blocks
                    .entry(lease.network.clone())
                    .or_default()
                    .push(lease),
                Err(error) => {
                    malformed(&error);
                    if let Some((network, block)) = block_of_key(path) {
                        unusable.entry(network).or_default().push(block);
                    }
                }
            }
        }
    }
    (view, unusable)
}

/// `NETWORK/ADDR-LEN` (the tail of a block key) as the network and block it names.
fn block_of_key(path: &str) -> Option<(String, Ipv4Net)> {
    let (network, block) = path.rsplit_once('/')?;
    let (addr, len) = block.split_once('-')?;
    let block = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    Some((network.to_owned(), block))
}

/// Reads the store, leases a block of every network this host has none of, and hands the
/// resulting view on. Returns the store revision the view is of. A host that held a block
/// (`held`) asks for that one only: if another host has taken it meanwhile, it stays out of
/// the network rather than advertise another block than its containers use. A claim lost
/// to another host is retried after a pause, a bounded number of times.
pub async fn sync(
    client: &mut Client,
    me: &Identity,
    lease: i64,
    held: &mut BTreeMap<String, Ipv4Net>,
    views: &mpsc::UnboundedSender<ClusterView>,
    warned: &mut BTreeSet<String>,
) -> anyhow::Result<i64> {
    for attempt in 0.. {
        let answer = client
            .get("/netbpf/v1/", Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = answer.header().map(|h| h.revision()).unwrap_or(0);
        let (view, unusable) = view_of(answer.kvs(), warned);
        held.retain(|name, _| view.networks.contains_key(name));
        let mut lost = false;
        for (name, spec) in &view.networks {
            if super::validate::check_network(name, spec).is_err() {
                continue; // (Left out of the view below, with the reason.)
            }
            let blocks = view.blocks.get(name).map(Vec::as_slice).unwrap_or_default();
            let unusable = unusable.get(name).map(Vec::as_slice).unwrap_or_default();
            match claim::choose(me.vtep, spec, blocks, unusable, held.get(name).copied()) {
                Choice::Holding(block) => {
                    held.insert(name.clone(), block);
                }
                Choice::Claim(block) => {
                    if claim::claim(client, lease, me, name, block).await? {
                        tracing::info!(network = name, %block, "overlay block leased");
                        held.insert(name.clone(), block);
                    }
                    // (Won or lost, the next round reads what the store holds now.)
                    lost = true;
                }
                Choice::TakenWhileAway { block, holder } => {
                    if warned.insert(format!("taken {name} {block}")) {
                        tracing::error!(
                            network = name,
                            %block,
                            holder = holder.as_deref().unwrap_or("a malformed record"),
                            "this host's block was taken while it was away: its containers there are cut off; remove them (or the network here) to get a new block"
                        );
                    }
                }
                Choice::Full => {
                    tracing::warn!(network = name, subnet = %spec.subnet, "no free block left for this host");
                }
            }
        }
        if !lost || attempt >= MAX_CLAIM_ROUNDS {
            // What the controller acts on: only records that pass (claiming above counted
            // every block anyone holds, valid or not, as taken).
            let (valid, rejected) = super::validate::validated(view);
            for why in rejected {
                if warned.insert(why.clone()) {
                    tracing::warn!("ignoring a cluster store record: {why}");
                }
            }
            let _ = views.send(valid);
            return Ok(revision);
        }
        tokio::time::sleep(CLAIM_PAUSE).await;
    }
    unreachable!("the loop returns")
}

/// Rounds of claiming (another host may win each) before a view is handed on as it is.
const MAX_CLAIM_ROUNDS: u32 = 10;
const CLAIM_PAUSE: Duration = Duration::from_millis(200);
