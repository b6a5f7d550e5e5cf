//! `lb_decap` through `BPF_PROG_TEST_RUN`: a tunnel frame in, the verdict and the exact
//! frame out. A decapsulated frame must be, byte for byte, the client's frame as if it
//! had arrived directly; a refused one is dropped unchanged and counted by reason; a
//! frame that is not a tunnel packet passes untouched and is not counted.

use std::{collections::BTreeSet, net::IpAddr};

use lb_common::decap::{Refusal, Traffic};
use lb_decap::decapsulator::{Counters, Decapsulator};
use lb_tests::{
    bed::{self, XDP_DROP, XDP_PASS},
    packet::{self, L3, PROTO_IPIP, PROTO_IPV6, PROTO_UDP, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";
/// This real server's addresses, where the director's tunnels end.
const REAL4: &str = "198.18.1.11";
const REAL6: &str = "2001:db8:1::11";
/// The director's tunnel source.
const DIRECTOR4: &str = "198.18.1.2";
const DIRECTOR6: &str = "2001:db8:1::2";
/// A client somewhere.
const CLIENT4: &str = "198.18.7.1";
const CLIENT6: &str = "2001:db8:7::1";

struct Bed {
    decap: Decapsulator,
}

impl Bed {
    /// `lb_decap` for the two VIPs on the real server with [`REAL4`] and [`REAL6`].
    fn new() -> Self {
        let mut decap = Decapsulator::load().expect("loading lb_decap (as root?)");
        decap.set_vips(addresses(&[VIP4, VIP6])).unwrap();
        decap.set_local(addresses(&[REAL4, REAL6, "127.0.0.1", "::1"])).unwrap();
        Self { decap }
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let run = bed::run(self.decap.program(), frame).unwrap();
        (run.verdict, run.frame)
    }

    fn counters(&self) -> Counters {
        self.decap.counters().unwrap()
    }

    /// Runs `frame`, which must be refused for `refusal`: dropped as it came, counted once.
    fn assert_refused(&self, what: &str, frame: &[u8], refusal: Refusal) {
        let before = self.counters();
        assert_eq!(self.run(frame), (XDP_DROP, frame.to_vec()), "{what}");
        let after = self.counters();
        assert_eq!(after.refused(refusal), before.refused(refusal) + 1, "{what}: counted as {refusal:?}");
        let total = |counters: &Counters| counters.refused.iter().map(|(_, count)| count).sum::<u64>();
        assert_eq!(total(&after), total(&before) + 1, "{what}: counted once");
        assert_eq!(after.decapsulated, before.decapsulated, "{what}: not decapsulated");
    }
}

fn addresses(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|address| address.parse().unwrap()).collect()
}

fn ip(address: &str) -> IpAddr {
    address.parse().unwrap()
}

fn sock(address: &str, port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(ip(address), port)
}

/// A client's UDP query to `vip`, as it would arrive at a real server directly.
fn query(vip: &str, port: u16) -> Vec<u8> {
    let client = if vip.contains(':') { CLIENT6 } else { CLIENT4 };
    packet::udp_frame(sock(client, port), sock(vip, 53), b"who are you?")
}

/// `direct` in the director's tunnel to this real server, over `outer` (4 or 6).
fn tunnel(outer: u8, direct: &[u8]) -> Vec<u8> {
    match outer {
        4 => packet::tunnelled(ip(DIRECTOR4), ip(REAL4), direct),
        _ => packet::tunnelled(ip(DIRECTOR6), ip(REAL6), direct),
    }
}

/// The length of an untagged frame's IP packet, as its header states.
fn ip_len(frame: &[u8]) -> u64 {
    match frame[L3] >> 4 {
        4 => u64::from(u16::from_be_bytes([frame[L3 + 2], frame[L3 + 3]])),
        _ => 40 + u64::from(u16::from_be_bytes([frame[L3 + 4], frame[L3 + 5]])),
    }
}

/// Rewrites the IPv4 header at `at` with `change`, then its checksum, so that only the
/// change is wrong with it.
fn with_ipv4(frame: &[u8], at: usize, change: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut frame = frame.to_vec();
    change(&mut frame[at..]);
    packet::refresh_ipv4_checksum(&mut frame, at);
    frame
}

#[test]
fn every_tunnel_format_becomes_the_client_s_own_frame() {
    let bed = Bed::new();
    let mut bytes = 0;
    let cases =
        [("IPv4 in IPv4", 4, VIP4), ("IPv6 in IPv6", 6, VIP6), ("IPv4 in IPv6", 6, VIP4), ("IPv6 in IPv4", 4, VIP6)];
    for (what, outer, vip) in cases {
        let client = if vip.contains(':') { CLIENT6 } else { CLIENT4 };
        for direct in [query(vip, 40000), packet::tcp_frame(sock(client, 40001), sock(vip, 80), TCP_SYN, b"")] {
            let tunnelled = tunnel(outer, &direct);
            let outer_len = if outer == 4 { 20 } else { 40 };
            assert_eq!(tunnelled.len(), direct.len() + outer_len, "{what}: the test's tunnel adds one header");
            let (verdict, out) = bed.run(&tunnelled);
            assert_eq!(verdict, XDP_PASS, "{what}");
            // The same MACs, the inner family's ether type, the inner bytes as they were.
            assert_eq!(out, direct, "{what}");
            bytes += ip_len(&direct);
        }
    }
    let counters = bed.counters();
    assert_eq!(counters.decapsulated, Traffic { packets: 8, bytes }, "packets and inner bytes");
    assert!(counters.refused.iter().all(|(_, count)| *count == 0), "{counters:?}");
}

#[test]
fn a_vlan_tag_stays_in_front_of_the_inner_packet() {
    let bed = Bed::new();
    for (outer, vip) in [(4, VIP4), (6, VIP6), (6, VIP4), (4, VIP6)] {
        let direct = query(vip, 40100);
        for vid in [42, 0] {
            let (verdict, out) = bed.run(&packet::vlan_tagged(&tunnel(outer, &direct), vid));
            assert_eq!(
                (verdict, out),
                (XDP_PASS, packet::vlan_tagged(&direct, vid)),
                "IPv{outer} outer, {vip}, VLAN {vid}"
            );
        }
    }
    assert_eq!(bed.counters().decapsulated.packets, 8);
}

#[test]
fn bytes_past_the_tunnel_packet_stay_past_the_inner_one() {
    let bed = Bed::new();
    // Ethernet padding (or anything a driver leaves behind the packet) is not the
    // packet's: it stays where it is, and the kernel trims it by the inner header.
    let direct = query(VIP4, 40200);
    let mut padded = tunnel(4, &direct);
    padded.extend_from_slice(&[0xee; 6]);
    let mut expected = direct.clone();
    expected.extend_from_slice(&[0xee; 6]);
    assert_eq!(bed.run(&padded), (XDP_PASS, expected));
    assert_eq!(bed.counters().decapsulated.bytes, ip_len(&direct), "the inner packet's own length");
}

#[test]
fn ip_options_in_either_header_are_passed_over() {
    let bed = Bed::new();
    let client = sock(CLIENT4, 40300);
    let datagram = packet::udp(client, sock(VIP4, 53), b"options");
    // The inner packet keeps its options; an outer header with options goes whole.
    let inner = packet::ipv4(client.ip(), ip(VIP4), PROTO_UDP, &[1, 1, 1, 1, 1, 1, 1, 1], &datagram);
    let direct = packet::ethernet(packet::ETHERTYPE_IPV4, &inner);
    let outer = packet::ipv4(ip(DIRECTOR4), ip(REAL4), PROTO_IPIP, &[1, 1, 1, 1], &inner);
    assert_eq!(bed.run(&packet::ethernet(packet::ETHERTYPE_IPV4, &outer)), (XDP_PASS, direct.clone()));
    assert_eq!(bed.run(&tunnel(4, &direct)), (XDP_PASS, direct));
}

#[test]
fn what_is_not_a_tunnel_packet_passes_untouched_and_uncounted() {
    let bed = Bed::new();
    let direct = query(VIP4, 40400);
    let gre = packet::ip_frame(ip(DIRECTOR4), ip(REAL4), 47, &direct[L3..]);
    let mut cut_before_protocol = tunnel(4, &direct);
    cut_before_protocol.truncate(L3 + 9);
    // IPv6 extension headers in front of the tunnel's are not walked: the kernel's.
    let hop_by_hop = {
        let mut payload = vec![PROTO_IPV6, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&query(VIP6, 40401)[L3..]);
        packet::ip_frame(ip(DIRECTOR6), ip(REAL6), 0, &payload)
    };
    let cases = [
        ("a client's packet to a VIP", direct.clone()),
        ("IPv6 to a VIP", query(VIP6, 40402)),
        ("TCP to the real server", packet::tcp_frame(sock(CLIENT4, 40403), sock(REAL4, 22), TCP_SYN, b"")),
        ("ARP", packet::arp_request(ip(DIRECTOR4), ip(REAL4))),
        ("ICMP", packet::icmp_echo(ip(DIRECTOR4), ip(REAL4))),
        ("neighbour discovery", packet::ip_frame(ip(DIRECTOR6), ip(REAL6), 58, &[135, 0, 0, 0])),
        ("GRE", gre),
        ("an IPv4 header cut before its protocol byte", cut_before_protocol),
        ("IPv6 with a hop-by-hop header", hop_by_hop),
        ("a VLAN tag cut", packet::vlan_tagged(&direct, 7)[..16].to_vec()),
    ];
    for (what, frame) in cases {
        assert_eq!(bed.run(&frame), (XDP_PASS, frame.clone()), "{what}");
    }
    let counters = bed.counters();
    assert_eq!(counters.decapsulated, Traffic::default(), "nothing decapsulated");
    assert!(counters.refused.iter().all(|(_, count)| *count == 0), "nothing refused: {counters:?}");
}

#[test]
fn tunnels_for_another_host_or_another_destination_are_refused() {
    let mut bed = Bed::new();
    let other_host = |outer: u8, direct: &[u8]| match outer {
        4 => packet::tunnelled(ip(DIRECTOR4), ip("198.18.1.12"), direct),
        _ => packet::tunnelled(ip(DIRECTOR6), ip("2001:db8:1::12"), direct),
    };
    let not_a_vip4 = packet::udp_frame(sock(CLIENT4, 40500), sock("203.0.113.99", 53), b"?");
    let not_a_vip6 = packet::udp_frame(sock(CLIENT6, 40500), sock("2001:db8:100::99", 53), b"?");
    let local_not_vip = packet::udp_frame(sock(CLIENT4, 40500), sock(REAL4, 53), b"?");
    for outer in [4, 6] {
        for vip in [VIP4, VIP6] {
            bed.assert_refused("another host's tunnel", &other_host(outer, &query(vip, 40501)), Refusal::NotLocal);
        }
        for direct in [&not_a_vip4, &not_a_vip6, &local_not_vip] {
            bed.assert_refused("an inner destination that is not a VIP", &tunnel(outer, direct), Refusal::NotAVip);
        }
    }
    // The host's addresses change: a tunnel to an address it no longer has is refused,
    // one to an address it gained is decapsulated.
    let change = bed.decap.set_local(addresses(&[REAL6, "198.18.1.12", "127.0.0.1", "::1"])).unwrap();
    assert_eq!(change.added, vec![ip("198.18.1.12")]);
    assert_eq!(change.removed, vec![ip(REAL4)]);
    bed.assert_refused("an address the host no longer has", &tunnel(4, &query(VIP4, 40502)), Refusal::NotLocal);
    let direct = query(VIP4, 40503);
    assert_eq!(bed.run(&other_host(4, &direct)), (XDP_PASS, direct));
    // And the VIPs: one taken away is refused.
    bed.decap.set_vips(addresses(&[VIP6])).unwrap();
    bed.assert_refused("a VIP taken away", &tunnel(6, &query(VIP4, 40504)), Refusal::NotAVip);
}

#[test]
fn malformed_outer_headers_and_fragments_are_refused() {
    let bed = Bed::new();
    let direct4 = query(VIP4, 40600);
    let in4 = tunnel(4, &direct4);
    let in6 = tunnel(6, &direct4);
    let outer4 = |change: fn(&mut [u8])| with_ipv4(&in4, L3, change);
    let mut bad_checksum = in4.clone();
    bad_checksum[L3 + 10] ^= 0xff;
    let mut ipv6_payload_beyond = in6.clone();
    ipv6_payload_beyond[L3 + 5] += 1;
    let cases: Vec<(&str, Vec<u8>, Refusal)> = vec![
        ("outer checksum wrong", bad_checksum, Refusal::MalformedOuter),
        ("outer IHL 4", outer4(|ip| ip[0] = 0x44), Refusal::MalformedOuter),
        (
            "outer IHL beyond its total length",
            outer4(|ip| ip[..4].copy_from_slice(&[0x4f, 0, 0, 56])),
            Refusal::MalformedOuter,
        ),
        ("outer version 6 in an IPv4 frame", outer4(|ip| ip[0] = 0x65), Refusal::MalformedOuter),
        ("outer total length beyond the frame", outer4(|ip| ip[3] += 1), Refusal::MalformedOuter),
        (
            "outer total length below its header",
            outer4(|ip| ip[2..4].copy_from_slice(&[0, 16])),
            Refusal::MalformedOuter,
        ),
        ("outer IPv4 header cut after the protocol", in4[..L3 + 12].to_vec(), Refusal::MalformedOuter),
        ("outer IPv6 payload length beyond the frame", ipv6_payload_beyond, Refusal::MalformedOuter),
        (
            "outer IPv6 version 4",
            {
                let mut f = in6.clone();
                f[L3] = 0x40;
                f
            },
            Refusal::MalformedOuter,
        ),
        ("outer IPv6 header cut", in6[..L3 + 30].to_vec(), Refusal::MalformedOuter),
        ("more fragments", outer4(|ip| ip[6] = 0x20), Refusal::Fragment),
        ("a later fragment", outer4(|ip| ip[7] = 0x10), Refusal::Fragment),
    ];
    for (what, frame, refusal) in cases {
        bed.assert_refused(what, &frame, refusal);
    }
    assert_eq!(bed.counters().decapsulated.packets, 0);
}

#[test]
fn malformed_or_truncated_inner_headers_are_refused() {
    let bed = Bed::new();
    let direct4 = query(VIP4, 40700);
    let direct6 = query(VIP6, 40701);
    // A tunnel whose payload is `inner`, however wrong, over either outer family.
    let around = |outer: u8, inner: &[u8]| -> Vec<u8> {
        match outer {
            4 => packet::ip_frame(ip(DIRECTOR4), ip(REAL4), PROTO_IPIP, inner),
            _ => packet::ip_frame(ip(DIRECTOR6), ip(REAL6), PROTO_IPIP, inner),
        }
    };
    let around6 = |outer: u8, inner: &[u8]| -> Vec<u8> {
        match outer {
            4 => packet::ip_frame(ip(DIRECTOR4), ip(REAL4), PROTO_IPV6, inner),
            _ => packet::ip_frame(ip(DIRECTOR6), ip(REAL6), PROTO_IPV6, inner),
        }
    };
    let inner4 = |change: fn(&mut [u8])| with_ipv4(&direct4, L3, change)[L3..].to_vec();
    let mut bad_checksum = direct4[L3..].to_vec();
    bad_checksum[10] ^= 0xff;
    let mut inner6_long = direct6[L3..].to_vec();
    inner6_long[5] += 1;
    for outer in [4, 6] {
        let cases: Vec<(&str, Vec<u8>, Refusal)> = vec![
            ("no inner packet at all", around(outer, &[]), Refusal::TruncatedInner),
            ("an inner IPv4 header cut", around(outer, &direct4[L3..L3 + 19]), Refusal::TruncatedInner),
            ("an inner IPv6 header cut", around6(outer, &direct6[L3..L3 + 39]), Refusal::TruncatedInner),
            ("IPv6 where IPv4 was announced", around(outer, &direct6[L3..]), Refusal::MalformedInner),
            ("IPv4 where IPv6 was announced", around6(outer, &direct4[L3..]), Refusal::MalformedInner),
            ("inner IHL 4", around(outer, &inner4(|ip| ip[0] = 0x44)), Refusal::MalformedInner),
            ("inner IHL beyond the payload", around(outer, &inner4(|ip| ip[0] = 0x4f)), Refusal::MalformedInner),
            ("inner total length beyond the payload", around(outer, &inner4(|ip| ip[3] += 1)), Refusal::MalformedInner),
            ("inner total length below its header", around(outer, &inner4(|ip| ip[3] = 16)), Refusal::MalformedInner),
            ("inner checksum wrong", around(outer, &bad_checksum), Refusal::MalformedInner),
            ("inner IPv6 payload length beyond the payload", around6(outer, &inner6_long), Refusal::MalformedInner),
        ];
        for (what, frame, refusal) in cases {
            bed.assert_refused(&format!("IPv{outer} outer: {what}"), &frame, refusal);
        }
    }
    // The frame holds the whole inner packet, but the outer header says its payload
    // ends earlier: what the outer header does not carry is not the tunnel's.
    let mut short_outer = tunnel(4, &direct4);
    short_outer[L3 + 2..L3 + 4].copy_from_slice(&(20 + 20 + 4u16).to_be_bytes());
    packet::refresh_ipv4_checksum(&mut short_outer, L3);
    bed.assert_refused("inner packet beyond the outer total length", &short_outer, Refusal::MalformedInner);
    let mut short_outer6 = tunnel(6, &direct6);
    short_outer6[L3 + 4..L3 + 6].copy_from_slice(&30u16.to_be_bytes());
    bed.assert_refused("inner IPv6 header beyond the outer payload length", &short_outer6, Refusal::TruncatedInner);
    assert_eq!(bed.counters().decapsulated.packets, 0);
}
