//! Fragmented datagrams through `BPF_PROG_TEST_RUN`: every fragment goes to the real
//! server its first fragment went to, rewritten as its connection is; a fragment whose
//! first was not seen goes to the kernel, counted. Expected fragments are cut from the
//! expected whole datagram, so comparing bytes checks that the first fragment's
//! checksum update holds for the whole datagram.

use std::net::SocketAddr;

use lb_common::stats::Reason;
use lb_tests::{
    bed::{RoutedBed, XDP_PASS, XDP_TX, real_mac},
    packet::{self, DIRECTOR_MAC, ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_UDP},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";
const REALS4: [&str; 2] = ["198.18.21.11", "198.18.21.12"];
const REALS6: [&str; 2] = ["2001:db8:21::11", "2001:db8:21::12"];
const CLIENT4: &str = "198.18.1.1";
const CLIENT6: &str = "2001:db8:1::1";
/// Payload bytes per fragment: a 1500-byte link's.
const CHUNK: usize = 1448;

fn sock(text: &str, port: u16) -> SocketAddr {
    SocketAddr::new(text.parse().unwrap(), port)
}

/// A UDP service on port 53 of each VIP over two real servers (rr), by `forwarding`
/// (NAT and Full-NAT map it to 5353).
fn bed(forwarding: &str) -> RoutedBed {
    let port = if matches!(forwarding, "nat" | "fnat") { ", port: 5353" } else { "" };
    let mut yaml = String::new();
    for (name, vip, reals) in [("dns4", VIP4, REALS4), ("dns6", VIP6, REALS6)] {
        yaml += &format!(
            "  - {{ name: {name}, vip: \"{vip}\", port: 53, protocol: udp, scheduler: rr, forwarding: {forwarding}, \
             local_addresses: [198.18.21.100, \"2001:db8:21::100\"], \
             reals: [{{ address: \"{}\"{port} }}, {{ address: \"{}\"{port} }}] }}\n",
            reals[0], reals[1]
        );
    }
    RoutedBed::new(&yaml)
}

/// A UDP datagram of 4000 bytes of payload, as an IP packet.
fn datagram(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let payload: Vec<u8> = (0..4000).map(|i| (i % 253) as u8).collect();
    let udp = packet::udp(src, dst, &payload);
    if src.is_ipv4() {
        packet::ipv4(src.ip(), dst.ip(), PROTO_UDP, &[], &udp)
    } else {
        packet::ipv6(src.ip(), dst.ip(), PROTO_UDP, &udp)
    }
}

/// Its fragments, in frames to the director.
fn fragments(ip_packet: &[u8], id: u32) -> Vec<Vec<u8>> {
    if ip_packet[0] >> 4 == 4 {
        let mut packet = ip_packet.to_vec();
        packet::set_ipv4_fields(&mut packet, 0, 0, id as u16, 0);
        packet::ipv4_fragments(&packet, CHUNK).iter().map(|f| packet::ethernet(ETHERTYPE_IPV4, f)).collect()
    } else {
        packet::ipv6_fragments(ip_packet, CHUNK, id).iter().map(|f| packet::ethernet(ETHERTYPE_IPV6, f)).collect()
    }
}

fn towards(real: &str, frame: &[u8]) -> Vec<u8> {
    packet::with_macs(frame, real_mac(real), DIRECTOR_MAC)
}

/// Which real server a frame the director sent is for, by its MAC.
fn real_of<'a>(reals: &[&'a str; 2], frame: &[u8]) -> &'a str {
    reals.iter().find(|real| frame[..6] == real_mac(real)).expect("sent to a real server")
}

#[test]
fn every_fragment_follows_its_first_to_the_same_real_server() {
    let bed = bed("dr");
    for (vip, client, reals) in [(VIP4, CLIENT4, REALS4), (VIP6, CLIENT6, REALS6)] {
        // Two datagrams, interleaved: rr sends their first fragments to different real
        // servers, and each later fragment must follow its own.
        let a = fragments(&datagram(sock(client, 40000), sock(vip, 53)), 7);
        let b = fragments(&datagram(sock(client, 40001), sock(vip, 53)), 8);
        assert_eq!(a.len(), 3);
        let (verdict, out) = bed.run(&a[0]);
        assert_eq!(verdict, XDP_TX, "{vip}");
        let real_a = real_of(&reals, &out);
        let (_, out) = bed.run(&b[0]);
        let real_b = real_of(&reals, &out);
        assert_ne!(real_a, real_b, "{vip}: rr spread the two datagrams");
        for (later_a, later_b) in a[1..].iter().zip(&b[1..]) {
            assert_eq!(bed.run(later_b), (XDP_TX, towards(real_b, later_b)), "{vip}");
            assert_eq!(bed.run(later_a), (XDP_TX, towards(real_a, later_a)), "{vip}");
        }
    }
    assert_eq!(bed.reason(Reason::Fragment), 0);
}

#[test]
fn nat_and_full_nat_rewrite_every_fragment() {
    for forwarding in ["nat", "fnat"] {
        let bed = bed(forwarding);
        for (vip, client, reals) in [(VIP4, CLIENT4, REALS4), (VIP6, CLIENT6, REALS6)] {
            let sent = fragments(&datagram(sock(client, 40000), sock(vip, 53)), 9);
            let (verdict, first) = bed.run(&sent[0]);
            assert_eq!(verdict, XDP_TX, "{forwarding} {vip}");
            let real = real_of(&reals, &first);
            let (source, port) = if forwarding == "nat" {
                (client, 40000)
            } else {
                let l4 = if vip == VIP4 { 14 + 20 } else { 14 + 48 };
                let local = if vip == VIP4 { "198.18.21.100" } else { "2001:db8:21::100" };
                (local, u16::from_be_bytes([first[l4], first[l4 + 1]]))
            };
            let expected = fragments(&datagram(sock(source, port), sock(real, 5353)), 9);
            assert_eq!(first, towards(real, &expected[0]), "{forwarding} {vip}: the first fragment");
            for (later, expected) in sent[1..].iter().zip(&expected[1..]) {
                assert_eq!(bed.run(later), (XDP_TX, towards(real, expected)), "{forwarding} {vip}: a later one");
            }
        }
    }
}

#[test]
fn a_fragment_whose_first_was_not_seen_goes_to_the_kernel() {
    let bed = bed("dr");
    for (vip, client) in [(VIP4, CLIENT4), (VIP6, CLIENT6)] {
        let sent = fragments(&datagram(sock(client, 40000), sock(vip, 53)), 10);
        assert_eq!(bed.run(&sent[2]), (XDP_PASS, sent[2].clone()), "{vip}: reordered before its first");
    }
    assert_eq!(bed.reason(Reason::Fragment), 2);
    // Nor does a first fragment of another datagram lend its ports: the identification
    // tells datagrams apart.
    let first = fragments(&datagram(sock(CLIENT4, 40002), sock(VIP4, 53)), 11);
    assert_eq!(bed.run(&first[0]).0, XDP_TX);
    let other = fragments(&datagram(sock(CLIENT4, 40002), sock(VIP4, 53)), 12);
    assert_eq!(bed.run(&other[1]).0, XDP_PASS);
    assert_eq!(bed.reason(Reason::Fragment), 3);
}
