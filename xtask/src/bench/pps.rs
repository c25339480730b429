//! The per-packet limit: 64-byte UDP frames from an in-kernel generator in the client
//! namespace, through each contender's DNAT (or, for the ceiling, plain routing) into a
//! sink container that counts and drops them at XDP. Everything runs on CPU 0, so the
//! delivered rate is packets per second per core for the whole path.
//!
//! The generator is `bench_generate` (netbpf-ebpf's `netbpf-bench` object) run through
//! BPF_PROG_TEST_RUN in live-frames mode: the kernel turns its XDP_TX into a transmit on the
//! context's interface, the client end of the uplink veth, in batches of 64. A kernel that
//! refuses live frames gets the same frames from an AF_PACKET socket ([`packet_socket`]).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf, TestRun as _,
    maps::{Array, PerCpuArray},
    programs::{
        TestRunAttrs, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};

use super::{
    contender::{Contender, Kind, SINK_PORT},
    packet_socket,
    topology::{CLIENT_IP, HOST_IP, link_info},
};
use crate::root;

/// The nightly netbpf's own eBPF build uses (see netbpf/build.rs).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
/// The generator's frame length (netbpf-bench's FRAME_LEN).
const FRAME_LEN: usize = 60;
/// Frames per BPF_PROG_TEST_RUN call; the run repeats calls until its time is up.
const FRAMES_PER_CALL: u32 = 1 << 20;

/// Builds the generator object (cached by cargo after the first time).
pub fn build_object() -> anyhow::Result<PathBuf> {
    let target_dir = root().join("target/bench-ebpf");
    let status = std::process::Command::new("rustup")
        .args([
            "run",
            EBPF_TOOLCHAIN,
            "cargo",
            "build",
            "--quiet",
            "--release",
        ])
        .args(["--package", "netbpf-ebpf", "--bin", "netbpf-bench"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root())
        // The stable toolchain `cargo xtask` runs under must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("building the traffic generator")?;
    anyhow::ensure!(status.success(), "building the traffic generator failed");
    Ok(target_dir.join("bpfel-unknown-none/release/netbpf-bench"))
}

/// Runs `work` on a thread inside the named namespace (interface names and indexes resolve
/// there), optionally pinned to CPU 0.
fn in_netns<T: Send>(
    ns: &str,
    pin_cpu0: bool,
    work: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread, which exists
            // for `work` alone.
            anyhow::ensure!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
                "entering {ns}: {}",
                std::io::Error::last_os_error()
            );
            if pin_cpu0 {
                // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the call
                // changes only this thread's affinity.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                }
            }
            work()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn mac_of(ns: &str, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let link = link_info(ns, ifname)?;
    let text = link["address"].as_str().context("a MAC address")?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

fn ifindex_of(ns: &str, ifname: &str) -> anyhow::Result<u32> {
    Ok(link_info(ns, ifname)?["ifindex"]
        .as_u64()
        .context("an ifindex")? as u32)
}

/// The one's-complement sum folded to 16 bits, over 16-bit big-endian words.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 60-byte Ethernet/IPv4/UDP frame (64 on the wire with the FCS) with valid checksums.
/// Written out by hand: network-types describes headers but builds no packets, and the
/// generator needs nothing more than these 60 bytes.
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    let payload = [0u8; 18];
    let udp_len = (8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend(src);
    ip.extend(dst);
    let ip_sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let mut udp = vec![];
    udp.extend(9u16.to_be_bytes());
    udp.extend(port.to_be_bytes());
    udp.extend(udp_len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    let mut pseudo = vec![];
    pseudo.extend(src);
    pseudo.extend(dst);
    pseudo.extend([0, 17]);
    pseudo.extend(udp_len.to_be_bytes());
    let udp_sum = checksum(&[&pseudo, &udp]);
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());
    let mut frame = vec![];
    frame.extend(dst_mac);
    frame.extend(src_mac);
    frame.extend(0x0800u16.to_be_bytes());
    frame.extend(ip);
    frame.extend(udp);
    frame
}

fn ipv4(text: &str) -> anyhow::Result<[u8; 4]> {
    Ok(text.parse::<std::net::Ipv4Addr>()?.octets())
}

/// The generator, the pass program and the sink, loaded once for the whole run.
pub struct Generator {
    ebpf: Ebpf,
    source: Source,
}

/// Where the frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `bench_generate` through BPF_PROG_RUN's live-frames mode.
    LiveFrames,
    /// An AF_PACKET socket: the kernel refused live frames.
    PacketSocket,
}

impl Generator {
    pub fn load(object: &Path) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load_file(object).context("loading the generator object")?;
        for name in ["bench_generate", "bench_pass", "bench_sink"] {
            xdp(&mut ebpf, name).load()?;
        }
        Ok(Self {
            ebpf,
            source: Source::LiveFrames,
        })
    }

    /// The metric the delivered rate is reported under: the sender is part of the path, so
    /// rates from the two generators are never mixed in one table.
    pub fn rate_metric(&self) -> &'static str {
        match self.source {
            Source::LiveFrames => "delivered pps",
            Source::PacketSocket => "delivered pps (AF_PACKET sender)",
        }
    }

    fn sink_count(&self) -> anyhow::Result<u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("BENCH_SINK_PACKETS").context("sink map")?)?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    /// Sends frames for `duration` and returns (frames delivered per second, share of the
    /// generated frames delivered in %).
    pub fn measure(&mut self, c: &Contender, duration: u32) -> anyhow::Result<(f64, f64)> {
        let (client, host) = (c.client_ns(), c.host_ns());
        let (dst, port) = match c.kind {
            Kind::Ceiling => (ipv4(&c.sink_ip)?, SINK_PORT),
            _ => (ipv4(HOST_IP)?, SINK_PORT),
        };
        let frame = udp_frame(
            mac_of(host, "up0")?,
            mac_of(client, "up0")?,
            ipv4(CLIENT_IP)?,
            dst,
            port,
        );
        let client_ifindex = ifindex_of(client, "up0")?;
        let template: [u8; FRAME_LEN] = frame.as_slice().try_into()?;
        Array::<_, [u8; FRAME_LEN]>::try_from(
            self.ebpf.map_mut("BENCH_FRAME").context("frame map")?,
        )?
        .set(0, template, 0)?;

        // The uplink takes XDP_TX'd frames only with an XDP program on it: netbpf-xdp has its
        // own; the others get one that passes everything to the stack.
        let pass = match c.kind {
            Kind::NetbpfXdp => None,
            _ => Some(in_netns(host, false, || {
                Ok(xdp(&mut self.ebpf, "bench_pass").attach("up0", XdpMode::Driver)?)
            })?),
        };
        let sink = self.attach_sink(c)?;

        let before = self.sink_count()?;
        let generator = xdp(&mut self.ebpf, "bench_generate");
        let period = Duration::from_secs(u64::from(duration));
        let mut source = self.source;
        let (generated, elapsed) = in_netns(client, true, || {
            if source == Source::LiveFrames {
                match live_frames(generator, &frame, client_ifindex, period)? {
                    Some(sent) => return Ok(sent),
                    None => source = Source::PacketSocket,
                }
            }
            let started = Instant::now();
            let sent = packet_socket::send(&frame, client_ifindex, period)?;
            Ok((sent, started.elapsed().as_secs_f64()))
        })?;
        self.source = source;
        // Let the last batches drain.
        std::thread::sleep(Duration::from_millis(100));
        let delivered = self.sink_count()? - before;

        if let Some(link) = sink {
            in_netns(&c.sink_ns, false, || {
                Ok(xdp(&mut self.ebpf, "bench_sink").detach(link)?)
            })?;
        }
        if let Some(link) = pass {
            in_netns(host, false, || {
                Ok(xdp(&mut self.ebpf, "bench_pass").detach(link)?)
            })?;
        }
        Ok((
            delivered as f64 / elapsed,
            100.0 * delivered as f64 / generated.max(1) as f64,
        ))
    }

    /// Puts the sink on the sink container's eth0: into netbpf's own XDP link there when it
    /// has one (the daemon never uses that container otherwise), else attached for the run.
    fn attach_sink(&mut self, c: &Contender) -> anyhow::Result<Option<XdpLinkId>> {
        let program = xdp(&mut self.ebpf, "bench_sink");
        match &c.sink_xdp_link {
            Some(pin) => {
                let link = PinnedLink::from_pin(pin)
                    .with_context(|| format!("netbpf's XDP link {}", pin.display()))?;
                let id = program.attach_to_link(XdpLink::try_from(FdLink::from(link))?)?;
                // The pin keeps the link, and the sink in it, for the contender's life.
                drop(program.take_link(id)?);
                Ok(None)
            }
            None => Ok(Some(in_netns(&c.sink_ns, false, || {
                Ok(program.attach("eth0", XdpMode::Driver)?)
            })?)),
        }
    }
}

/// Runs `bench_generate` in live-frames mode on `ifindex` for `period`: (frames generated,
/// seconds taken), or `None` if the kernel refuses the mode at the first call.
fn live_frames(
    generator: &mut Xdp,
    frame: &[u8],
    ifindex: u32,
    period: Duration,
) -> anyhow::Result<Option<(u64, f64)>> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let started = Instant::now();
    let mut generated = 0u64;
    while started.elapsed() < period {
        let run = generator.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: FRAMES_PER_CALL,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        });
        match run {
            Ok(_) => generated += u64::from(FRAMES_PER_CALL),
            Err(e) if generated == 0 && refused(&e) => {
                eprintln!(
                    "bench: the kernel refuses BPF_PROG_RUN's live-frames mode ({}); \
                     the per-packet run sends from an AF_PACKET socket instead",
                    anyhow::Error::from(e).root_cause()
                );
                return Ok(None);
            }
            Err(e) => return Err(anyhow::Error::from(e).context("live-frames test run")),
        }
    }
    Ok(Some((generated, started.elapsed().as_secs_f64())))
}

/// Whether a test run failed because the kernel does not allow or know the mode, not
/// because of what was asked.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | ENOTSUPP)
            );
        }
        cause = e.source();
    }
    false
}

/// The kernel's internal "operation not supported" (524), which bpf(2) lets through.
const ENOTSUPP: i32 = 524;

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("{name} is an XDP program of netbpf-bench"))
}
