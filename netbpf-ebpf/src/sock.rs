//! Published ports for the host's own processes, translated at the socket (cgroup
//! sock_addr hooks): `connect()`/`sendmsg()` to a published host address go to the
//! container instead, and `getpeername()`/`recvmsg()` show the address the process asked
//! for. No per-packet NAT and no proxy for host-originated traffic.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::map,
    maps::LruHashMap,
    programs::SockAddrContext,
};
use netbpf_common::{IpAddrKey, MAX_FLOWS, PublishedKey, PublishedTarget, SockBackendKey};

use crate::{
    conntrack::v4,
    nat::{self, config},
};

/// Per socket and container address: the host address the process originally used.
#[map]
static SOCK_ORIGINAL: LruHashMap<SockBackendKey, PublishedKey> = LruHashMap::pinned(MAX_FLOWS, 0);

/// Only sockets in the daemon's namespace: cgroup hooks see every namespace.
#[inline(always)]
fn in_our_netns(ctx: &SockAddrContext) -> bool {
    // SAFETY: the helper only reads the socket's namespace from the context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    config().is_some_and(|cfg| cfg.netns_cookie == cookie)
}

fn is_loopback(addr: [u8; 4]) -> bool {
    addr[0] == 127
}

/// Where a connection to the host address `addr:port` is published, if anywhere; records
/// `original` (the address as the socket named it) so replies can show it again.
#[inline(always)]
fn redirect(
    ctx: &SockAddrContext,
    addr: [u8; 4],
    original: IpAddrKey,
    port: u16,
    proto: u8,
) -> Option<PublishedTarget> {
    if !in_our_netns(ctx) || (!is_loopback(addr) && !nat::is_host_addr(addr)) {
        return None;
    }
    let target = nat::published(addr, port, proto)?;
    let backend = PublishedKey {
        addr: target.addr,
        port: target.port,
        proto,
        _pad: 0,
    };
    // SAFETY: the cookie helper only reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let original = PublishedKey {
        addr: original,
        port,
        proto,
        _pad: 0,
    };
    let _ = SOCK_ORIGINAL.insert(
        &SockBackendKey {
            cookie,
            backend,
            _pad: 0,
        },
        &original,
        0,
    );
    Some(target)
}

/// The address this socket used for the container at `backend:port`, if it was redirected.
#[inline(always)]
fn original(ctx: &SockAddrContext, backend: [u8; 4], port: u16, proto: u8) -> Option<PublishedKey> {
    if !in_our_netns(ctx) {
        return None;
    }
    let backend = PublishedKey {
        addr: IpAddrKey::from_v4(backend),
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the cookie helper only reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: plain data written whole by `redirect`.
    unsafe {
        SOCK_ORIGINAL.get(&SockBackendKey {
            cookie,
            backend,
            _pad: 0,
        })
    }
    .copied()
}

/// connect4 and sendmsg4: redirect a published host address to its container.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = sa.user_ip4.to_ne_bytes();
    let port = u16::from_be(sa.user_port as u16);
    if let Some(target) = redirect(ctx, addr, IpAddrKey::from_v4(addr), port, sa.protocol as u8) {
        sa.user_ip4 = u32::from_ne_bytes(v4(&target.addr));
        sa.user_port = u32::from(target.port.to_be());
    }
}

/// recvmsg4 and getpeername4: show the host address the process used, not the container.
#[inline(always)]
pub fn from_backend(ctx: &SockAddrContext) {
    // SAFETY: as in `to_backend`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    if let Some(original) = original(ctx, sa.user_ip4.to_ne_bytes(), port, sa.protocol as u8) {
        sa.user_ip4 = u32::from_ne_bytes(v4(&original.addr));
        sa.user_port = u32::from(original.port.to_be());
    }
}

/// The IPv4 address an IPv6 socket is really talking to: the address inside an
/// IPv4-mapped one, and 127.0.0.1 for `::1`. `None` for real IPv6 destinations, which are
/// not published (yet).
#[inline(always)]
fn v4_of_v6(words: [u32; 4]) -> Option<[u8; 4]> {
    let key = key_of_words(words);
    let o = key.octets;
    if o[..10] != [0; 10] {
        return None;
    }
    match (o[10], o[11]) {
        (0xff, 0xff) => Some(v4(&key)),
        (0, 0) if o[12..] == [0, 0, 0, 1] => Some([127, 0, 0, 1]),
        _ => None,
    }
}

/// `bpf_sock_addr.user_ip6` words (network order) as a key address, and back.
#[inline(always)]
fn key_of_words(words: [u32; 4]) -> IpAddrKey {
    let mut octets = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddrKey::from_v6(octets)
}

#[inline(always)]
fn words_of(key: &IpAddrKey) -> [u32; 4] {
    let o = key.octets;
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// connect6: `[::1]:PORT` and IPv4-mapped host addresses reach published
/// ports too (a dual-stack socket then talks IPv4 to the container).
#[inline(always)]
pub fn to_backend6(ctx: &SockAddrContext) {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(addr) = v4_of_v6(sa.user_ip6) else {
        return;
    };
    let port = u16::from_be(sa.user_port as u16);
    let asked = key_of_words(sa.user_ip6);
    if let Some(target) = redirect(ctx, addr, asked, port, sa.protocol as u8) {
        sa.user_ip6 = words_of(&target.addr);
        sa.user_port = u32::from(target.port.to_be());
    }
}

/// recvmsg6 and getpeername6: show the address the process used.
#[inline(always)]
pub fn from_backend6(ctx: &SockAddrContext) {
    // SAFETY: as in `to_backend6`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(addr) = v4_of_v6(sa.user_ip6) else {
        return;
    };
    let port = u16::from_be(sa.user_port as u16);
    if let Some(original) = original(ctx, addr, port, sa.protocol as u8) {
        sa.user_ip6 = words_of(&original.addr);
        sa.user_port = u32::from(original.port.to_be());
    }
}
