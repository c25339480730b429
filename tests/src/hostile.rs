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

/// Sends `count` TCP SYNs to `dst` out of `ifname` in namespace `ns`, each from another
/// address of 100.64.0.0/10 (spoofed), as one core of a flooding neighbour would: raw frames
/// with correct checksums, made from one template by incremental updates (RFC 1624).
/// `macs` are (destination, source). Returns once all are sent.
pub fn syn_flood(ns: &str, ifname: &str, macs: ([u8; 6], [u8; 6]), dst: (&str, u16), count: u32) {
    let template = packet::with_macs(
        &packet::tcp(("100.64.0.0", 40000), dst, packet::TCP_SYN),
        macs.0,
        macs.1,
    );
    let started = std::time::Instant::now();
    let ns = std::fs::File::open(format!("/run/netns/{ns}")).expect("flood netns");
    let ifname = std::ffi::CString::new(ifname).unwrap();
    // A thread of its own enters the namespace: setns changes only the calling thread.
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on a namespace fd we own, from a thread that does nothing else.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let socket = RawSocket::bound_to(&ifname);
        let mut frame = template;
        for i in 0..count {
            let src = (100u32 << 24 | 64 << 16) + i;
            packet::set_ipv4_src(&mut frame, src.to_be_bytes());
            socket.send(&frame);
        }
    })
    .join()
    .expect("flood thread");
    eprintln!("syn_flood: {count} SYNs in {:?}", started.elapsed());
}

/// An `AF_PACKET` socket bound to one interface of the calling thread's namespace.
struct RawSocket(std::os::fd::OwnedFd);

impl RawSocket {
    fn bound_to(ifname: &std::ffi::CStr) -> Self {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain syscalls; the fd is owned by the returned value at once, and the
        // address is a zeroed sockaddr_ll with its fields set.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let socket = Self(std::os::fd::OwnedFd::from_raw_fd(fd));
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
            assert!(addr.sll_ifindex > 0, "no interface {ifname:?}");
            let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let bound = libc::bind(fd, (&raw const addr).cast(), len);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            socket
        }
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd as _;
        loop {
            // SAFETY: the buffer is valid for its length for the duration of the call.
            let sent =
                unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if sent == frame.len() as isize {
                return;
            }
            // A full transmit queue: wait for room rather than lose the packet.
            let error = std::io::Error::last_os_error();
            assert_eq!(error.raw_os_error(), Some(libc::ENOBUFS), "send: {error}");
            std::thread::yield_now();
        }
    }
}
