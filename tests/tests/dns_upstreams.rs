//! Where the embedded DNS forwards: to the host's own resolvers, a loopback stub such as
//! systemd-resolved's 127.0.0.53 included (a split or corporate DNS lives behind it), and
//! to the new ones when the host's resolv.conf changes.

use std::time::Duration;

use netbpf_tests::TestHost;

/// A stub resolver on `addr` in the host namespace answering `corp.example` with `answer`.
fn stub(host: &mut TestHost, addr: &str, answer: &str) {
    let cmd = host.on_host(
        "dnsmasq",
        &[
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={addr}"),
            &format!("--address=/corp.example/{answer}"),
            "--address=/#/",
            "--pid-file=",
            "--user=root",
        ],
    );
    host.background(cmd);
    std::thread::sleep(Duration::from_millis(300));
}

fn lookup(host: &TestHost, name: &str) -> String {
    host.netbpf(&[
        "exec", "c", "--", "dig", "+time=3", "+tries=1", "+short", name,
    ])
    .stdout
    .trim()
    .to_owned()
}

#[test]
fn the_embedded_dns_forwards_to_the_hosts_loopback_stub_and_follows_its_changes() {
    let mut host = TestHost::bare();
    let resolv_conf = host.dir.join("resolv.conf");
    std::fs::write(&resolv_conf, "search corp.example\nnameserver 127.0.0.53\n").unwrap();
    host.start_daemon(&["--resolv-conf", resolv_conf.to_str().unwrap()]);
    stub(&mut host, "127.0.0.53", "10.99.0.5");
    host.ok(&["network", "create", "n"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "c",
        "--network",
        "n",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(lookup(&host, "intranet.corp.example"), "10.99.0.5");

    // A VPN comes up and rewrites resolv.conf: the next queries go to its resolver.
    stub(&mut host, "127.0.0.54", "10.99.0.6");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.54\n").unwrap();
    netbpf_tests::eventually(10, "the new resolver to answer", || {
        lookup(&host, "intranet.corp.example") == "10.99.0.6"
    });
}
