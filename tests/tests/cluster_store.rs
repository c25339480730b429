//! The cluster store cannot freeze the daemon or split a network: a partitioned etcd,
//! a malformed record put by another client, and a block taken while its host was away.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use netbpf_tests::{
    TestHost,
    cluster::{Etcd, Underlay, create_overlay, host_on, peers},
    host::netbpf_bin,
    hostile::sleeper,
};

/// `netbpf ps` answers within a second.
fn answers_quickly(host: &TestHost, when: &str) {
    let started = Instant::now();
    host.ok(&["ps"]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "{when}: netbpf ps took {took:?}"
    );
}

#[test]
fn a_partitioned_store_fails_changes_in_time_and_never_holds_up_the_api() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.250");
    let a = host_on(&underlay, &etcd, 1);
    create_overlay(&[&a], "10.150.0.0/16", &[]);
    sleeper(&a, "c", "ovl");

    etcd.partition();
    // A change that needs the store, in the background, while the API keeps answering.
    let socket = a.socket.clone();
    let change = std::thread::spawn(move || {
        let started = Instant::now();
        let out = Command::new(netbpf_bin())
            .args([
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.151.0.0/16",
                "ov2",
            ])
            .env("NETBPF_SOCKET", &socket)
            .output();
        (out, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..10 {
        answers_quickly(&a, "during a partition");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (out, took) = change.join().unwrap();
    let out = out.unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("did not answer in time") || said.contains("unreachable"),
        "{said}"
    );
    assert!(took < Duration::from_secs(10), "the change took {took:?}");

    etcd.heal();
    // (Not `ov2` again: the create that timed out may still land once the link is back,
    // as its error said, and then `ov2` exists.)
    netbpf_tests::eventually(30, "changes to work again after the partition", || {
        a.netbpf(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.152.0.0/16",
            "ov3",
        ])
        .code
            == 0
    });
}

#[test]
fn a_malformed_block_record_counts_as_taken() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.250");
    // Another client wrote garbage where the network's first block would go.
    etcd.put_raw("/netbpf/v1/blocks/ovl/10.152.0.0-24", "not json");
    let a = host_on(&underlay, &etcd, 1);
    create_overlay(&[&a], "10.152.0.0/16", &[]);
    let blocks = peers(&a, "ovl");
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_ne!(blocks[0].0, "10.152.0.0/24", "{blocks:?}");
    answers_quickly(&a, "with a malformed record");
    let log = a.daemon_log();
    assert_eq!(log.matches("malformed record").count(), 1, "{log}");
}

#[test]
fn a_host_whose_block_was_taken_while_it_was_away_never_advertises_another() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.250");
    let mut a = host_on(&underlay, &etcd, 1);
    let b = host_on(&underlay, &etcd, 2);
    create_overlay(&[&a, &b], "10.153.0.0/16", &[]);
    sleeper(&a, "c", "ovl");
    let block_of_a = |view: &[(String, String)]| {
        view.iter()
            .filter(|(_, vtep)| vtep == "10.0.0.1")
            .map(|(block, _)| block.clone())
            .collect::<Vec<_>>()
    };
    let before = block_of_a(&peers(&b, "ovl"));
    assert_eq!(before.len(), 1);

    // A is away longer than its lease; a new host comes and gets the freed block.
    a.kill_daemon();
    netbpf_tests::eventually(30, "A's lease to expire", || {
        block_of_a(&peers(&b, "ovl")).is_empty()
    });
    let c = host_on(&underlay, &etcd, 3);
    netbpf_tests::eventually(10, "the new host to hold a block", || {
        peers(&c, "ovl").iter().any(|(_, v)| v == "10.0.0.3")
    });
    let taken = peers(&c, "ovl");
    assert!(
        taken
            .iter()
            .any(|(block, v)| *block == before[0] && v == "10.0.0.3"),
        "{taken:?}"
    );

    // A comes back: its containers use the old block, so it advertises no other.
    a.start_daemon(&["--cluster-store", &etcd.url(), "--vtep-addr", "10.0.0.1"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        block_of_a(&peers(&b, "ovl")).is_empty(),
        "{:?}",
        peers(&b, "ovl")
    );
    assert!(
        a.daemon_log().contains("taken while it was away"),
        "{}",
        a.daemon_log()
    );
}

#[test]
fn records_from_the_store_are_checked_before_they_count() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.250");
    let a = host_on(&underlay, &etcd, 1);
    let b = host_on(&underlay, &etcd, 2);
    create_overlay(&[&a, &b], "10.154.0.0/16", &[]);
    // A network with a short id (a daemon joining it panicked naming its bridge).
    etcd.put_raw(
        "/netbpf/v1/networks/evil",
        r#"{"id":"abc","name":"evil","subnet":"10.155.0.0/16","vni":99,"port":4789,"created":""}"#,
    );
    sleeper(&b, "web", "ovl");
    sleeper(&a, "client", "ovl");
    let web_ip = b.ip_of("web", "ovl");
    // A name for web's address from a host that holds no block: a forgery.
    etcd.put_raw(
        "/netbpf/v1/names/ovl/10.0.0.9/bank",
        &format!(r#"{{"network":"ovl","name":"bank","ip":"{web_ip}","vtep":"10.0.0.9"}}"#),
    );
    let dig = |name: &str| {
        a.netbpf(&[
            "exec", "client", "--", "dig", "+time=2", "+tries=1", "+short", name,
        ])
        .stdout
        .trim()
        .to_owned()
    };
    netbpf_tests::eventually(15, "B's container name on A", || dig("web") == web_ip);
    // (Not a name here, so it is forwarded upstream, where nothing answers.)
    let forged = dig("bank");
    assert!(
        !forged.contains(&web_ip),
        "a forged name answered: {forged}"
    );
    for host in [&a, &b] {
        answers_quickly(host, "after malformed records");
        assert!(!host.ok(&["network", "ls"]).contains("evil"));
    }
    assert!(
        a.daemon_log().contains("ignoring a cluster store record"),
        "{}",
        a.daemon_log()
    );

    // The overlay cannot be removed while another host has containers on it.
    a.ok(&["rm", "-f", "client"]);
    let refused = a.fails(&["network", "rm", "ovl"]);
    assert!(
        refused.contains("has containers on other hosts (10.0.0.2)"),
        "{refused}"
    );
    b.ok(&["rm", "-f", "web"]);
    netbpf_tests::eventually(15, "the overlay to be removable", || {
        a.netbpf(&["network", "rm", "ovl"]).code == 0
    });
}
