//! The NAT programs on crafted packets (BPF_PROG_TEST_RUN): published-port DNAT on the
//! uplink, the reply rewrite at the container's veth, masquerade on the way out and back.
//! Every rewritten frame is re-parsed and its checksums recomputed from scratch; unknown
//! or malformed traffic must come out byte for byte as it went in.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie},
    programs::{SchedClassifier, Xdp},
};
use netbpf::{
    datapath, endpoint, network,
    publish::{self, Proto, PublishedPort},
    uplink::MASQUERADE_PORTS,
};
use netbpf_common::{
    EndpointIface, EndpointKey, EndpointTarget, IpAddrKey, NatConfig, PublishedKey,
    PublishedTarget, SubnetInfo, SubnetKey, names,
};
use netbpf_tests::{
    ProgramSandbox,
    packet::{self, Seen, TCP_SYN},
    records, run_tc, run_xdp,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_UNSPEC (-1): tcx's "next program", what the uplink's ingress program returns for
/// packets it leaves alone (another program, the overlay's decapsulation, may want them).
const TCX_NEXT: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;
const BACKEND_MAC: [u8; 6] = [0x02, 0x42, 10, 50, 0, 3];

fn v4(ip: &str) -> IpAddrKey {
    IpAddrKey::from_v4(ip.parse::<std::net::Ipv4Addr>().unwrap().octets())
}

fn seen(src: &str, sport: u16, dst: &str, dport: u16) -> Seen {
    Seen {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
    }
}

struct Programs {
    ebpf: Ebpf,
}

impl Programs {
    fn run_xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &Xdp = self
            .ebpf
            .program(names::PROG_UPLINK_XDP)
            .unwrap()
            .try_into()
            .unwrap();
        run_xdp(program, frame)
    }

    fn run(&self, program: &str, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        run_tc(program, frame, ifindex)
    }
}

/// Network 1 = 10.50.0.0/24 with the backend 10.50.0.3 behind veth `b0`; the host's uplink
/// `u0` has 198.18.0.2; 5050/tcp and 5353/udp are published to the backend's 80 and 53.
fn setup(bpffs: &Path, uplink: u32, backend_veth: u32) -> Programs {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(bpffs)
        .load(netbpf::datapath::EBPF_OBJECT)
        .expect("load object");
    for name in [
        names::PROG_FROM_CONTAINER,
        names::PROG_UPLINK_INGRESS,
        names::PROG_UPLINK_EGRESS,
    ] {
        let program: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        program
            .load()
            .unwrap_or_else(|e| panic!("verifier rejects {name}: {e}"));
    }
    let program: &mut Xdp = ebpf
        .program_mut(names::PROG_UPLINK_XDP)
        .unwrap()
        .try_into()
        .unwrap();
    program.load().expect("verifier accepts uplink_xdp");
    let net = records::network("10.50.0.0/24", 1);
    let backend = records::endpoint(&net, "10.50.0.3", backend_veth);
    assert_eq!(backend.mac, BACKEND_MAC);
    let mut subnets: LpmTrie<_, SubnetKey, SubnetInfo> =
        LpmTrie::try_from(ebpf.map_mut(names::SUBNETS).unwrap()).unwrap();
    subnets
        .insert(
            &datapath::subnet_key(net.subnet),
            network::subnet_info(&net),
            0,
        )
        .unwrap();
    let mut endpoints: HashMap<_, EndpointKey, EndpointTarget> =
        HashMap::try_from(ebpf.map_mut(names::ENDPOINTS).unwrap()).unwrap();
    endpoints
        .insert(
            datapath::endpoint_key(net.index, backend.ip),
            endpoint::map_target(&backend),
            0,
        )
        .unwrap();
    let mut ifaces: HashMap<_, u32, EndpointIface> =
        HashMap::try_from(ebpf.map_mut(names::ENDPOINT_IFACES).unwrap()).unwrap();
    ifaces
        .insert(backend_veth, network::endpoint_iface(&net, &backend), 0)
        .unwrap();
    let mut host_addrs: HashMap<_, IpAddrKey, u32> =
        HashMap::try_from(ebpf.map_mut(names::HOST_ADDRS).unwrap()).unwrap();
    host_addrs.insert(v4("198.18.0.2"), 1, 0).unwrap();
    let mut config: Array<_, NatConfig> =
        Array::try_from(ebpf.map_mut(names::NAT_CONFIG).unwrap()).unwrap();
    let nat = NatConfig {
        uplink_addr: v4("198.18.0.2"),
        uplink_ifindex: uplink,
        port_min: MASQUERADE_PORTS.0,
        port_max: MASQUERADE_PORTS.1,
        netns_cookie: 0,
    };
    config.set(0, nat, 0).unwrap();
    let mut published: HashMap<_, PublishedKey, PublishedTarget> =
        HashMap::try_from(ebpf.map_mut(names::PUBLISHED).unwrap()).unwrap();
    for (port, proto, to) in [(5050, Proto::Tcp, 80), (5353, Proto::Udp, 53)] {
        let port = PublishedPort {
            host_ip: std::net::Ipv4Addr::UNSPECIFIED,
            host_port: port,
            container_port: to,
            proto,
        };
        published
            .insert(
                publish::published_key(&port),
                publish::published_target(&backend, &port),
                0,
            )
            .unwrap();
    }
    Programs { ebpf }
}

#[test]
fn nat_programs_translate_with_correct_checksums_and_leave_the_rest_alone() {
    let sandbox = ProgramSandbox::new("n", &["u0", "b0"]);
    let (uplink, backend) = (sandbox.ifindex("u0"), sandbox.ifindex("b0"));
    sandbox.run(|bpffs| {
        let p = setup(bpffs, uplink, backend);
        let mut failures: Vec<String> = vec![];
        let mut expect = |what: &str,
                          program: &str,
                          frame: Vec<u8>,
                          ifindex: u32,
                          verdict: u32,
                          want: Option<Seen>| {
            let (got, out) = p.run(program, &frame, ifindex);
            if got != verdict {
                failures.push(format!("{what}: verdict {got}, expected {verdict}"));
            }
            match want {
                None if out != frame => failures.push(format!("{what}: frame was modified")),
                None => {}
                Some(want) => match packet::check(&out) {
                    Err(e) => failures.push(format!("{what}: {e}")),
                    Ok(seen) if seen != want => {
                        failures.push(format!("{what}: {seen:?} != {want:?}"))
                    }
                    Ok(_) => {}
                },
            }
            out
        };
        let ingress = names::PROG_UPLINK_INGRESS;
        let egress = names::PROG_UPLINK_EGRESS;
        let from_container = names::PROG_FROM_CONTAINER;

        // Published TCP from outside: DNAT, client address kept, delivered to the backend.
        let syn = packet::tcp(("198.18.0.1", 40000), ("198.18.0.2", 5050), TCP_SYN);
        let out = expect(
            "published tcp",
            ingress,
            syn.clone(),
            uplink,
            TC_ACT_REDIRECT,
            Some(seen("198.18.0.1", 40000, "10.50.0.3", 80)),
        );
        assert_eq!(out[..6], BACKEND_MAC, "dst MAC != backend's MAC");
        expect(
            "published tcp, IP options",
            ingress,
            packet::with_ip_options(&syn),
            uplink,
            TC_ACT_REDIRECT,
            Some(seen("198.18.0.1", 40000, "10.50.0.3", 80)),
        );
        // Its reply, at the backend's veth: the host address and published port come back.
        let reply = packet::tcp(("10.50.0.3", 80), ("198.18.0.1", 40000), 0x12);
        let reply = packet::with_macs(&reply, [0x02, 0x42, 10, 50, 0, 1], BACKEND_MAC);
        expect(
            "reply of published tcp",
            from_container,
            reply,
            backend,
            TC_ACT_REDIRECT,
            Some(seen("198.18.0.2", 5050, "198.18.0.1", 40000)),
        );
        // Published UDP.
        let query = packet::udp(("198.18.0.1", 40001), ("198.18.0.2", 5353));
        expect(
            "published udp",
            ingress,
            query,
            uplink,
            TC_ACT_REDIRECT,
            Some(seen("198.18.0.1", 40001, "10.50.0.3", 53)),
        );

        // Left alone: not published, not for the host, not IPv4/TCP/UDP, or malformed.
        let variant = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut frame = syn.clone();
            edit(&mut frame);
            frame
        };
        let left_alone = [
            (
                "unpublished port",
                packet::tcp(("198.18.0.1", 40000), ("198.18.0.2", 22), TCP_SYN),
            ),
            (
                "not a host address",
                packet::tcp(("198.18.0.1", 40000), ("198.18.0.9", 5050), TCP_SYN),
            ),
            ("VLAN tag", packet::with_vlan(&syn)),
            // More fragments; a fragment offset of 128 bytes.
            ("first fragment", variant(&|f| f[14 + 6] |= 0x20)),
            ("later fragment", variant(&|f| f[14 + 7] = 0x10)),
            // TCP data offset 16 bytes.
            (
                "bad TCP data offset",
                variant(&|f| f[14 + 20 + 12] = 4 << 4),
            ),
            // IP total length 30: a TCP header of 10 bytes.
            (
                "truncated TCP header",
                variant(&|f| {
                    f.truncate(14 + 20 + 10);
                    f[14 + 3] = 30;
                }),
            ),
            (
                "non-IP ethertype",
                variant(&|f| f[12..14].copy_from_slice(&[0x88, 0xb5])),
            ),
            ("IPv4 ethertype, version 6", variant(&|f| f[14] = 0x65)),
        ];
        for (what, frame) in left_alone {
            expect(what, ingress, frame, uplink, TCX_NEXT, None);
        }
        // Never let in: a container address from outside (direct routing), whatever the
        // protocol, port or fragment; a loopback destination.
        let to_container = packet::tcp(("198.18.0.1", 40000), ("10.50.0.3", 80), TCP_SYN);
        let mut to_container_fragment = to_container.clone();
        to_container_fragment[14 + 7] = 0x10;
        let mut to_container_gre = packet::udp(("198.18.0.1", 40000), ("10.50.0.3", 9999));
        to_container_gre[14 + 9] = 47;
        let never_in = [
            ("direct tcp to a container", to_container),
            (
                "direct udp to a container",
                packet::udp(("198.18.0.1", 40000), ("10.50.0.3", 9999)),
            ),
            ("direct fragment to a container", to_container_fragment),
            ("direct GRE to a container", to_container_gre),
            (
                "to a loopback address",
                packet::udp(("198.18.0.1", 40000), ("127.0.0.1", 5353)),
            ),
        ];
        for (what, frame) in never_in {
            expect(what, ingress, frame, uplink, TC_ACT_SHOT, None);
        }

        // Masquerade: out with the uplink address and a port of the masquerade range (never
        // the container's own: the host may use it), distinct per flow; the reply goes back
        // to the right container.
        let masquerade = |frame: &[u8]| {
            let (verdict, out) = p.run(egress, frame, uplink);
            assert_eq!(verdict, TC_ACT_OK);
            let translated = packet::check(&out).unwrap();
            assert_eq!(translated.src.to_string(), "198.18.0.2");
            let range = MASQUERADE_PORTS.0..=MASQUERADE_PORTS.1;
            assert!(range.contains(&translated.sport), "{translated:?}");
            translated
        };
        let a = masquerade(&packet::tcp(
            ("10.50.0.3", 45000),
            ("198.18.0.1", 8000),
            TCP_SYN,
        ));
        let b = masquerade(&packet::tcp(
            ("10.50.0.4", 45000),
            ("198.18.0.1", 8000),
            TCP_SYN,
        ));
        assert_ne!(a.sport, b.sport, "two flows share one translated port");
        let back = packet::tcp(("198.18.0.1", 8000), ("198.18.0.2", a.sport), 0x12);
        expect(
            "masquerade reply",
            ingress,
            back,
            uplink,
            TC_ACT_REDIRECT,
            Some(seen("198.18.0.1", 8000, "10.50.0.3", 45000)),
        );
        let ping = masquerade(&packet::icmp_echo("10.50.0.3", "198.18.0.1", 77));
        assert_eq!(ping.sport, ping.dport, "an echo's identifier is both ports");

        // ICMP errors about translated flows, both ways, every checksum recomputed. A router
        // (198.18.0.254) cannot forward the published flow's reply, nor the masqueraded
        // flow's packet, and says so to the host...
        let mut failures_quoted: Vec<String> = vec![];
        let mut quoted_ok = |what: &str, out: &[u8], want: Seen| match packet::quoted(out) {
            Ok(q) if q == want => {}
            Ok(q) => failures_quoted.push(format!("{what}: quoted {q:?} != {want:?}")),
            Err(e) => failures_quoted.push(format!("{what}: {e}")),
        };
        let published_reply = packet::tcp(("198.18.0.2", 5050), ("198.18.0.1", 40000), 0x12);
        let masqueraded = packet::tcp(("198.18.0.2", a.sport), ("198.18.0.1", 8000), 0x10);
        for (what, icmp_type, code, about, quoted) in [
            (
                "frag needed about a published flow",
                3,
                4,
                published_reply,
                seen("10.50.0.3", 80, "198.18.0.1", 40000),
            ),
            (
                "time exceeded about a masqueraded flow",
                11,
                0,
                masqueraded,
                seen("10.50.0.3", 45000, "198.18.0.1", 8000),
            ),
        ] {
            let error = packet::icmp_error("198.18.0.254", "198.18.0.2", icmp_type, code, &about);
            let out = expect(
                what,
                ingress,
                error,
                uplink,
                TC_ACT_REDIRECT,
                Some(seen("198.18.0.254", 0, "10.50.0.3", 0)),
            );
            quoted_ok(what, &out, quoted);
        }
        // ...and the backend cannot take a published UDP query, and says so to the client.
        let query = packet::udp(("198.18.0.1", 40001), ("10.50.0.3", 53));
        let error = packet::icmp_error("10.50.0.3", "198.18.0.1", 3, 3, &query);
        let error = packet::with_macs(&error, [0x02, 0x42, 10, 50, 0, 1], BACKEND_MAC);
        let out = expect(
            "a container's port unreachable about a published flow",
            from_container,
            error,
            backend,
            TC_ACT_REDIRECT,
            Some(seen("198.18.0.2", 0, "198.18.0.1", 0)),
        );
        quoted_ok(
            "a container's port unreachable about a published flow",
            &out,
            seen("198.18.0.1", 40001, "198.18.0.2", 5353),
        );
        // An error about no flow of ours is the host's own business.
        let stranger = packet::tcp(("198.18.0.2", 41000), ("198.18.0.1", 9), 0x10);
        expect(
            "frag needed about the host's own flow",
            ingress,
            packet::icmp_error("198.18.0.254", "198.18.0.2", 3, 4, &stranger),
            uplink,
            TCX_NEXT,
            None,
        );
        // Never let out with a container address: what NAT cannot translate.
        let mut fragment_out = packet::udp(("10.50.0.3", 45001), ("198.18.0.1", 8000));
        fragment_out[14 + 6] |= 0x20;
        let mut unreachable_out = packet::icmp_echo("10.50.0.3", "198.18.0.1", 5);
        unreachable_out[14 + 20] = 3;
        let mut gre_out = packet::udp(("10.50.0.3", 45001), ("198.18.0.1", 8000));
        gre_out[14 + 9] = 47;
        for (what, frame) in [
            ("container fragment out", fragment_out),
            ("container ICMP error out", unreachable_out),
            ("container GRE out", gre_out),
        ] {
            expect(what, egress, frame, uplink, TC_ACT_SHOT, None);
        }
        expect(
            "host's own traffic",
            egress,
            packet::tcp(("198.18.0.2", 45000), ("198.18.0.1", 8000), TCP_SYN),
            uplink,
            TC_ACT_OK,
            None,
        );

        failures.extend(failures_quoted);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

#[test]
fn the_xdp_stage_translates_with_correct_checksums_and_passes_the_rest() {
    let sandbox = ProgramSandbox::new("x", &["u0", "b0"]);
    let (uplink, backend) = (sandbox.ifindex("u0"), sandbox.ifindex("b0"));
    sandbox.run(|bpffs| {
        let p = setup(bpffs, uplink, backend);
        let mut failures: Vec<String> = vec![];
        let mut expect = |what: &str, frame: Vec<u8>, verdict: u32, want: Option<Seen>| {
            let (got, out) = p.run_xdp(&frame);
            if got != verdict {
                failures.push(format!("{what}: verdict {got}, expected {verdict}"));
            }
            match want {
                None if out != frame => failures.push(format!("{what}: frame was modified")),
                None => {}
                Some(want) => match packet::check(&out) {
                    Err(e) => failures.push(format!("{what}: {e}")),
                    Ok(seen) if seen != want => {
                        failures.push(format!("{what}: {seen:?} != {want:?}"))
                    }
                    Ok(_) if out[..6] != BACKEND_MAC => {
                        failures.push(format!("{what}: dst MAC not the backend's"))
                    }
                    Ok(_) => {}
                },
            }
        };
        let syn = packet::tcp(("198.18.0.1", 40000), ("198.18.0.2", 5050), TCP_SYN);
        expect(
            "published tcp",
            syn.clone(),
            XDP_REDIRECT,
            Some(seen("198.18.0.1", 40000, "10.50.0.3", 80)),
        );
        expect(
            "published tcp, IP options",
            packet::with_ip_options(&syn),
            XDP_REDIRECT,
            Some(seen("198.18.0.1", 40000, "10.50.0.3", 80)),
        );
        expect(
            "published udp",
            packet::udp(("198.18.0.1", 40001), ("198.18.0.2", 5353)),
            XDP_REDIRECT,
            Some(seen("198.18.0.1", 40001, "10.50.0.3", 53)),
        );
        let mut no_csum = packet::udp(("198.18.0.1", 40002), ("198.18.0.2", 5353));
        no_csum[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        let (verdict, out) = p.run_xdp(&no_csum);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out[14 + 20 + 6..14 + 20 + 8],
            [0, 0],
            "a UDP datagram without checksum got one"
        );
        expect(
            "unpublished port",
            packet::tcp(("198.18.0.1", 40000), ("198.18.0.2", 22), TCP_SYN),
            XDP_PASS,
            None,
        );
        expect("VLAN tag", packet::with_vlan(&syn), XDP_PASS, None);
        let mut fragment = syn.clone();
        fragment[14 + 6] |= 0x20;
        expect("fragment", fragment, XDP_PASS, None);
        let mut bad_offset = syn.clone();
        bad_offset[14 + 20 + 12] = 4 << 4;
        expect("bad TCP data offset", bad_offset, XDP_PASS, None);
        expect(
            "ICMP",
            packet::icmp_echo("198.18.0.1", "198.18.0.2", 9),
            XDP_PASS,
            None,
        );
        // Replies of masqueraded flows are the tcx stage's job.
        expect(
            "masquerade reply",
            packet::tcp(("198.18.0.1", 8000), ("198.18.0.2", 45000), 0x12),
            XDP_PASS,
            None,
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}
