//! `network disconnect` of the network that carries a container's published ports and
//! default route: both move to the container's next network, as in Docker; and one parent
//! interface serves one macvlan network.

use netbpf_tests::{OUTSIDE_IP, TestHost};

#[test]
fn disconnect_moves_published_ports_and_the_default_route_to_the_next_network() {
    let host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.141.0.0/24", "front"]);
    host.ok(&["network", "create", "--subnet", "10.142.0.0/24", "back"]);
    host.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "-p",
        "8080:80",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
    ]);
    host.ok(&["network", "connect", "back", "web"]);
    netbpf_tests::eventually(10, "web to answer", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });

    host.ok(&["network", "disconnect", "front", "web"]);
    // The port now leads to web's address on back, and web still gets out.
    netbpf_tests::eventually(5, "the port to answer through back", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });
    assert_eq!(host.ok(&["port", "web"]), "80/tcp -> 0.0.0.0:8080\n");
    let routes = host.ok(&["exec", "web", "--", "ip", "route", "show", "default"]);
    assert!(routes.contains("via 10.142.0.1"), "{routes}");
    assert!(host.pings("web", OUTSIDE_IP), "no way out after disconnect");

    // The last network gone: the port answers no more, and is free for another container.
    host.ok(&["network", "disconnect", "back", "web"]);
    assert!(!host.answers_from_outside("http://198.18.0.2:8080/"));
    host.ok(&[
        "run",
        "-d",
        "--name",
        "web2",
        "--network",
        "back",
        "-p",
        "8080:80",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
    ]);
    netbpf_tests::eventually(10, "web2 to answer on the freed port", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });
}

#[test]
fn a_parent_interface_serves_one_macvlan_network() {
    let host = TestHost::new();
    let create = |name: &str, subnet: &str| {
        host.netbpf(&[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            subnet,
            "-o",
            "parent=up0",
            name,
        ])
    };
    assert_eq!(create("lan1", "192.168.91.0/24").code, 0);
    let second = create("lan2", "192.168.92.0/24");
    assert_ne!(second.code, 0);
    assert!(
        second
            .stderr
            .contains("network lan1 is already using parent interface up0"),
        "{}",
        second.stderr
    );
    host.ok(&["network", "rm", "lan1"]);
    assert_eq!(create("lan2", "192.168.92.0/24").code, 0);
}
