//! The daemon's background loops, each on its own task: flow expiry, container exits,
//! the host's resolv.conf, the host's address changes. Each takes the controller's lock
//! only to hand over what it found.

use std::{path::PathBuf, time::Duration};

use tokio::sync::mpsc;

use crate::{
    controller::{Controller, Shared},
    datapath::sweep::FlowSweeper,
};

/// The daemon's background loops: flow expiry every 10 s (off the lock), container exits handed to the
/// controller in the order they come, and the host's resolv.conf watched (read every 2 s
/// off the lock; the controller hears only of a change).
pub fn spawn_loops(
    ctl: &Shared,
    mut exits: mpsc::UnboundedReceiver<crate::exits::ExitEvent>,
    resolv_conf: PathBuf,
    bpffs: PathBuf,
) -> Vec<tokio::task::JoinHandle<()>> {
    let resolvers = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut last = None;
            loop {
                tick.tick().await;
                let text = tokio::fs::read_to_string(&resolv_conf)
                    .await
                    .unwrap_or_default();
                if last.as_ref() != Some(&text) {
                    last = Some(text.clone());
                    let _ = ctl.run(move |c| c.set_host_resolv_conf(text)).await;
                }
            }
        })
    };
    let expiry = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            let mut sweeper = match FlowSweeper::open(&bpffs) {
                Ok(sweeper) => Some(sweeper),
                Err(error) => {
                    tracing::error!(%error, "no flow expiry: cannot open the conntrack maps");
                    None
                }
            };
            while let Some(owned) = sweeper.take() {
                tick.tick().await;
                // Off the controller lock, on a blocking thread: only the count takes it.
                let Ok((owned, swept)) = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let swept = owned.sweep(crate::uplink::monotonic_ns());
                    tracing::debug!(took = ?started.elapsed(), "flow expiry sweep");
                    (owned, swept)
                })
                .await
                else {
                    break;
                };
                sweeper = Some(owned);
                match swept {
                    Ok(flows) => {
                        let _ = ctl.run(move |c| c.set_tracked_flows(flows)).await;
                    }
                    Err(error) => tracing::warn!(%error, "flow expiry sweep"),
                }
            }
        })
    };
    let exit = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            while let Some(event) = exits.recv().await {
                let _ = ctl.run(move |c| c.on_exit(event)).await;
            }
        })
    };
    vec![expiry, exit, resolvers, follow_addresses(ctl)]
}

/// Follows the host's address changes (a DHCP renew): a burst of netlink events (delete,
/// add) is let settle for 200 ms, then the uplink re-reads its addresses.
fn follow_addresses(ctl: &Shared) -> tokio::task::JoinHandle<()> {
    let ctl = ctl.clone();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut changes = match crate::netlink::address_changes() {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(%error, "cannot follow address changes");
                return;
            }
        };
        while changes.next().await.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            while changes.try_recv().is_ok() {}
            let _ = ctl.run(Controller::follow_addresses).await;
        }
    })
}
