//! What a hostile container or LAN neighbour does, for the firewall tests: raw frames sent
//! with `AF_PACKET`, which nothing in the sender's stack checks or routes.

use crate::{
    TestHost, must,
    packet::{self, INJECT},
};

/// Sends `frame` out of container `name`'s `eth0`.
pub fn inject_from_container(host: &TestHost, name: &str, frame: &[u8]) {
    host.ok(&[
        "exec",
        name,
        "--",
        "python3",
        "-c",
        INJECT,
        "eth0",
        &packet::hex(frame),
    ]);
}

/// Sends `frame` out of `ifname` in namespace `ns` (an underlay station, say).
pub fn inject_in_ns(ns: &str, ifname: &str, frame: &[u8]) {
    must(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "python3",
            "-c",
            INJECT,
            ifname,
            &packet::hex(frame),
        ],
    );
}

/// A container `name` on `network` that only sleeps: a sender of raw frames, or a target.
pub fn sleeper(host: &TestHost, name: &str, network: &str) {
    host.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--",
        "sleep",
        "600",
    ]);
}
