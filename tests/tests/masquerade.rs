//! Masquerade: containers reach the outside as the uplink's address, with no route back to
//! their subnets and no netfilter rule.

use std::time::{Duration, Instant};

use netbpf_tests::{HOST_UPLINK_IP, OUTSIDE_IP, TestHost};

#[test]
fn containers_reach_outside_masqueraded_to_the_uplink_address() {
    let mut host = TestHost::new();
    let log = host.dir.join("outside-http.log");
    let mut server = host.outside(
        "sh",
        &[
            "-c",
            &format!(
                "exec python3 -m http.server 8000 --bind {OUTSIDE_IP} 2>{}",
                log.display()
            ),
        ],
    );
    server.stdin(std::process::Stdio::null());
    host.extra.push(server.spawn().unwrap());
    host.ok(&["run", "-d", "--name", "a", "--", "sleep", "600"]);
    host.ok(&["run", "-d", "--name", "b", "--", "sleep", "600"]);
    let url = format!("http://{OUTSIDE_IP}:8000/");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The outside has no route to container subnets: only masquerade can make this work.
    loop {
        let run = host.netbpf(&[
            "exec",
            "a",
            "--",
            "curl",
            "-s",
            "-m",
            "2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        if run.stdout == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "container a cannot reach outside: {}",
            run.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Two containers using the same source port get distinct translated ports.
    for c in ["a", "b"] {
        let run = host.netbpf(&[
            "exec",
            c,
            "--",
            "curl",
            "-s",
            "-m",
            "2",
            "--local-port",
            "40000",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        assert_eq!(
            run.stdout, "200",
            "{c} with source port 40000: {}",
            run.stderr
        );
    }
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains(&format!("{HOST_UPLINK_IP} - -")),
        "server did not see the host address: {seen}"
    );
    assert!(
        !seen.contains("10.213."),
        "a container address leaked: {seen}"
    );
    assert!(host.pings("a", OUTSIDE_IP), "ping through masquerade");
    assert!(host.json(&["info"])["tracked_flows"].as_u64().is_some());
}
