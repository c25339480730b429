//! The flow-expiry sweep over a full conntrack table holds nobody up: it runs off the
//! controller lock with batch map operations, so the API answers throughout.

use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use netbpf_common::{FlowKey, IpAddrKey, MAX_FLOWS, NAT_REWRITE_SRC, NatEntry};
use netbpf_tests::TestHost;

/// Fills the pinned `CONNTRACK` with `count` flows idle since boot (all expired).
fn fill_with_stale_flows(host: &TestHost, count: u32) {
    let data = MapData::from_pin(host.bpffs.join("maps/CONNTRACK")).expect("CONNTRACK pin");
    let mut flows: HashMap<MapData, FlowKey, NatEntry> =
        HashMap::try_from(Map::LruHashMap(data)).expect("a hash map");
    for i in 0..count {
        let key = FlowKey {
            src: IpAddrKey::from_v4([10, 99, (i >> 8) as u8, i as u8]),
            dst: IpAddrKey::from_v4([192, 0, 2, (i >> 16) as u8]),
            sport: 40_000,
            dport: 443,
            proto: 17,
            _pad: [0; 3],
        };
        let entry = NatEntry {
            action: NAT_REWRITE_SRC,
            last_seen_ns: 1,
            ..NatEntry::default()
        };
        flows.insert(key, entry, 0).expect("insert a flow");
    }
}

#[test]
fn sweeping_a_full_conntrack_table_holds_up_no_api_request() {
    let host = TestHost::new();
    host.ok(&["run", "-d", "--name", "c", "--", "sleep", "600"]);
    fill_with_stale_flows(&host, MAX_FLOWS);

    // Through at least one sweep (every 10 s): every request answers promptly, and the
    // sweep empties the table.
    let until = Instant::now() + Duration::from_secs(12);
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let started = Instant::now();
        host.ok(&["ps"]);
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        slowest < Duration::from_millis(300),
        "a request waited {slowest:?} during the sweep"
    );
    let data = MapData::from_pin(host.bpffs.join("maps/CONNTRACK")).unwrap();
    let flows: HashMap<MapData, FlowKey, NatEntry> =
        HashMap::try_from(Map::LruHashMap(data)).unwrap();
    let left = flows.keys().count();
    assert!(left < 100, "{left} stale flows survived the sweep");
    let log = host.daemon_log();
    let sweeps: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("flow expiry sweep"))
        .collect();
    eprintln!("sweeps: {sweeps:#?}");
}
