//! containerd's `ctr run --cni` on a netbpf network through the CNI plugin: the container
//! gets netbpf's address and fast path, and the attachment goes when the task ends.

use netbpf_tests::{
    TestHost,
    containerd::{Containerd, IMAGE},
    image,
};

#[test]
fn ctr_run_with_cni_puts_a_container_on_a_netbpf_network() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.127.0.0/24", "nbctr"]);
    let containerd = Containerd::start(&host, "nbctr", "hello from containerd\n");

    // In the foreground, as ctr tears its CNI network down only when the task it waits
    // for ends (a detached one is never torn down by ctr).
    let mut run = vec![
        "run",
        "--rm",
        "--cni",
        "--snapshotter",
        "native",
        IMAGE,
        "web",
    ];
    run.extend(image::HTTPD);
    let log = host.dir.join("ctr-run.log");
    let mut web = containerd
        .command(&run)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("ctr run");
    let record = "cni-default-web-eth0";
    netbpf_tests::eventually(30, "the CNI attachment", || {
        if let Ok(Some(status)) = web.try_wait() {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("ctr run ended ({status}): {output}");
        }
        host.netbpf(&["inspect", record]).code == 0
    });
    let view = host.json(&["inspect", record]);
    let ip = view["Networks"]["nbctr"]["IPAddress"]
        .as_str()
        .unwrap_or_else(|| panic!("{view}"))
        .to_owned();
    assert!(ip.starts_with("10.127.0."), "{view}");

    // A netbpf container on the same network fetches the page through the fast path.
    host.ok(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        "nbctr",
        "--",
        "sleep",
        "600",
    ]);
    let page = host.ok(&[
        "exec",
        "client",
        "--",
        "curl",
        "-sf",
        "--max-time",
        "5",
        &format!("http://{ip}/"),
    ]);
    assert!(page.contains("hello from containerd"), "{page}");
    assert!(host.fast_packets() > 0, "nothing took the fast path");

    // The task killed: ctr's DEL takes the attachment and its veth away.
    let killed = containerd.ctr(&["tasks", "kill", "-s", "SIGKILL", "web"]);
    assert_eq!(killed.code, 0, "{}", killed.stderr);
    let _ = web.wait();
    netbpf_tests::eventually(15, "the attachment to go", || {
        host.netbpf(&["inspect", record]).code != 0
    });
    let veths = host
        .links(&host.host_ns)
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .count();
    assert_eq!(
        veths,
        1,
        "only the client's veth is left: {:?}",
        host.links(&host.host_ns)
    );
}
