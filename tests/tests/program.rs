//! The eBPF program on crafted packets (BPF_PROG_TEST_RUN): each case builds a frame, runs
//! the real program against maps set up by hand, and checks the verdict, the output frame
//! and the counters.

use std::net::Ipv4Addr;

use aya::{
    EbpfLoader,
    maps::{HashMap, LpmTrie, PerCpuHashMap, PerCpuValues},
    programs::SchedClassifier,
};
use netbpf::{datapath, endpoint, network, state::NetworkRecord};
use netbpf_common::{
    DropReason, EndpointCounters, EndpointIface, EndpointKey, EndpointTarget, IFACE_FLAG_INTERNAL,
    SubnetInfo, SubnetKey, names,
};
use netbpf_tests::{ProgramSandbox, records, run_tc};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const BRIDGE_MAC: [u8; 6] = [0x02, 0x42, 10, 50, 0, 1];
const SENDER_MAC: [u8; 6] = [0x02, 0x42, 10, 50, 0, 2];
const PEER_MAC: [u8; 6] = [0x02, 0x42, 10, 50, 0, 3];

/// Ethernet + IPv4 + UDP from the sender (10.50.0.2) to `dst`.
fn udp_frame(dst: &str) -> Vec<u8> {
    udp_frame_as(SENDER_MAC, "10.50.0.2", dst)
}

/// The same from whatever MAC and address a container cares to write.
fn udp_frame_as(src_mac: [u8; 6], src: &str, dst: &str) -> Vec<u8> {
    let mut frame = vec![];
    frame.extend(BRIDGE_MAC);
    frame.extend(src_mac);
    frame.extend([0x08, 0x00]);
    let payload = b"netbpf test";
    let total = (20 + 8 + payload.len()) as u16;
    frame.extend([
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    frame.extend(src.parse::<Ipv4Addr>().unwrap().octets());
    frame.extend(dst.parse::<Ipv4Addr>().unwrap().octets());
    let udp_len = (8 + payload.len()) as u16;
    frame.extend([
        0x30,
        0x39,
        0x00,
        0x35,
        (udp_len >> 8) as u8,
        udp_len as u8,
        0,
        0,
    ]);
    frame.extend(payload);
    frame
}

/// An ARP request for 10.50.0.3 with these sender fields.
fn arp_frame_as(sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend(SENDER_MAC);
    frame.extend([0x08, 0x06]);
    frame.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend(sender_mac);
    frame.extend(sender_ip);
    frame.extend([0, 0, 0, 0, 0, 0, 10, 50, 0, 3]);
    frame
}

fn arp_frame() -> Vec<u8> {
    arp_frame_as(SENDER_MAC, [10, 50, 0, 2])
}

/// An ICMPv6 message of `icmp_type` from the sender's link-local address to all routers
/// or all nodes (the checksum is not the program's business).
fn icmpv6_frame(icmp_type: u8) -> Vec<u8> {
    let mut frame = vec![0x33, 0x33, 0, 0, 0, 1];
    frame.extend(SENDER_MAC);
    frame.extend([0x86, 0xdd]);
    let body = [icmp_type, 0, 0, 0, 0, 0, 0, 0];
    frame.extend([0x60, 0, 0, 0, 0, body.len() as u8, 58, 255]);
    frame.extend([
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x42, 10, 0xff, 0xfe, 50, 0, 2,
    ]);
    frame.extend([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    frame.extend(body);
    frame
}

#[test]
fn from_container_decides_on_crafted_packets() {
    let sandbox = ProgramSandbox::new("b", &["a0", "b0"]);
    let (sender, peer) = (sandbox.ifindex("a0"), sandbox.ifindex("b0"));
    sandbox.run(|bpffs| run_cases(bpffs, sender, peer));
}

fn run_cases(bpffs: &std::path::Path, sender: u32, peer: u32) {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(bpffs)
        .load(netbpf::datapath::EBPF_OBJECT)
        .expect("load object");
    let mut ifaces: HashMap<_, u32, EndpointIface> =
        HashMap::try_from(ebpf.take_map(names::ENDPOINT_IFACES).unwrap()).unwrap();
    let mut endpoints: HashMap<_, EndpointKey, EndpointTarget> =
        HashMap::try_from(ebpf.take_map(names::ENDPOINTS).unwrap()).unwrap();
    let mut subnets: LpmTrie<_, SubnetKey, SubnetInfo> =
        LpmTrie::try_from(ebpf.take_map(names::SUBNETS).unwrap()).unwrap();
    let mut counters: PerCpuHashMap<_, u32, EndpointCounters> =
        PerCpuHashMap::try_from(ebpf.take_map(names::COUNTERS).unwrap()).unwrap();
    let program: &mut SchedClassifier = ebpf
        .program_mut(names::PROG_FROM_CONTAINER)
        .unwrap()
        .try_into()
        .unwrap();
    program.load().expect("the verifier accepts from_container");

    // Network 1 = 10.50.0.0/24 (sender and peer), network 2 = 10.60.0.0/24, written
    // through the daemon's own record → entry helpers.
    let (app, other) = (
        records::network("10.50.0.0/24", 1),
        records::network("10.60.0.0/24", 2),
    );
    let peer_ep = records::endpoint(&app, "10.50.0.3", peer);
    assert_eq!(peer_ep.mac, PEER_MAC);
    let sender_ep = records::endpoint(&app, "10.50.0.2", sender);
    assert_eq!(sender_ep.mac, SENDER_MAC);
    ifaces
        .insert(sender, network::endpoint_iface(&app, &sender_ep), 0)
        .unwrap();
    for net in [&app, &other] {
        subnets
            .insert(
                &datapath::subnet_key(net.subnet),
                network::subnet_info(net),
                0,
            )
            .unwrap();
    }
    endpoints
        .insert(
            datapath::endpoint_key(app.index, peer_ep.ip),
            endpoint::map_target(&peer_ep),
            0,
        )
        .unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let zeroes = || PerCpuValues::try_from(vec![EndpointCounters::default(); cpus]).unwrap();
    counters.insert(sender, zeroes(), 0).unwrap();

    let run = |_what: &str, frame: &[u8], ifindex: u32| run_tc(program, frame, ifindex);
    let total = |counters: &PerCpuHashMap<_, u32, EndpointCounters>| {
        let mut sum = EndpointCounters::default();
        for c in counters.get(&sender, 0).unwrap().iter() {
            sum.add(c);
        }
        sum
    };

    let mut failures = vec![];
    let mut expect = |what: &str, frame: Vec<u8>, ifindex: u32, verdict: u32, unchanged: bool| {
        let (got, out) = run(what, &frame, ifindex);
        if got != verdict {
            failures.push(format!("{what}: verdict {got}, expected {verdict}"));
        }
        if unchanged && out != frame {
            failures.push(format!("{what}: a passed frame was modified"));
        }
        out
    };

    // Same network, known endpoint: redirected with the peer's MAC as destination.
    let out = expect(
        "to peer",
        udp_frame("10.50.0.3"),
        sender,
        TC_ACT_REDIRECT,
        false,
    );
    assert_eq!(out[..6], PEER_MAC, "dst MAC != peer's MAC");
    assert_eq!(
        out[6..],
        udp_frame("10.50.0.3")[6..],
        "redirect changed more than the dst MAC"
    );
    let c = total(&counters);
    assert_eq!(
        (c.fast_packets, c.fast_bytes),
        (1, udp_frame("10.50.0.3").len() as u64)
    );

    // What the fast path leaves to the kernel, untouched, then isolation.
    let mut bad_version = udp_frame("10.50.0.3");
    bad_version[14] = 0x65;
    let mut bad_ihl = udp_frame("10.50.0.3");
    bad_ihl[14] = 0x44;
    // (Frames shorter than an IPv4 header are refused by BPF_PROG_TEST_RUN itself.)
    let cases = [
        (
            "to unknown address on own network",
            udp_frame("10.50.0.9"),
            sender,
            TC_ACT_OK,
        ),
        ("to own gateway", udp_frame("10.50.0.1"), sender, TC_ACT_OK),
        (
            "to other network's gateway",
            udp_frame("10.60.0.1"),
            sender,
            TC_ACT_OK,
        ),
        ("to outside", udp_frame("198.18.0.1"), sender, TC_ACT_OK),
        ("ARP", arp_frame(), sender, TC_ACT_OK),
        (
            "ARP probe (sender 0.0.0.0)",
            arp_frame_as(SENDER_MAC, [0; 4]),
            sender,
            TC_ACT_OK,
        ),
        (
            "IPv6 neighbour solicitation",
            icmpv6_frame(135),
            sender,
            TC_ACT_OK,
        ),
        ("IPv4 ethertype, version 6", bad_version, sender, TC_ACT_OK),
        ("IPv4 header length 16", bad_ihl, sender, TC_ACT_OK),
        // A veth the maps do not know: never bridged unchecked.
        (
            "from an unknown veth",
            udp_frame("10.50.0.3"),
            peer,
            TC_ACT_SHOT,
        ),
        (
            "to other network",
            udp_frame("10.60.0.5"),
            sender,
            TC_ACT_SHOT,
        ),
        // Anti-spoofing: only the container's own MAC and address, ARP included.
        (
            "with the peer's source address",
            udp_frame_as(SENDER_MAC, "10.50.0.3", "198.18.0.1"),
            sender,
            TC_ACT_SHOT,
        ),
        (
            "with the peer's MAC",
            udp_frame_as(PEER_MAC, "10.50.0.2", "10.50.0.3"),
            sender,
            TC_ACT_SHOT,
        ),
        (
            "ARP claiming the peer's address",
            arp_frame_as(SENDER_MAC, [10, 50, 0, 3]),
            sender,
            TC_ACT_SHOT,
        ),
        (
            "ARP with another sender MAC",
            arp_frame_as(PEER_MAC, [10, 50, 0, 2]),
            sender,
            TC_ACT_SHOT,
        ),
        (
            "IPv6 router advertisement",
            icmpv6_frame(134),
            sender,
            TC_ACT_SHOT,
        ),
        (
            "IPv6 router solicitation",
            icmpv6_frame(133),
            sender,
            TC_ACT_SHOT,
        ),
    ];
    for (what, frame, from, verdict) in cases {
        expect(what, frame, from, verdict, verdict == TC_ACT_OK);
    }
    let c = total(&counters);
    assert_eq!(c.drops[DropReason::Isolation as usize], 1);
    assert_eq!(c.drops[DropReason::SpoofedSource as usize], 4);
    assert_eq!(c.drops[DropReason::RouterAdvertisement as usize], 2);
    assert_eq!(c.passed_packets, 9, "passed packets counted: {c:?}");

    // Internal network: only its own subnet.
    let internal = NetworkRecord {
        internal: true,
        ..app.clone()
    };
    let iface = network::endpoint_iface(&internal, &sender_ep);
    assert_eq!(iface.flags, IFACE_FLAG_INTERNAL);
    ifaces.insert(sender, iface, 0).unwrap();
    let cases = [
        ("internal to outside", udp_frame("198.18.0.1"), TC_ACT_SHOT),
        (
            "internal to other gateway",
            udp_frame("10.60.0.1"),
            TC_ACT_SHOT,
        ),
        ("internal to peer", udp_frame("10.50.0.3"), TC_ACT_REDIRECT),
    ];
    for (what, frame, verdict) in cases {
        expect(what, frame, sender, verdict, false);
    }
    let c = total(&counters);
    assert_eq!(c.drops[DropReason::Internal as usize], 1);
    assert_eq!(c.drops[DropReason::Isolation as usize], 2);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
