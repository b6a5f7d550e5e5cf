//! The IP tunnel (`tun`) through `BPF_PROG_TEST_RUN`: the exact frames towards the real
//! server (outer header built from scratch by the test, its checksum with it), and the
//! ICMP errors a client gets when its packet would not fit the tunnel.

use std::net::{IpAddr, SocketAddr};

use lb_common::stats::Reason;
use lb_tests::{
    bed::{self, LINK_MTU, RoutedBed, XDP_DROP, XDP_TX, real_mac, tunnel_source},
    packet::{self, CLIENT_MAC, DIRECTOR_MAC, PROTO_ICMP, TCP_ACK, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";
const REAL4: &str = "198.18.21.11";
const REAL6: &str = "2001:db8:21::11";
const CLIENT4: &str = "198.18.1.1";
const CLIENT6: &str = "2001:db8:1::1";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn sock(text: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(text), port)
}

/// Tunnelled services: TCP and UDP on each VIP to a real server of the VIP's version,
/// and TCP port 8443 of the IPv4 VIP to an IPv6 real server.
fn services() -> String {
    let mut yaml = String::new();
    for (name, vip, port, protocol, real) in [
        ("web4", VIP4, 80, "tcp", REAL4),
        ("dns4", VIP4, 53, "udp", REAL4),
        ("web6", VIP6, 80, "tcp", REAL6),
        ("dns6", VIP6, 53, "udp", REAL6),
        ("cross", VIP4, 8443, "tcp", REAL6),
    ] {
        yaml += &format!(
            "  - {{ name: {name}, vip: \"{vip}\", port: {port}, protocol: {protocol}, scheduler: rr, \
             forwarding: tun, reals: [{{ address: \"{real}\" }}] }}\n"
        );
    }
    yaml
}

fn tunnel_bed(reach: bed::Reach) -> RoutedBed {
    RoutedBed::with_reach(&services(), reach)
}

/// What the real server receives for the client's `frame`: the frame inside the outer
/// header from the director's tunnel source, between the director and the real server.
fn towards_real(real: &str, frame: &[u8]) -> Vec<u8> {
    let outer = packet::encapsulated(tunnel_source(ip(real)), ip(real), frame);
    packet::with_macs(&outer, real_mac(real), DIRECTOR_MAC)
}

fn assert_tunnelled(bed: &RoutedBed, real: &str, frame: &[u8]) {
    let (verdict, out) = bed.run(frame);
    assert_eq!(verdict, XDP_TX, "sent back out towards the real server");
    assert_eq!(packet::without_flow_label(&out), towards_real(real, frame));
}

#[test]
fn ipv4_in_ipv4_carries_the_client_packet_unchanged() {
    let bed = tunnel_bed(bed::on_ingress);
    let client = sock(CLIENT4, 40000);
    assert_tunnelled(&bed, REAL4, &packet::tcp_frame(client, sock(VIP4, 80), TCP_SYN, &[]));
    assert_tunnelled(&bed, REAL4, &packet::tcp_frame(client, sock(VIP4, 80), TCP_ACK, b"GET / HTTP/1.1\r\n"));
    assert_tunnelled(&bed, REAL4, &packet::udp_frame(client, sock(VIP4, 53), b"query"));
}

#[test]
fn ipv6_in_ipv6_with_a_flow_label_per_flow() {
    let bed = tunnel_bed(bed::on_ingress);
    let client = sock(CLIENT6, 40000);
    let syn = packet::tcp_frame(client, sock(VIP6, 80), TCP_SYN, &[]);
    assert_tunnelled(&bed, REAL6, &syn);
    assert_tunnelled(&bed, REAL6, &packet::udp_frame(client, sock(VIP6, 53), b"query"));
    // The flow label follows the inner flow: the same for a flow's packets, so routers
    // keep them on one path.
    let label = |frame: &[u8]| bed.run(frame).1[packet::L3 + 1..packet::L3 + 4].to_vec();
    let data = packet::tcp_frame(client, sock(VIP6, 80), TCP_ACK, b"data");
    assert_eq!(label(&syn), label(&data));
    let other = packet::tcp_frame(sock(CLIENT6, 40001), sock(VIP6, 80), TCP_SYN, &[]);
    assert_ne!(label(&syn), label(&other), "another flow, another label");
}

#[test]
fn an_ipv4_vip_served_by_an_ipv6_real_server() {
    let bed = tunnel_bed(bed::on_ingress);
    let client = sock(CLIENT4, 40000);
    assert_tunnelled(&bed, REAL6, &packet::tcp_frame(client, sock(VIP4, 8443), TCP_SYN, &[]));
    assert_tunnelled(&bed, REAL6, &packet::tcp_frame(client, sock(VIP4, 8443), TCP_ACK, b"hello"));
}

#[test]
fn dscp_and_ecn_are_copied_to_the_outer_header() {
    let bed = tunnel_bed(bed::on_ingress);
    // DSCP 46 (expedited forwarding), ECN 01 (ECT(1)).
    let mut frame = packet::udp_frame(sock(CLIENT4, 40000), sock(VIP4, 53), b"voice");
    packet::set_ipv4_fields(&mut frame, packet::L3, 0xb9, 0x1234, 0x4000);
    let (_, out) = bed.run(&frame);
    assert_eq!(out[packet::L3 + 1], 0xb9);
    assert_eq!(out, towards_real(REAL4, &frame));
    let mut frame = packet::udp_frame(sock(CLIENT6, 40000), sock(VIP6, 53), b"voice");
    frame[packet::L3] = 0x6b;
    frame[packet::L3 + 1] = 0x90;
    let (_, out) = bed.run(&frame);
    assert_eq!(&out[packet::L3..packet::L3 + 2], &[0x6b, 0x90], "traffic class 0xb9 and the flow label's top");
    assert_eq!(packet::without_flow_label(&out), towards_real(REAL6, &frame));
}

#[test]
fn a_tagged_frame_keeps_its_vlan() {
    let bed = tunnel_bed(|_| Some((bed::INGRESS, 100)));
    let frame = packet::tcp_frame(sock(CLIENT4, 40000), sock(VIP4, 80), TCP_SYN, &[]);
    let (verdict, out) = bed.run(&packet::vlan_tagged(&frame, 100));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, packet::vlan_tagged(&towards_real(REAL4, &frame), 100));
}

/// The ICMP error the client gets back for its `frame` (untagged, IPv4 without
/// options): from the VIP, quoting the IP header and 8 bytes, with `mtu`.
fn fragmentation_needed(frame: &[u8], mtu: u16) -> Vec<u8> {
    let [high, low] = mtu.to_be_bytes();
    let quoted = &frame[packet::L3..packet::L3 + 28];
    let icmp = packet::icmp(3, 4, [0, 0, high, low], quoted);
    let mut reply = packet::ip_frame(ip(VIP4), ip(CLIENT4), PROTO_ICMP, &icmp);
    packet::set_ipv4_fields(&mut reply, packet::L3, 0xc0, 0, 0);
    packet::with_macs(&reply, CLIENT_MAC, DIRECTOR_MAC)
}

fn packet_too_big(frame: &[u8], mtu: u32) -> Vec<u8> {
    let quoted = &frame[packet::L3..packet::L3 + 48];
    let icmp = packet::icmpv6(ip(VIP6), ip(CLIENT6), 2, 0, mtu.to_be_bytes(), quoted);
    let reply = packet::ip_frame(ip(VIP6), ip(CLIENT6), packet::PROTO_ICMPV6, &icmp);
    packet::with_macs(&reply, CLIENT_MAC, DIRECTOR_MAC)
}

#[test]
fn a_packet_too_big_for_the_tunnel_is_answered_with_fragmentation_needed() {
    let bed = tunnel_bed(bed::on_ingress);
    let inner_mtu = LINK_MTU - 20;
    let client = sock(CLIENT4, 40000);
    // The largest datagram that fits once encapsulated goes through...
    let fits = packet::udp_frame(client, sock(VIP4, 53), &vec![7; usize::from(inner_mtu) - 28]);
    assert_tunnelled(&bed, REAL4, &fits);
    // ...one byte more is answered.
    let big = packet::udp_frame(client, sock(VIP4, 53), &vec![7; usize::from(inner_mtu) - 27]);
    let (verdict, out) = bed.run(&big);
    assert_eq!(verdict, XDP_TX, "the answer goes back the way the packet came");
    assert_eq!(out, fragmentation_needed(&big, inner_mtu));
    assert_eq!(bed.reason(Reason::TooBig), 1);
    // A TCP segment of an established connection, to an IPv6 real server: the outer
    // header is IPv6's 40 bytes.
    let syn = packet::tcp_frame(client, sock(VIP4, 8443), TCP_SYN, &[]);
    assert_tunnelled(&bed, REAL6, &syn);
    let segment = packet::tcp_frame(client, sock(VIP4, 8443), TCP_ACK, &[1; 1448]);
    let (verdict, out) = bed.run(&segment);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, fragmentation_needed(&segment, LINK_MTU - 40));
    assert_eq!(bed.reason(Reason::TooBig), 2);
}

#[test]
fn a_packet_too_big_for_the_tunnel_is_answered_with_packet_too_big() {
    let bed = tunnel_bed(bed::on_ingress);
    let client = sock(CLIENT6, 40000);
    let syn = packet::tcp_frame(client, sock(VIP6, 80), TCP_SYN, &[]);
    assert_tunnelled(&bed, REAL6, &syn);
    let segment = packet::tcp_frame(client, sock(VIP6, 80), TCP_ACK, &[1; 1440]);
    let (verdict, out) = bed.run(&segment);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, packet_too_big(&segment, u32::from(LINK_MTU - 40)));
    assert_eq!(bed.reason(Reason::TooBig), 1);
}

#[test]
fn a_packet_too_big_with_ip_options_is_dropped_unanswered() {
    let bed = tunnel_bed(bed::on_ingress);
    let client = sock(CLIENT4, 40000);
    let datagram = packet::udp(client, sock(VIP4, 53), &[7; 1480]);
    let with_options = packet::ipv4(ip(CLIENT4), ip(VIP4), packet::PROTO_UDP, &[1, 1, 1, 0], &datagram);
    let frame = packet::ethernet(packet::ETHERTYPE_IPV4, &with_options);
    let (verdict, _) = bed.run(&frame);
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(bed.reason(Reason::TooBigUnanswered), 1);
    assert_eq!(bed.reason(Reason::TooBig), 0);
}
