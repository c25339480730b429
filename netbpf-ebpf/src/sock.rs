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
use netbpf_common::{IpAddrKey, MAX_FLOWS, PublishedKey, SockBackendKey};

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

/// connect4 and sendmsg4: redirect a published host address to its container.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) {
    if !in_our_netns(ctx) {
        return;
    }
    // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = sa.user_ip4.to_ne_bytes();
    if !is_loopback(addr) && !nat::is_host_addr(addr) {
        return;
    }
    let port = u16::from_be(sa.user_port as u16);
    let proto = sa.protocol as u8;
    let Some(target) = nat::published(addr, port, proto) else {
        return;
    };
    let backend = PublishedKey {
        addr: target.addr,
        port: target.port,
        proto,
        _pad: 0,
    };
    // SAFETY: as above; the cookie helper reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let original = PublishedKey {
        addr: IpAddrKey::from_v4(addr),
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
    sa.user_ip4 = u32::from_ne_bytes(v4(&target.addr));
    sa.user_port = u32::from(target.port.to_be());
}

/// recvmsg4 and getpeername4: show the host address the process used, not the container.
#[inline(always)]
pub fn from_backend(ctx: &SockAddrContext) {
    if !in_our_netns(ctx) {
        return;
    }
    // SAFETY: as in `to_backend`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let backend = PublishedKey {
        addr: IpAddrKey::from_v4(sa.user_ip4.to_ne_bytes()),
        port: u16::from_be(sa.user_port as u16),
        proto: sa.protocol as u8,
        _pad: 0,
    };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: plain data written whole by `to_backend`.
    if let Some(original) = unsafe {
        SOCK_ORIGINAL.get(&SockBackendKey {
            cookie,
            backend,
            _pad: 0,
        })
    } {
        sa.user_ip4 = u32::from_ne_bytes(v4(&original.addr));
        sa.user_port = u32::from(original.port.to_be());
    }
}
