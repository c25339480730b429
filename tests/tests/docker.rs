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
