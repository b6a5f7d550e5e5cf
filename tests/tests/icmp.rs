//! ICMP errors through `BPF_PROG_TEST_RUN`: an error about a connection's packet goes
//! where the connection's packets go, translated where the connection is rewritten.
//! Every expected frame is built from scratch (its quoted packet too), so comparing
//! bytes checks the incremental checksum updates. Runs are issued in a namespace whose
//! routes lead back to the client ([`bed::Routes`]).

use std::net::{IpAddr, SocketAddr};

use lb_agent::director::View;
use lb_common::stats::Reason;
use lb_tests::{
    bed::{ROUTER_MAC, RoutedBed, XDP_PASS, XDP_REDIRECT, XDP_TX, real_mac, tunnel_source},
    packet::{self, CLIENT_MAC, DIRECTOR_MAC, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";

/// The addresses of one IP version: client, real server, Full-NAT local address, and
/// a router on the client's side.
struct Family {
    vip: &'static str,
    client: &'static str,
    real: &'static str,
    local: &'static str,
    router: &'static str,
}

const FAMILIES: [Family; 2] = [
    Family { vip: VIP4, client: "198.18.1.1", real: "198.18.21.11", local: "198.18.21.100", router: "198.18.1.254" },
    Family {
        vip: VIP6,
        client: "2001:db8:1::1",
        real: "2001:db8:21::11",
        local: "2001:db8:21::100",
        router: "2001:db8:1::fe",
    },
];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn sock(text: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(text), port)
}

/// A web (TCP 80) and a DNS (UDP 53) service on each VIP by `forwarding`, one real
/// server each (NAT and Full-NAT map the ports to 8080 and 5353).
fn bed(forwarding: &str) -> RoutedBed {
    let mapped = matches!(forwarding, "nat" | "fnat");
    let mut yaml = String::new();
    for family in &FAMILIES {
        for (name, protocol, port, real_port) in [("web", "tcp", 80, 8080), ("dns", "udp", 53, 5353)] {
            let real_port = if mapped { format!(", port: {real_port}") } else { String::new() };
            yaml += &format!(
                "  - {{ name: {name}{}, vip: \"{}\", port: {port}, protocol: {protocol}, scheduler: rr, \
                 forwarding: {forwarding}, local_addresses: [198.18.21.100, \"2001:db8:21::100\"], \
                 reals: [{{ address: \"{}\"{real_port} }}] }}\n",
                if family.vip == VIP4 { 4 } else { 6 },
                family.vip,
                family.real
            );
        }
    }
    RoutedBed::new(&yaml)
}

/// The first bytes of an IP packet that an ICMP error quotes: its header and 8 bytes.
fn quote(ip_packet: &[u8]) -> Vec<u8> {
    let header = if ip_packet[0] >> 4 == 4 { usize::from(ip_packet[0] & 0x0f) * 4 } else { 40 };
    ip_packet[..header + 8].to_vec()
}

fn ip_packet(src: SocketAddr, dst: SocketAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let l4 =
        if protocol == PROTO_TCP { packet::tcp(src, dst, TCP_ACK, payload) } else { packet::udp(src, dst, payload) };
    if src.is_ipv4() {
        packet::ipv4(src.ip(), dst.ip(), protocol, &[], &l4)
    } else {
        packet::ipv6(src.ip(), dst.ip(), protocol, &l4)
    }
}

/// An ICMP error from `from` to `to` about `about` (an IP packet): "fragmentation
/// needed" / "packet too big" (MTU 1400) for TCP, "port unreachable" for UDP.
fn error(from: &str, to: &str, about: &[u8]) -> Vec<u8> {
    let (from, to) = (ip(from), ip(to));
    let udp = about[if from.is_ipv4() { 9 } else { 6 }] == PROTO_UDP;
    let quoted = quote(about);
    if from.is_ipv4() {
        let (code, rest) = if udp { (3, [0; 4]) } else { (4, [0, 0, 0x05, 0x78]) };
        packet::ip_frame(from, to, PROTO_ICMP, &packet::icmp(3, code, rest, &quoted))
    } else {
        let (kind, code, rest) = if udp { (1, 4, [0; 4]) } else { (2, 0, 1400u32.to_be_bytes()) };
        packet::ip_frame(from, to, PROTO_ICMPV6, &packet::icmpv6(from, to, kind, code, rest, &quoted))
    }
}

fn towards_real(family: &Family, frame: &[u8]) -> Vec<u8> {
    packet::with_macs(frame, real_mac(family.real), DIRECTOR_MAC)
}

fn towards_client(frame: &[u8]) -> Vec<u8> {
    packet::with_macs(frame, CLIENT_MAC, ROUTER_MAC)
}

/// Opens the client's TCP connection (port 40000) and UDP flow (port 40001); returns
/// the Full-NAT local ports they took (or the client's ports).
fn open(bed: &RoutedBed, family: &Family) -> (u16, u16) {
    let source_port = |frame: &[u8]| {
        let l4 = if frame[12..14] == [0x08, 0x00] { 14 + 20 } else { 14 + 40 };
        u16::from_be_bytes([frame[l4], frame[l4 + 1]])
    };
    let (verdict, out) = bed.run(&packet::tcp_frame(sock(family.client, 40000), sock(family.vip, 80), TCP_SYN, b""));
    assert_eq!(verdict, XDP_TX);
    let tcp = source_port(&out);
    let (verdict, out) = bed.run(&packet::udp_frame(sock(family.client, 40001), sock(family.vip, 53), b"query"));
    assert_eq!(verdict, XDP_TX);
    (tcp, source_port(&out))
}

/// A router on the client's side tells the VIP that the server's reply did not fit.
fn too_big_from_the_client_side(family: &Family) -> Vec<u8> {
    let reply = ip_packet(sock(family.vip, 80), sock(family.client, 40000), PROTO_TCP, b"");
    error(family.router, family.vip, &reply)
}

#[test]
fn direct_routing_delivers_errors_about_replies_to_the_real_server() {
    let bed = bed("dr");
    for family in &FAMILIES {
        open(&bed, family);
        let error = too_big_from_the_client_side(family);
        assert_eq!(bed.run(&error), (XDP_TX, towards_real(family, &error)), "{}", family.vip);
    }
}

#[test]
fn tunnels_carry_errors_about_replies_to_the_real_server() {
    let bed = bed("tun");
    for family in &FAMILIES {
        open(&bed, family);
        let error = too_big_from_the_client_side(family);
        let outer = packet::encapsulated(tunnel_source(ip(family.real)), ip(family.real), &error);
        let (verdict, out) = bed.run(&error);
        assert_eq!(verdict, XDP_TX, "{}", family.vip);
        assert_eq!(packet::without_flow_label(&out), towards_real(family, &outer), "{}", family.vip);
    }
}

#[test]
fn nat_translates_errors_about_replies_for_the_real_server() {
    let bed = bed("nat");
    for family in &FAMILIES {
        open(&bed, family);
        // The real server sent RIP:8080 -> client; the error reaches it as about that.
        let sent = ip_packet(sock(family.real, 8080), sock(family.client, 40000), PROTO_TCP, b"");
        let expected = error(family.router, family.real, &sent);
        let (verdict, out) = bed.run(&too_big_from_the_client_side(family));
        assert_eq!(verdict, XDP_TX, "{}", family.vip);
        assert_eq!(out, towards_real(family, &expected), "{}", family.vip);
    }
}

#[test]
fn full_nat_translates_errors_about_replies_for_the_real_server() {
    let bed = bed("fnat");
    for family in &FAMILIES {
        let (port, _) = open(&bed, family);
        // The real server sent RIP:8080 -> LIP:port, and hears from the local address.
        let sent = ip_packet(sock(family.real, 8080), sock(family.local, port), PROTO_TCP, b"");
        let expected = error(family.local, family.real, &sent);
        let (verdict, out) = bed.run(&too_big_from_the_client_side(family));
        assert_eq!(verdict, XDP_TX, "{}", family.vip);
        assert_eq!(out, towards_real(family, &expected), "{}", family.vip);
    }
}

#[test]
fn nat_and_full_nat_translate_a_real_servers_port_unreachable_for_the_client() {
    for forwarding in ["nat", "fnat"] {
        let bed = bed(forwarding);
        for family in &FAMILIES {
            let (_, port) = open(&bed, family);
            let (from, to) = if forwarding == "nat" { (family.client, 40001) } else { (family.local, port) };
            // What the director sent, as the real server quotes it...
            let query = ip_packet(sock(from, to), sock(family.real, 5353), PROTO_UDP, b"query");
            let unreachable = error(family.real, from, &query);
            // ...and what the client sent, from the VIP it sent it to.
            let sent = ip_packet(sock(family.client, 40001), sock(family.vip, 53), PROTO_UDP, b"query");
            let expected = error(family.vip, family.client, &sent);
            let (verdict, out) = bed.run(&unreachable);
            assert_eq!(verdict, XDP_REDIRECT, "{forwarding} {}: routed to the client", family.vip);
            assert_eq!(out, towards_client(&expected), "{forwarding} {}", family.vip);
        }
        let dns4 = bed.director.status(View::Serving).unwrap().into_iter().find(|s| s.name == "dns4").unwrap();
        assert_eq!(dns4.stats.out_packets, 1, "{forwarding}: the error counts as the service's");
    }
}

#[test]
fn errors_about_no_connection_and_malformed_ones_pass_to_the_kernel() {
    let bed = bed("nat");
    let family = &FAMILIES[0];
    let unknown = too_big_from_the_client_side(family);
    assert_eq!(bed.run(&unknown), (XDP_PASS, unknown.clone()));
    assert_eq!(bed.reason(Reason::IcmpNoConnection), 1);

    let reply = ip_packet(sock(family.vip, 80), sock(family.client, 40000), PROTO_TCP, b"");
    for cut in [10, 24] {
        // The quoted IP header cut short, then only 4 bytes of its TCP header.
        let truncated = packet::icmp(3, 4, [0, 0, 0x05, 0x78], &reply[..cut]);
        let frame = packet::ip_frame(ip(family.router), ip(family.vip), PROTO_ICMP, &truncated);
        assert_eq!(bed.run(&frame), (XDP_PASS, frame.clone()), "quoting {cut} bytes");
    }
    assert_eq!(bed.reason(Reason::MalformedIcmp), 2);
    let echo = packet::icmp_echo(ip(family.client), ip(family.vip));
    assert_eq!(bed.run(&echo), (XDP_PASS, echo.clone()), "the director's kernel answers pings to the VIP");
    assert_eq!(bed.reason(Reason::NotTcpUdp), 1);
}
