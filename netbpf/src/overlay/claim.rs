//! Which block of an overlay network this host claims, decided from the store's view (a
//! pure function), and the claim itself: a transaction that wins only while no host holds
//! the block's key.

use std::net::Ipv4Addr;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;

use super::{BLOCK_PREFIX_LEN, BlockLease, OverlaySpec, block_key, store::Identity};
use crate::ipam;

/// What this host does about one network.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// It holds this block in the store already.
    Holding(Ipv4Net),
    /// It asks for this one.
    Claim(Ipv4Net),
    /// The block its containers use was taken while it was away (by `holder`, if a valid
    /// record says who): it stays out of the network rather than advertise another block.
    TakenWhileAway {
        block: Ipv4Net,
        holder: Option<String>,
    },
    /// No free block is left.
    Full,
}

/// `blocks`: the network's valid block records; `unusable`: blocks of records that did not
/// parse (taken all the same); `held`: the block this host's state says it has.
pub fn choose(
    vtep: Ipv4Addr,
    spec: &OverlaySpec,
    blocks: &[BlockLease],
    unusable: &[Ipv4Net],
    held: Option<Ipv4Net>,
) -> Choice {
    if let Some(mine) = blocks.iter().find(|b| b.vtep == vtep) {
        return Choice::Holding(mine.block);
    }
    let mut taken: Vec<Ipv4Net> = blocks.iter().map(|b| b.block).collect();
    taken.extend(unusable);
    match held {
        Some(block) if taken.iter().any(|t| ipam::overlaps(*t, block)) => Choice::TakenWhileAway {
            block,
            holder: blocks
                .iter()
                .find(|b| ipam::overlaps(b.block, block))
                .map(|b| b.host.clone()),
        },
        Some(block) => Choice::Claim(block),
        None => {
            let len = BLOCK_PREFIX_LEN.max(spec.subnet.prefix_len());
            ipam::free_subnet(spec.subnet, len, &taken).map_or(Choice::Full, Choice::Claim)
        }
    }
}

/// Writes this host's lease on `block` of `network` unless someone holds it; whether it won.
pub async fn claim(
    client: &mut Client,
    lease: i64,
    me: &Identity,
    network: &str,
    block: Ipv4Net,
) -> anyhow::Result<bool> {
    let record = BlockLease {
        network: network.to_owned(),
        block,
        host: me.host.clone(),
        vtep: me.vtep,
    };
    let key = block_key(network, block);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            serde_json::to_vec(&record)?,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Ok(client.txn(txn).await?.succeeded())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn spec() -> OverlaySpec {
        OverlaySpec {
            id: "0123456789abcdef0123".into(),
            name: "ovl".into(),
            subnet: net("10.150.0.0/16"),
            vni: 4096,
            port: 4789,
            created: "2026-12-02T00:00:00Z".into(),
        }
    }

    fn lease(block: &str, host: u8) -> BlockLease {
        BlockLease {
            network: "ovl".into(),
            block: block.parse().unwrap(),
            host: format!("10.0.0.{host}"),
            vtep: Ipv4Addr::new(10, 0, 0, host),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_host_keeps_what_it_holds_and_asks_again_for_what_it_had() {
        let blocks = [lease("10.150.0.0/24", 2), lease("10.150.1.0/24", 1)];
        assert_eq!(
            choose(ME, &spec(), &blocks, &[], None),
            Choice::Holding(net("10.150.1.0/24"))
        );
        let blocks = [lease("10.150.0.0/24", 2)];
        assert_eq!(
            choose(ME, &spec(), &blocks, &[], Some(net("10.150.5.0/24"))),
            Choice::Claim(net("10.150.5.0/24"))
        );
    }

    #[test]
    fn a_new_host_takes_the_first_free_block_counting_unparsable_ones_as_taken() {
        let blocks = [lease("10.150.0.0/24", 2)];
        assert_eq!(
            choose(ME, &spec(), &blocks, &[net("10.150.1.0/24")], None),
            Choice::Claim(net("10.150.2.0/24"))
        );
    }

    #[test]
    fn a_block_taken_while_away_is_never_swapped_for_another() {
        let blocks = [lease("10.150.3.0/24", 3)];
        assert_eq!(
            choose(ME, &spec(), &blocks, &[], Some(net("10.150.3.0/24"))),
            Choice::TakenWhileAway {
                block: net("10.150.3.0/24"),
                holder: Some("10.0.0.3".into())
            }
        );
        assert_eq!(
            choose(
                ME,
                &spec(),
                &[],
                &[net("10.150.3.0/24")],
                Some(net("10.150.3.0/24"))
            ),
            Choice::TakenWhileAway {
                block: net("10.150.3.0/24"),
                holder: None
            }
        );
    }

    #[test]
    fn a_full_network_says_so() {
        let mut small = spec();
        small.subnet = net("10.150.0.0/24");
        let blocks = [lease("10.150.0.0/24", 2)];
        assert_eq!(choose(ME, &small, &blocks, &[], None), Choice::Full);
    }
}
