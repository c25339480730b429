//! The flow-expiry sweep, which the daemon runs every 10 s off the controller lock: its own
//! handles on the pinned conntrack maps, read and pruned with batch operations, so a full
//! table costs a few dozen syscalls and no API request ever waits for it.

use std::{collections::HashMap, io, os::fd::AsFd as _, path::Path};

use aya::maps::MapData;
use netbpf_common::{FlowKey, NAT_TIMEOUT_NEW_NS, NatEntry, names};

use super::{DatapathError, TrackedFlows, batch, maps::expired_flows};

pub struct FlowSweeper {
    conntrack: MapData,
    conntrack_new: MapData,
}

impl FlowSweeper {
    /// Opens the pinned conntrack maps under `bpffs` (after the daemon has loaded them).
    pub fn open(bpffs: &Path) -> Result<Self, DatapathError> {
        let open = |name: &str| MapData::from_pin(bpffs.join("maps").join(name));
        Ok(Self {
            conntrack: open(names::CONNTRACK)?,
            conntrack_new: open(names::CONNTRACK_NEW)?,
        })
    }

    /// Deletes tracked flows idle for longer than their timeout (each half of a
    /// masqueraded flow only with the other, [`expired_flows`]) and unconfirmed flows idle
    /// for [`NAT_TIMEOUT_NEW_NS`]; returns how many of each remain.
    pub fn sweep(&self, now_ns: u64) -> io::Result<TrackedFlows> {
        let confirmed = self.conntrack.fd().as_fd();
        let flows: HashMap<FlowKey, NatEntry> = batch::read_all(confirmed)?.into_iter().collect();
        let expired = expired_flows(&flows, now_ns);
        batch::delete(confirmed, &expired)?;
        let unconfirmed = self.conntrack_new.fd().as_fd();
        let new: Vec<(FlowKey, NatEntry)> = batch::read_all(unconfirmed)?;
        let stale: Vec<FlowKey> = new
            .iter()
            .filter(|(_, entry)| now_ns.saturating_sub(entry.last_seen_ns) > NAT_TIMEOUT_NEW_NS)
            .map(|(key, _)| *key)
            .collect();
        batch::delete(unconfirmed, &stale)?;
        Ok(TrackedFlows {
            confirmed: flows.len() - expired.len(),
            unconfirmed: new.len() - stale.len(),
        })
    }
}
