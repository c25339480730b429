//! Docker's remote network driver, served by the daemon (`--docker-plugin`), driven by a
//! real dockerd: `docker network create -d netbpf` and `docker network rm`.

use netbpf_tests::{TestHost, docker::Dockerd, must};

#[test]
fn docker_networks_on_the_netbpf_driver_are_netbpf_networks() {
    let mut host = TestHost::bare();
    let plugins = host.dir.join("plugins");
    let socket = plugins.join("netbpf.sock");
    host.start_daemon(&["--docker-plugin", socket.to_str().unwrap()]);
    let dockerd = Dockerd::start(&host, &plugins);

    let id = dockerd.ok(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--subnet",
        "10.123.0.0/24",
        "nb1",
    ]);
    let id = id.trim();
    // netbpf has it, with Docker's id, subnet and gateway, and its bridge is there.
    let name = format!("docker-{}", &id[..12]);
    let view = host.json(&["network", "inspect", &name]);
    assert_eq!(view[0]["Id"], id, "{view}");
    assert_eq!(
        view[0]["IPAM"]["Config"][0]["Subnet"], "10.123.0.0/24",
        "{view}"
    );
    assert_eq!(
        view[0]["IPAM"]["Config"][0]["Gateway"], "10.123.0.1",
        "{view}"
    );
    let bridge = format!("br-{}", &id[..12]);
    must("ip", &["-n", &host.host_ns, "link", "show", &bridge]);
    // netbpf's refusal reaches the docker CLI with its own message.
    let refused = dockerd.fails(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--subnet",
        "198.18.0.0/24",
        "nb2",
    ]);
    assert!(
        refused.contains("which the host already routes"),
        "{refused}"
    );
    assert!(!host.ok(&["network", "ls"]).contains("nb2"));

    dockerd.ok(&["network", "rm", "nb1"]);
    assert!(
        !host.ok(&["network", "ls"]).contains(&name),
        "the network outlived docker network rm"
    );
    assert!(!netbpf_tests::succeeds({
        let mut c = std::process::Command::new("ip");
        c.args(["-n", &host.host_ns, "link", "show", &bridge]);
        c
    }));
}

#[test]
fn docker_run_puts_containers_on_the_netbpf_data_plane() {
    let mut host = TestHost::bare();
    let plugins = host.dir.join("plugins");
    let socket = plugins.join("netbpf.sock");
    host.start_daemon(&["--docker-plugin", socket.to_str().unwrap()]);
    let dockerd = Dockerd::start(&host, &plugins);
    let tar = netbpf_tests::image::busybox_tar(&host.dir, "hello from docker\n");
    dockerd.ok(&["import", tar.to_str().unwrap(), "bb"]);
    dockerd.ok(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--subnet",
        "10.124.0.0/24",
        "nb1",
    ]);
    dockerd.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "nb1",
        "-p",
        "8080:80",
        "bb",
    ]
    .into_iter()
    .chain(netbpf_tests::image::HTTPD)
    .collect::<Vec<_>>());
    let web_ip = dockerd.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.nb1.IPAddress}}",
        "web",
    ]);
    let web_ip = web_ip.trim().to_owned();
    assert!(web_ip.starts_with("10.124.0."), "{web_ip}");
    let ps = host.ok(&["ps"]);
    assert!(
        ps.contains("docker-ep-"),
        "netbpf does not show the endpoint: {ps}"
    );

    // From outside, through netbpf's BPF DNAT: no docker-proxy, no DNAT rule.
    netbpf_tests::eventually(15, "the published port to answer", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });
    let rules = must("ip", &["netns", "exec", &host.host_ns, "iptables-save"]);
    assert!(!rules.contains("DNAT"), "{rules}");
    assert!(
        !netbpf_tests::succeeds({
            let mut c = std::process::Command::new("pgrep");
            c.arg("-f").arg("docker-proxy.*8080");
            c
        }),
        "a docker-proxy runs"
    );

    // By name through Docker's embedded DNS, and the page through netbpf's fast path.
    let found = dockerd.ok(&["run", "--rm", "--network", "nb1", "bb", "nslookup", "web"]);
    assert!(found.contains(&web_ip), "{found}");
    let request = netbpf_tests::image::http_get(&web_ip);
    let page = dockerd.ok(&[
        "run",
        "--rm",
        "--network",
        "nb1",
        "bb",
        "sh",
        "-c",
        &request,
    ]);
    assert!(page.contains("hello from docker"), "{page}");
    assert!(host.fast_packets() > 0, "nothing took the fast path");

    // netbpf's daemon killed and restarted: Docker's containers keep their network, and
    // the driver answers again on the same socket.
    host.kill_daemon();
    host.start_daemon(&["--docker-plugin", socket.to_str().unwrap()]);
    assert!(
        netbpf_tests::succeeds(host.outside(
            "curl",
            &["-sf", "--max-time", "2", "http://198.18.0.2:8080/"]
        )),
        "the published port died with the daemon"
    );
    assert!(
        host.ok(&["ps"]).contains("docker-ep-"),
        "the endpoint was not re-adopted"
    );

    // rm -f and network rm leave nothing behind.
    dockerd.ok(&["rm", "-f", "web"]);
    assert!(
        !host.ok(&["ps", "-a"]).contains("docker-ep-"),
        "the endpoint outlived the container"
    );
    assert!(!host.answers_from_outside("http://198.18.0.2:8080/"));
    dockerd.ok(&["network", "rm", "nb1"]);
    assert!(!host.ok(&["network", "ls"]).contains("docker-"));
}

#[test]
fn docker_networks_on_netbpf_are_isolated_and_publish_as_docker_does() {
    let (host, dockerd) = Dockerd::with_netbpf("hello\n", &[]);
    for (name, subnet) in [("nb1", "10.125.0.0/24"), ("nb2", "10.126.0.0/24")] {
        dockerd.ok(&[
            "network", "create", "-d", "netbpf", "--subnet", subnet, name,
        ]);
    }
    // Verbose httpd: it logs each client's address. One port for everyone, one for the
    // host only.
    let mut run = vec![
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "nb1",
        "-p",
        "8080:80",
    ];
    run.extend([
        "-p",
        "127.0.0.1:9090:80",
        "bb",
        "httpd",
        "-f",
        "-vv",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    dockerd.ok(&run);
    dockerd.ok(&[
        "run",
        "-d",
        "--name",
        "other",
        "--network",
        "nb2",
        "bb",
        "sleep",
        "600",
    ]);
    let web_ip = dockerd.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.nb1.IPAddress}}",
        "web",
    ]);
    let web_ip = web_ip.trim().to_owned();

    // From outside: the client's own address reaches the container; 127.0.0.1 is the
    // host's only.
    let url = "http://198.18.0.2:8080/";
    netbpf_tests::eventually(15, "the published port to answer", || {
        host.answers_from_outside(url)
    });
    let logs = dockerd.docker(&["logs", "web"]);
    assert!(
        logs.stderr.contains("198.18.0.1") || logs.stdout.contains("198.18.0.1"),
        "client address lost: {}{}",
        logs.stdout,
        logs.stderr
    );
    assert!(
        netbpf_tests::succeeds(host.on_host(
            "curl",
            &["-sf", "--max-time", "2", "http://127.0.0.1:9090/"]
        )),
        "127.0.0.1:9090 from the host"
    );
    assert!(
        !netbpf_tests::succeeds(host.outside(
            "curl",
            &["-sf", "--max-time", "2", "http://198.18.0.2:9090/"]
        )),
        "127.0.0.1-only port reached from outside"
    );

    // Isolation between two netbpf networks, until connected.
    let ping = |from: &str| {
        dockerd
            .docker(&["exec", from, "ping", "-c", "1", "-W", "1", &web_ip])
            .code
            == 0
    };
    assert!(!ping("other"), "nb2 reached nb1");
    dockerd.ok(&["network", "connect", "nb1", "other"]);
    assert!(ping("other"), "connected, other cannot reach web");
    assert_eq!(
        host.ok(&["ps"]).matches("docker-ep-").count(),
        3,
        "an endpoint per network"
    );
    dockerd.ok(&["network", "disconnect", "nb1", "other"]);
    assert!(!ping("other"), "disconnected, other still reaches web");
    assert_eq!(host.ok(&["ps"]).matches("docker-ep-").count(), 2);
}

#[test]
fn the_netbpf_ipam_driver_hands_out_netbpf_addresses() {
    let (host, dockerd) = Dockerd::with_netbpf("hello\n", &[]);
    // No --subnet: netbpf's IPAM picks a free /24 of its pool.
    let id = dockerd.ok(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--ipam-driver",
        "netbpf",
        "nbi",
    ]);
    let subnet = dockerd.ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        "nbi",
    ]);
    let subnet: ipnet::Ipv4Net = subnet.trim().parse().unwrap();
    assert!(
        "10.214.0.0/15"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&subnet),
        "{subnet}"
    );
    let view = host.json(&[
        "network",
        "inspect",
        &format!("docker-{}", &id.trim()[..12]),
    ]);
    assert_eq!(
        view[0]["IPAM"]["Config"][0]["Subnet"],
        subnet.to_string(),
        "{view}"
    );
    // Containers get its lowest free addresses, after the gateway.
    dockerd.ok(&[
        "run",
        "-d",
        "--name",
        "first",
        "--network",
        "nbi",
        "bb",
        "sleep",
        "600",
    ]);
    let ip = dockerd.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.nbi.IPAddress}}",
        "first",
    ]);
    let second = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 2);
    assert_eq!(ip.trim(), second.to_string());
    // A second network gets another /24.
    dockerd.ok(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--ipam-driver",
        "netbpf",
        "nbj",
    ]);
    let other = dockerd.ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        "nbj",
    ]);
    assert_ne!(other.trim(), subnet.to_string());
    dockerd.ok(&["rm", "-f", "first"]);
    dockerd.ok(&["network", "rm", "nbi", "nbj"]);
}

/// With the XDP stage on the uplink, a Docker container's veth has no XDP receiver (Docker
/// moved its end before netbpf could give it one): its published ports must go through
/// tcx, not be redirected at XDP into a veth that drops them.
#[test]
fn docker_published_ports_work_with_the_xdp_stage() {
    let (host, dockerd) = Dockerd::with_netbpf("hello\n", &["--xdp", "native"]);
    assert_eq!(host.json(&["info"])["nat_mode"], "xdp");
    dockerd.ok(&[
        "network",
        "create",
        "-d",
        "netbpf",
        "--subnet",
        "10.127.0.0/24",
        "nbx",
    ]);
    let mut run = vec![
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "nbx",
        "-p",
        "8080:80",
        "bb",
    ];
    run.extend(netbpf_tests::image::HTTPD);
    dockerd.ok(&run);
    netbpf_tests::eventually(15, "the published port to answer with XDP on", || {
        host.answers_from_outside("http://198.18.0.2:8080/")
    });
}
