//! The per-packet run's second generator, for kernels that refuse BPF_PROG_RUN's live-frames
//! mode (seen: a 6.18 kernel answering EPERM to root with CAP_SYS_ADMIN and CAP_BPF, while
//! the same call without the flag works). An AF_PACKET socket sends the same 60-byte frame
//! out of the client's end of the uplink veth, 64 frames per `sendmmsg`, bypassing the
//! qdisc. It costs the sending CPU more per frame than the in-kernel generator (a syscall
//! per batch and a copy per frame), so its rates are lower for every contender alike; the
//! run says which generator it used.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;

/// Sends `frame` out of interface `ifindex` (of the calling thread's namespace) until
/// `duration` has passed; returns how many frames the kernel took.
pub fn send(frame: &[u8], ifindex: u32, duration: Duration) -> anyhow::Result<u64> {
    // Protocol 0: the socket only sends, so no received frame is ever copied to it.
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    anyhow::ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: the option value is a live c_int of the length given. A refused bypass only
    // costs speed, so its result is not checked.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_ll is plain data, valid zeroed.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    to.sll_ifindex = ifindex as i32;
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr().cast_mut().cast(),
        iov_len: frame.len(),
    };
    // SAFETY: mmsghdr is plain data, valid zeroed; every pointer set below outlives the loop.
    let mut messages: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for message in &mut messages {
        message.msg_hdr.msg_name = (&raw mut to).cast();
        message.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        message.msg_hdr.msg_iov = &raw mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        // SAFETY: `messages` holds BATCH initialised headers pointing at `to` and `iov`,
        // which point at `frame`; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            // A full transmit path: try again, as a NIC's ring would make the sender wait.
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            anyhow::bail!("sendmmsg on an AF_PACKET socket: {error}");
        }
        sent += n as u64;
    }
    Ok(sent)
}
