//! Docker networks on netbpf beyond a plain bridge: macvlan, ipvlan and overlay through
//! `-o netbpf.driver=…`, and what a `dockerd` restart (with `--live-restore` too) keeps.

use netbpf_tests::{
    TestHost,
    cluster::{Etcd, Underlay, peers},
    docker::Dockerd,
    image, kernel_has_link_kind, must, succeeds,
};

/// `ip -d link show eth0` in a Docker container's network namespace.
fn container_link(dockerd: &Dockerd, container: &str) -> String {
    let pid = dockerd.ok(&["inspect", "-f", "{{.State.Pid}}", container]);
    must(
        "nsenter",
        &["-t", pid.trim(), "-n", "ip", "-d", "link", "show", "eth0"],
    )
}

fn ip_on(dockerd: &Dockerd, container: &str, network: &str) -> String {
    let format = format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}");
    dockerd
        .ok(&["inspect", "-f", &format, container])
        .trim()
        .to_owned()
}

/// The host's links whose names start with one of `prefixes`.
fn host_links(host: &TestHost, prefixes: &[&str]) -> Vec<String> {
    host.links(&host.host_ns)
        .into_iter()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .collect()
}

/// The page of `target` (an address or a name), fetched by a new container on `network`.
fn fetch_on(dockerd: &Dockerd, network: &str, target: &str) -> String {
    dockerd.ok(&[
        "run",
        "--rm",
        "--network",
        network,
        "bb",
        "sh",
        "-c",
        &image::http_get(target),
    ])
}

/// Whether a client in the LAN namespace fetches the page of `ip`.
fn lan_fetches(lan: &str, ip: &str) -> bool {
    let mut curl = std::process::Command::new("ip");
    curl.args(["netns", "exec", lan, "curl", "-sf", "--max-time", "2"])
        .arg(format!("http://{ip}/"));
    succeeds(curl)
}

fn run_web(dockerd: &Dockerd, name: &str, network: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--network", network];
    args.extend(extra);
    args.push("bb");
    args.extend(image::HTTPD);
    dockerd.ok(&args);
}

/// `docker network create` of a `driver` network on `lan0` (the test host's LAN).
fn create_args(driver: &str, name: &str) -> Vec<String> {
    [
        "network",
        "create",
        "-d",
        "netbpf",
        "-o",
        &format!("netbpf.driver={driver}"),
        "-o",
        "parent=lan0",
        "--subnet",
        "203.0.113.0/24",
        "--ip-range",
        "203.0.113.128/25",
        "--gateway",
        "203.0.113.2",
        name,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn docker_macvlan_and_ipvlan_networks_put_containers_on_the_parent() {
    let (mut host, dockerd) = Dockerd::with_netbpf("on the lan\n", &[]);
    let lan = host.add_lan();
    let create = |driver: &str, name: &str| dockerd.ok(&create_args(driver, name));
    let id = create("macvlan", "mv");
    let view = host.json(&[
        "network",
        "inspect",
        &format!("docker-{}", &id.trim()[..12]),
    ]);
    assert_eq!(view[0]["Driver"], "macvlan", "{view}");

    // The container sits on lan0 itself: a LAN neighbour fetches its page directly, with
    // no veth, no bridge and no published port in between.
    run_web(&dockerd, "web", "mv", &[]);
    let ip = ip_on(&dockerd, "web", "mv");
    assert!(ip.starts_with("203.0.113.1"), "{ip}");
    assert!(
        container_link(&dockerd, "web").contains("macvlan mode bridge"),
        "{}",
        container_link(&dockerd, "web")
    );
    assert!(host_links(&host, &["veth", "br-", "nbd"]).is_empty());
    netbpf_tests::eventually(10, "the macvlan container to answer on the LAN", || {
        lan_fetches(&lan, &ip)
    });
    // Ports cannot be published on it: refused with netbpf's message, not ignored.
    let refused = dockerd.fails(&[
        "run",
        "-d",
        "--network",
        "mv",
        "-p",
        "8085:80",
        "bb",
        "sleep",
        "60",
    ]);
    assert!(refused.contains("cannot publish ports"), "{refused}");

    // rm and network rm leave no interface behind.
    dockerd.ok(&["rm", "-f", "web"]);
    dockerd.ok(&["container", "prune", "-f"]);
    dockerd.ok(&["network", "rm", "mv"]);
    assert!(host_links(&host, &["nbd", "lan0."]).is_empty());
    assert!(!host.ok(&["network", "ls"]).contains("docker-"));

    // ipvlan (L2): the container shares lan0's MAC address; a kernel without ipvlan
    // refuses the network with the reason and keeps nothing of it.
    if kernel_has_link_kind("ipvlan") {
        create("ipvlan", "iv");
        ipvlan_container_shares_the_parent_mac(&host, &dockerd, &lan);
    } else {
        let refused = dockerd.fails(&create_args("ipvlan", "iv"));
        assert!(
            refused.contains("no ipvlan support (CONFIG_IPVLAN)"),
            "{refused}"
        );
        assert!(!host.ok(&["network", "ls"]).contains("docker-"));
    }
    // A driver option netbpf does not know is refused by name.
    let refused = dockerd.fails(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "-o",
        "netbpf.driver=macvlan",
        "-o",
        "parnet=lan0",
        "bad",
    ]);
    assert!(refused.contains("unknown option \"parnet\""), "{refused}");
    let refused = dockerd.fails(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "-o",
        "netbpf.driver=overlay",
        "bad",
    ]);
    assert!(refused.contains("needs -o netbpf.name=NAME"), "{refused}");
    assert!(host_links(&host, &["nbd"]).is_empty());
}

fn ipvlan_container_shares_the_parent_mac(host: &TestHost, dockerd: &Dockerd, lan: &str) {
    run_web(dockerd, "web2", "iv", &[]);
    let link = container_link(dockerd, "web2");
    assert!(link.contains("ipvlan"), "{link}");
    let parent_mac = must("ip", &["-n", &host.host_ns, "-br", "link", "show", "lan0"]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC address")
        .to_owned();
    assert!(parent_mac.contains(&mac), "{parent_mac} vs {link}");
    let ip = ip_on(dockerd, "web2", "iv");
    netbpf_tests::eventually(10, "the ipvlan container to answer on the LAN", || {
        lan_fetches(lan, &ip)
    });
    dockerd.ok(&["rm", "-f", "web2"]);
    dockerd.ok(&["network", "rm", "iv"]);
}

#[test]
fn docker_networks_and_their_containers_come_back_after_a_dockerd_restart() {
    let (host, dockerd) = Dockerd::with_netbpf("after a restart\n", &[]);
    dockerd.ok(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--subnet",
        "10.126.0.0/24",
        "nb",
    ]);
    let restart = [
        "--restart",
        "always",
        "--stop-timeout",
        "1",
        "-p",
        "8080:80",
    ];
    run_web(&dockerd, "web", "nb", &restart);
    netbpf_tests::eventually(15, "the published port to answer", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });

    // dockerd stops its containers (Leave, DeleteEndpoint) and, started again, restarts
    // `web` on the network it remembers: Docker replays no CreateNetwork, netbpf kept it.
    let dockerd = dockerd.restart();
    netbpf_tests::eventually(30, "web to run again", || {
        dockerd
            .ok(&["inspect", "-f", "{{.State.Running}}", "web"])
            .trim()
            == "true"
    });
    netbpf_tests::eventually(15, "the published port to answer again", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });
    let ps = host.ok(&["ps", "-a"]);
    assert_eq!(ps.matches("docker-ep-").count(), 1, "{ps}");
    assert_eq!(
        host_links(&host, &["veth"]).len(),
        1,
        "{:?}",
        host.links(&host.host_ns)
    );
    // The network still takes new containers and goes away when asked.
    let ip = ip_on(&dockerd, "web", "nb");
    let page = fetch_on(&dockerd, "nb", &ip);
    assert!(page.contains("after a restart"), "{page}");
    dockerd.ok(&["rm", "-f", "web"]);
    dockerd.ok(&["network", "rm", "nb"]);
    assert!(host_links(&host, &["veth", "br-"]).is_empty());
    assert!(!host.ok(&["network", "ls"]).contains("docker-"));
}

#[test]
fn containers_on_netbpf_keep_serving_through_a_live_restore_dockerd_restart() {
    let (host, dockerd) = Dockerd::with_netbpf_live_restore("live restore\n");
    dockerd.ok(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--subnet",
        "10.127.0.0/24",
        "nb",
    ]);
    run_web(&dockerd, "web", "nb", &["-p", "8080:80"]);
    netbpf_tests::eventually(15, "the published port to answer", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });
    let started = dockerd.ok(&["inspect", "-f", "{{.State.StartedAt}}", "web"]);

    // Docker's --live-restore: dockerd goes away and comes back; its container, and
    // netbpf's endpoint and published port for it, never stop.
    let every = std::time::Duration::from_millis(100);
    let requests = host.requests_from_outside("http://198.18.0.2:8080/", every);
    std::thread::sleep(5 * every);
    let dockerd = dockerd.restart_live("web");
    std::thread::sleep(5 * every);
    let (failed, sent) = requests.stop();
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the restart"
    );
    assert!(sent >= 5, "only {sent} requests");
    assert_eq!(
        dockerd.ok(&["inspect", "-f", "{{.State.StartedAt}}", "web"]),
        started,
        "web was restarted"
    );
    let ps = host.ok(&["ps", "-a"]);
    assert_eq!(ps.matches("docker-ep-").count(), 1, "{ps}");

    // The restored dockerd still drives netbpf: a new container joins and finds `web` by
    // name (Docker's DNS), and removing both leaves nothing.
    let page = fetch_on(&dockerd, "nb", "web");
    assert!(page.contains("live restore"), "{page}");
    dockerd.ok(&["rm", "-f", "web"]);
    assert!(!host.ok(&["ps", "-a"]).contains("docker-ep-"));
    dockerd.ok(&["network", "rm", "nb"]);
    assert!(host_links(&host, &["veth", "br-"]).is_empty());
}

#[test]
fn a_docker_overlay_network_spans_two_hosts_with_addresses_from_each_hosts_block() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, "10.0.0.250");
    let (a, docker_a) = Dockerd::on_cluster(&underlay, &etcd, 1, "across hosts\n");
    let (b, docker_b) = Dockerd::on_cluster(&underlay, &etcd, 2, "across hosts\n");
    let create = |dockerd: &Dockerd, subnet: &str, name: &str| {
        dockerd.docker(&[
            "network",
            "create",
            "-d",
            "netbpf",
            "-o",
            "netbpf.driver=overlay",
            "-o",
            "netbpf.name=ov",
            "--ipam-driver",
            "netbpf",
            "--subnet",
            subnet,
            name,
        ])
    };
    // Defined from A; B's Docker network of the same netbpf name joins it.
    assert_eq!(create(&docker_a, "10.60.0.0/16", "ov").code, 0);
    assert_eq!(create(&docker_b, "10.60.0.0/16", "ov").code, 0);
    let refused = create(&docker_b, "10.61.0.0/16", "ov-other");
    assert!(
        refused
            .stderr
            .contains("is defined with subnet 10.60.0.0/16"),
        "{}",
        refused.stderr
    );

    // Each host's containers get addresses of its own block.
    run_web(&docker_a, "web", "ov", &[]);
    let web_ip = ip_on(&docker_a, "web", "ov");
    netbpf_tests::eventually(10, "both hosts to hold a block", || {
        peers(&b, "ov").len() == 2
    });
    let blocks = peers(&a, "ov");
    let block_of = |vtep: &str| -> ipnet::Ipv4Net {
        let (block, _) = blocks.iter().find(|(_, v)| v == vtep).expect("a block");
        block.parse().unwrap()
    };
    let web_addr: std::net::Ipv4Addr = web_ip.parse().unwrap();
    assert!(
        block_of("10.0.0.1").contains(&web_addr),
        "{web_ip} {blocks:?}"
    );
    let client = docker_b.ok(&[
        "run",
        "--rm",
        "--network",
        "ov",
        "bb",
        "sh",
        "-c",
        &format!("ip -4 -o addr show eth0; {}", image::http_get(&web_ip)),
    ]);
    assert!(client.contains("across hosts"), "{client}");
    let client_addr = client
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .unwrap_or_else(|| panic!("{client}"));
    assert!(
        block_of("10.0.0.2").contains(&client_addr),
        "{client} {blocks:?}"
    );

    // docker network rm forgets Docker's name for it; the overlay stays in the cluster
    // store (netbpf network rm removes it from every host).
    docker_a.ok(&["rm", "-f", "web"]);
    docker_a.ok(&["network", "rm", "ov"]);
    docker_b.ok(&["network", "rm", "ov"]);
    assert_eq!(a.netbpf(&["network", "inspect", "ov"]).code, 0);
    a.ok(&["network", "rm", "ov"]);
    netbpf_tests::eventually(10, "the overlay to leave B", || {
        b.netbpf(&["network", "inspect", "ov"]).code != 0
    });
}
