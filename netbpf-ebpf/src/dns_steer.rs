//! Steering for the embedded DNS, attached to `lo` inside each container on a
//! user-defined network. The daemon's DNS socket listens on 127.0.0.11:DNS_SERVER_PORT, not
//! 53, so that the container's own programs can still bind port 53 (a DNS server in a
//! container is common). Queries to 127.0.0.11:53 get that port on the way in, and answers
//! get 53 back on the way out; clients see only 127.0.0.11:53. This is Docker's
//! DNAT/SNAT pair, done statelessly in BPF because the translation is fixed.

use aya_ebpf::programs::TcContext;
use netbpf_common::{DNS_ADDR, DNS_SERVER_PORT};

use crate::{
    csum::{self, Side},
    parse::{self, IPPROTO_ICMP},
    tc,
};

const DNS_PORT: u16 = 53;

/// `lo` ingress: a query for 127.0.0.11:53 goes to the daemon's socket.
#[inline(always)]
pub fn to_server(ctx: &TcContext) -> i32 {
    match parse::ipv4_flow(ctx) {
        Some(flow)
            if flow.proto != IPPROTO_ICMP && flow.dst == DNS_ADDR && flow.dport == DNS_PORT =>
        {
            if csum::rewrite(ctx, &flow, Side::Dst, DNS_ADDR, DNS_SERVER_PORT) {
                tc::PASS
            } else {
                tc::SHOT
            }
        }
        _ => tc::PASS,
    }
}

/// `lo` egress: an answer from the daemon's socket comes from port 53.
#[inline(always)]
pub fn from_server(ctx: &TcContext) -> i32 {
    match parse::ipv4_flow(ctx) {
        Some(flow)
            if flow.proto != IPPROTO_ICMP
                && flow.src == DNS_ADDR
                && flow.sport == DNS_SERVER_PORT =>
        {
            if csum::rewrite(ctx, &flow, Side::Src, DNS_ADDR, DNS_PORT) {
                tc::PASS
            } else {
                tc::SHOT
            }
        }
        _ => tc::PASS,
    }
}
