//! NAT and Full-NAT through `BPF_PROG_TEST_RUN`: the exact frames out, both ways. Each
//! expected frame is built from scratch with its own checksums, so comparing bytes
//! checks the program's incremental checksum updates too. Replies are run inside a
//! namespace whose routes lead back to the client ([`bed::Routes`]).

use std::net::SocketAddr;

use lb_common::stats::Reason;
use lb_tests::{
    bed::{self, ROUTER_MAC, RoutedBed as Bed, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, real_mac},
    packet::{self, CLIENT_MAC, DIRECTOR_MAC, TCP_ACK, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";
const REAL4: &str = "198.18.21.11";
const REAL6: &str = "2001:db8:21::11";
const LOCAL4: &str = "198.18.21.100";
const LOCAL6: &str = "2001:db8:21::100";

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn family(vip: &str) -> (&'static str, &'static str, &'static str) {
    if vip.contains(':') { ("2001:db8:1::1", REAL6, LOCAL6) } else { ("198.18.1.1", REAL4, LOCAL4) }
}

/// A TCP and a UDP service on each VIP, by `forwarding`, one real server each serving
/// on port 8080 (UDP on 5353), Full-NAT local addresses given.
fn services(forwarding: &str, extra: &str) -> String {
    let mut yaml = String::new();
    for (vip, suffix) in [(VIP4, "4"), (VIP6, "6")] {
        let (_, real, _) = family(vip);
        for (name, protocol, port, real_port) in [("web", "tcp", 80, 8080), ("dns", "udp", 53, 5353)] {
            yaml += &format!(
                "  - {{ name: {name}{suffix}, vip: \"{vip}\", port: {port}, protocol: {protocol}, scheduler: rr, \
                 forwarding: {forwarding}, local_addresses: [{LOCAL4}, \"{LOCAL6}\"],{extra} \
                 reals: [{{ address: \"{real}\", port: {real_port} }}] }}\n"
            );
        }
    }
    yaml
}

/// What the real server receives: the frame as the client would have sent it to `dst`
/// from `src`, between the director and the real server.
fn towards_real(real: &str, frame: Vec<u8>) -> Vec<u8> {
    packet::with_macs(&frame, real_mac(real), DIRECTOR_MAC)
}

/// What the client receives: the frame from the director's interface towards clients.
fn towards_client(frame: Vec<u8>) -> Vec<u8> {
    packet::with_macs(&frame, CLIENT_MAC, ROUTER_MAC)
}

/// The TCP source port of a frame.
fn source_port(frame: &[u8]) -> u16 {
    let l4 = if frame[12..14] == [0x08, 0x00] { 14 + usize::from(frame[14] & 0x0f) * 4 } else { 14 + 40 };
    u16::from_be_bytes([frame[l4], frame[l4 + 1]])
}

#[test]
fn nat_sends_requests_to_the_real_servers_port_and_puts_the_vip_back_on_replies() {
    let bed = Bed::new(&services("nat", ""));
    for vip in [VIP4, VIP6] {
        let (client, real, _) = family(vip);
        let syn = packet::tcp_frame(sock(client, 40000), sock(vip, 80), TCP_SYN, b"");
        let (verdict, out) = bed.run(&syn);
        assert_eq!(verdict, XDP_TX, "{vip}");
        let expected = packet::tcp_frame(sock(client, 40000), sock(real, 8080), TCP_SYN, b"");
        assert_eq!(out, towards_real(real, expected), "{vip}: destination := RIP:rport, checksums updated");

        let data = packet::tcp_frame(sock(client, 40000), sock(vip, 80), TCP_ACK, b"GET / HTTP/1.1\r\n\r\n");
        let expected = packet::tcp_frame(sock(client, 40000), sock(real, 8080), TCP_ACK, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(bed.run(&data), (XDP_TX, towards_real(real, expected)), "{vip}: the established flow");

        let reply = packet::tcp_frame(sock(real, 8080), sock(client, 40000), TCP_ACK, b"HTTP/1.1 200 OK\r\n");
        let (verdict, out) = bed.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT, "{vip}: the reply leaves towards the client's next hop");
        let expected = packet::tcp_frame(sock(vip, 80), sock(client, 40000), TCP_ACK, b"HTTP/1.1 200 OK\r\n");
        assert_eq!(out, towards_client(expected), "{vip}: source := VIP:vport");

        let query = packet::udp_frame(sock(client, 40001), sock(vip, 53), b"query");
        let expected = packet::udp_frame(sock(client, 40001), sock(real, 5353), b"query");
        assert_eq!(bed.run(&query), (XDP_TX, towards_real(real, expected)), "{vip}: UDP");
        let answer = packet::udp_frame(sock(real, 5353), sock(client, 40001), b"answer");
        let expected = packet::udp_frame(sock(vip, 53), sock(client, 40001), b"answer");
        assert_eq!(bed.run(&answer), (XDP_REDIRECT, towards_client(expected)), "{vip}: UDP reply");
    }
    let web4 = bed.director.status().unwrap().into_iter().find(|s| s.name == "web4").unwrap();
    assert_eq!((web4.stats.conns, web4.stats.in_packets, web4.stats.out_packets), (1, 2, 1));
    assert_eq!(web4.stats.out_bytes, 40 + 17, "the reply's IP packet");
}

#[test]
fn an_ipv4_udp_datagram_without_a_checksum_keeps_none() {
    let bed = Bed::new(&services("nat", ""));
    let mut query = packet::udp_frame(sock("198.18.1.1", 40002), sock(VIP4, 53), b"query");
    query[14 + 20 + 6..14 + 20 + 8].fill(0);
    let (verdict, out) = bed.run(&query);
    assert_eq!(verdict, XDP_TX);
    let mut expected = packet::udp_frame(sock("198.18.1.1", 40002), sock(REAL4, 5353), b"query");
    expected[14 + 20 + 6..14 + 20 + 8].fill(0);
    assert_eq!(out, towards_real(REAL4, expected));
}

#[test]
fn packets_from_real_servers_that_belong_to_no_connection_pass_untouched() {
    let bed = Bed::new(&services("nat", ""));
    let stray = packet::tcp_frame(sock(REAL4, 8080), sock("198.18.1.1", 41000), TCP_ACK, b"");
    assert_eq!(bed.run(&stray), (XDP_PASS, stray.clone()));
    assert_eq!(bed.reason(Reason::NotAService), 1);
}

#[test]
fn replies_with_no_way_back_are_dropped_and_counted() {
    let bed = Bed::new(&services("nat", ""));
    for (client, reason) in [("198.18.1.99", Reason::NextHopUnresolved), ("198.19.0.1", Reason::NoRoute)] {
        let syn = packet::tcp_frame(sock(client, 42000), sock(VIP4, 80), TCP_SYN, b"");
        assert_eq!(bed.run(&syn).0, XDP_TX);
        let reply = packet::tcp_frame(sock(REAL4, 8080), sock(client, 42000), TCP_ACK, b"");
        assert_eq!(bed.run(&reply), (XDP_DROP, reply.clone()), "{client}");
        assert_eq!(bed.reason(reason), 1, "{client}");
    }
}

#[test]
fn full_nat_rewrites_both_ends_and_puts_the_client_back_on_replies() {
    let bed = Bed::new(&services("fnat", ""));
    for vip in [VIP4, VIP6] {
        let (client, real, local) = family(vip);
        let syn = packet::tcp_frame(sock(client, 40000), sock(vip, 80), TCP_SYN, b"");
        let (verdict, out) = bed.run(&syn);
        assert_eq!(verdict, XDP_TX, "{vip}");
        let port = source_port(&out);
        assert!(port >= 1024, "{vip}: a local port from the range, not {port}");
        let expected = packet::tcp_frame(sock(local, port), sock(real, 8080), TCP_SYN, b"");
        assert_eq!(out, towards_real(real, expected), "{vip}: LIP:lport -> RIP:rport");

        let data = packet::tcp_frame(sock(client, 40000), sock(vip, 80), TCP_ACK, b"GET /");
        let expected = packet::tcp_frame(sock(local, port), sock(real, 8080), TCP_ACK, b"GET /");
        assert_eq!(bed.run(&data), (XDP_TX, towards_real(real, expected)), "{vip}: same local port");

        let reply = packet::tcp_frame(sock(real, 8080), sock(local, port), TCP_ACK, b"200 OK");
        let expected = packet::tcp_frame(sock(vip, 80), sock(client, 40000), TCP_ACK, b"200 OK");
        assert_eq!(bed.run(&reply), (XDP_REDIRECT, towards_client(expected)), "{vip}: VIP:vport -> CIP:cport");

        let query = packet::udp_frame(sock(client, 40001), sock(vip, 53), b"query");
        let (verdict, out) = bed.run(&query);
        assert_eq!(verdict, XDP_TX);
        let port = source_port(&out);
        let expected = packet::udp_frame(sock(local, port), sock(real, 5353), b"query");
        assert_eq!(out, towards_real(real, expected), "{vip}: UDP");
        let answer = packet::udp_frame(sock(real, 5353), sock(local, port), b"answer");
        let expected = packet::udp_frame(sock(vip, 53), sock(client, 40001), b"answer");
        assert_eq!(bed.run(&answer), (XDP_REDIRECT, towards_client(expected)), "{vip}: UDP reply");
    }
}

#[test]
fn full_nat_gives_each_connection_its_own_local_port_and_refuses_when_none_is_left() {
    let bed = Bed::new(&services("fnat", " local_port_range: [40000, 40003],"));
    let mut ports = Vec::new();
    for i in 0..4 {
        let syn = packet::tcp_frame(sock("198.18.1.1", 50000 + i), sock(VIP4, 80), TCP_SYN, b"");
        let (verdict, out) = bed.run(&syn);
        assert_eq!(verdict, XDP_TX, "connection {i}");
        ports.push(source_port(&out));
    }
    ports.sort();
    assert_eq!(ports, [40000, 40001, 40002, 40003], "every port of the pool, none twice");
    let syn = packet::tcp_frame(sock("198.18.1.1", 50004), sock(VIP4, 80), TCP_SYN, b"");
    assert_eq!(bed.run(&syn), (XDP_DROP, syn.clone()), "the pool is exhausted: refused, not mis-forwarded");
    assert_eq!(bed.reason(Reason::LocalPortsExhausted), 1);
    let ack = packet::tcp_frame(sock("198.18.1.1", 50004), sock(VIP4, 80), TCP_ACK, b"");
    assert_eq!(bed.run(&ack).0, XDP_DROP, "and it left no connection behind");
    // Another real server's pool is its own: (local address, real server, port).
    let other = services("fnat", " local_port_range: [40000, 40003],").replace(REAL4, "198.18.21.12");
    let mut bed2 = bed;
    bed::reconfigure(&mut bed2.director, &other, bed::on_ingress).unwrap();
    let syn = packet::tcp_frame(sock("198.18.1.1", 50005), sock(VIP4, 80), TCP_SYN, b"");
    assert_eq!(bed2.run(&syn).0, XDP_TX);
}

#[test]
fn an_established_nat_connection_keeps_its_port_across_a_reload() {
    let mut bed = Bed::new(&services("nat", ""));
    let syn = packet::tcp_frame(sock("198.18.1.1", 43000), sock(VIP4, 80), TCP_SYN, b"");
    assert_eq!(bed.run(&syn).0, XDP_TX);
    bed::reconfigure(&mut bed.director, &services("nat", "").replace("port: 8080", "port: 8081"), bed::on_ingress)
        .unwrap();
    let ack = packet::tcp_frame(sock("198.18.1.1", 43000), sock(VIP4, 80), TCP_ACK, b"");
    let expected = packet::tcp_frame(sock("198.18.1.1", 43000), sock(REAL4, 8080), TCP_ACK, b"");
    assert_eq!(bed.run(&ack), (XDP_TX, towards_real(REAL4, expected)), "the connection keeps its rewrite");
    let syn = packet::tcp_frame(sock("198.18.1.1", 43001), sock(VIP4, 80), TCP_SYN, b"");
    let expected = packet::tcp_frame(sock("198.18.1.1", 43001), sock(REAL4, 8081), TCP_SYN, b"");
    assert_eq!(bed.run(&syn), (XDP_TX, towards_real(REAL4, expected)), "a new one takes the new port");
}
