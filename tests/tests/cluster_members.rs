//! A cluster store of three etcd members, as run in production: the daemon is given every
//! member, and neither a member's death nor a `--live-restore` restart of a daemon changes
//! what the other hosts see (no block vanishes and comes back, no route flaps).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use netbpf_tests::{
    TestHost,
    cluster::{Etcd, Underlay, create_overlay, peers, store_args},
    eventually,
    hostile::sleeper,
};

fn host(underlay: &Underlay, url: &str, n: u8) -> TestHost {
    let mut host = TestHost::bare();
    let mut args = store_args(underlay, url, &host, n);
    args.push("--live-restore".into());
    host.start_daemon(&args.iter().map(String::as_str).collect::<Vec<_>>());
    host
}

#[test]
fn a_dead_store_member_or_a_live_restore_changes_nothing_for_the_other_hosts() {
    let underlay = Underlay::new();
    let mut members = Etcd::start_members(&underlay, &["10.0.0.250", "10.0.0.251", "10.0.0.252"]);
    let url = Etcd::cluster_url(&members);
    let mut a = host(&underlay, &url, 1);
    let b = host(&underlay, &url, 2);
    create_overlay(&[&a, &b], "10.150.0.0/16", &[]);
    sleeper(&a, "srv", "ovl");
    sleeper(&b, "cli", "ovl");
    let srv = a.ip_of("srv", "ovl");
    eventually(10, "b to reach a's container", || b.pings("cli", &srv));
    let before = peers(&b, "ovl");
    let lease = |host: &TestHost| host.json(&["info"])["cluster_store"]["lease"].clone();
    let leases = (lease(&a), lease(&b));
    assert!(leases.0.is_string(), "{}", a.json(&["info"]));

    // b's view of a, watched from here to the end: it must never change. (The end is
    // longer than the lease TTL after the last event, so a lease given up anywhere would
    // have expired and its blocks vanished in sight.)
    let stop = AtomicBool::new(false);
    let changes = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut changes = vec![];
            while !stop.load(Ordering::Relaxed) {
                let now = peers(&b, "ovl");
                if now != before {
                    changes.push(now);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            changes
        });
        // (Stopped on every way out of here, a failed assertion's too.)
        let _stop_watching = StopOnDrop(&stop);
        // Each member dies in turn (two stay: a quorum); the first is the one both
        // daemons' sessions run on, and so on. Sessions move to the next member, keep
        // their leases, and changes still go through.
        for (i, subnet) in ["10.151.0.0/16", "10.152.0.0/16", "10.153.0.0/16"]
            .iter()
            .enumerate()
        {
            members[i].stop();
            let name = format!("more{i}");
            eventually(10, "an overlay change with a member dead", || {
                a.netbpf(&[
                    "network", "create", "-d", "overlay", "--subnet", subnet, &name,
                ])
                .code
                    == 0
            });
            let store = &a.json(&["info"])["cluster_store"];
            assert_eq!(store["connected"], true, "{store}");
            let dead = format!("http://{}:2379", members[i].addr);
            assert_ne!(store["member"], dead.as_str(), "{store}");
            assert_eq!((lease(&a), lease(&b)), leases, "member {i} dead");
            assert!(b.pings("cli", &srv), "member {i} dead: the tunnel stopped");
            members[i].resume();
        }
        // A daemon upgraded under --live-restore takes its lease up again.
        a.stop_daemon();
        let args = store_args_again(&url, 1);
        a.start_daemon(&args.iter().map(String::as_str).collect::<Vec<_>>());
        eventually(10, "a's session", || lease(&a).is_string());
        assert_eq!(lease(&a), leases.0, "a's lease after its live restore");
        std::thread::sleep(Duration::from_secs(11));
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert!(
        changes.is_empty(),
        "b saw {changes:?} instead of {before:?}"
    );
    assert!(b.pings("cli", &srv), "after a's live restore");
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The flags of host `n` once it is plugged in already.
fn store_args_again(url: &str, n: u8) -> Vec<String> {
    [
        "--cluster-store",
        url,
        "--vtep-addr",
        &format!("10.0.0.{n}"),
        "--live-restore",
    ]
    .map(str::to_owned)
    .to_vec()
}
