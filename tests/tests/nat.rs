//! NAT and Full-NAT through `BPF_PROG_TEST_RUN`: the exact frames out, both ways. Each
//! expected frame is built from scratch with its own checksums, so comparing bytes
//! checks the program's incremental checksum updates too. Replies are run inside a
//! namespace whose routes lead back to the client ([`bed::Routes`]).

use std::net::{IpAddr, SocketAddr};

use lb_agent::director::View;
use lb_common::stats::Reason;
use lb_tests::{
    bed::{self, ROUTER_MAC, RoutedBed as Bed, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, real_mac},
    packet::{self, CLIENT_MAC, DIRECTOR_MAC, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
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
    let web4 = bed.director.status(View::Serving).unwrap().into_iter().find(|s| s.name == "web4").unwrap();
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

/// The TCP services of [`services`] with TOA.
fn with_toa(yaml: &str) -> String {
    let line = |line: &str| {
        if line.contains("protocol: tcp") { line.replacen(" reals:", " toa: true, reals:", 1) } else { line.to_owned() }
    };
    yaml.lines().map(|l| line(l) + "\n").collect()
}

/// A SYN's and a SYN-ACK's options as Linux sends them: MSS `mss`, SACK permitted,
/// timestamps, NOP, window scale.
fn syn_options(mss: u16) -> Vec<u8> {
    let [high, low] = mss.to_be_bytes();
    vec![2, 4, high, low, 4, 2, 8, 10, 0, 0, 0, 7, 0, 0, 0, 0, 1, 3, 3, 7]
}

/// `len` bytes of options: NOPs, then a timestamp.
fn options_of(len: usize) -> Vec<u8> {
    let mut options = vec![1; len - 10];
    options.extend_from_slice(&[8, 10, 0, 0, 0, 8, 0, 0, 0, 7]);
    options
}

/// The TOA option as DPVS and LVS's Full-NAT send it: kind 254, length 8 or 20, the
/// client's port and address.
fn toa(client: SocketAddr) -> Vec<u8> {
    let address = match client.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    [vec![254, 2 + 2 + address.len() as u8], client.port().to_be_bytes().to_vec(), address].concat()
}

/// A client's TCP segment, and the options its real server must receive.
struct Segment<'a> {
    flags: u8,
    sent: &'a [u8],
    payload: &'a [u8],
    received: Vec<u8>,
    what: &'a str,
}

impl<'a> Segment<'a> {
    /// An ACK with `sent` options, received with `first` in front of them.
    fn ack(sent: &'a [u8], payload: &'a [u8], first: &[u8], what: &'a str) -> Self {
        Self { flags: TCP_ACK, sent, payload, received: [first, sent].concat(), what }
    }
}

/// Runs `segment` from the client's side of a connection (`outside`) and checks what
/// leaves for the real server's side (`inside`), checksums summed again included.
fn check_segment(bed: &Bed, outside: (SocketAddr, SocketAddr), inside: (SocketAddr, SocketAddr), segment: Segment) {
    let Segment { flags, sent, payload, received, what } = segment;
    let frame = packet::tcp_frame_with_options(outside.0, outside.1, flags, sent, payload);
    let (verdict, out) = bed.run(&frame);
    assert_eq!(verdict, XDP_TX, "{what}");
    let expected = packet::tcp_frame_with_options(inside.0, inside.1, flags, &received, payload);
    assert_eq!(out, towards_real(&inside.1.ip().to_string(), expected), "{what}");
    assert!(packet::checksums_hold(&out), "{what}: checksums summed again");
}

/// Opens a Full-NAT connection from `client` to `vip` with a SYN, which never carries
/// TOA (the real server reads it when the handshake completes, as from DPVS), and
/// answers it with a SYN-ACK of MSS `mss`, which must reach the client with `lowered`.
/// Returns the connection's ends on the real server's side.
fn handshake(bed: &Bed, client: SocketAddr, vip: &str, mss: u16, lowered: u16) -> (SocketAddr, SocketAddr) {
    let (_, real, local) = family(vip);
    let syn = packet::tcp_frame_with_options(client, sock(vip, 80), TCP_SYN, &syn_options(1460), b"");
    let (verdict, out) = bed.run(&syn);
    assert_eq!(verdict, XDP_TX, "{vip}: SYN");
    let inside = (sock(local, source_port(&out)), sock(real, 8080));
    let expected = packet::tcp_frame_with_options(inside.0, inside.1, TCP_SYN, &syn_options(1460), b"");
    assert_eq!(out, towards_real(real, expected), "{vip}: the SYN goes on without TOA");

    let syn_ack = packet::tcp_frame_with_options(inside.1, inside.0, TCP_SYN | TCP_ACK, &syn_options(mss), b"");
    let expected = packet::tcp_frame_with_options(sock(vip, 80), client, TCP_SYN | TCP_ACK, &syn_options(lowered), b"");
    let (verdict, out) = bed.run(&syn_ack);
    assert_eq!((verdict, out), (XDP_REDIRECT, towards_client(expected)), "{vip}: SYN-ACK, MSS {mss} -> {lowered}");
    inside
}

/// The MSS a real server on a 1500-byte link announces for `vip`'s family, and what its
/// client gets: less the option's 8 or 20 bytes, so a full-sized segment has room for it.
fn mss_of(vip: &str) -> (u16, u16) {
    if vip == VIP4 { (1460, 1452) } else { (1440, 1420) }
}

/// A connection with TOA from the client of `vip`'s family and `port`, through its
/// handshake: the client, and the connection's ends on the real server's side.
fn connect_with_toa(bed: &Bed, vip: &str, port: u16) -> (SocketAddr, (SocketAddr, SocketAddr)) {
    let client = sock(family(vip).0, port);
    let (mss, lowered) = mss_of(vip);
    (client, handshake(bed, client, vip, mss, lowered))
}

#[test]
fn full_nat_with_toa_gives_real_servers_the_client_in_its_first_segments() {
    let bed = Bed::new(&with_toa(&services("fnat", "")));
    for vip in [VIP4, VIP6] {
        let (client, inside) = connect_with_toa(&bed, vip, 40100);
        let (option, ack_options, syn) = (toa(client), options_of(12), syn_options(1460));
        let segments = [
            Segment { flags: TCP_SYN, ..Segment::ack(&syn, b"", &[], "a SYN sent again") },
            Segment { flags: TCP_RST | TCP_ACK, ..Segment::ack(&ack_options, b"", &[], "a RST") },
            Segment::ack(&ack_options, b"", &option, "the ACK that completes the handshake"),
            Segment::ack(&ack_options, b"", &[], "another ACK without data"),
            Segment::ack(&ack_options, b"GET / HTTP/1.1\r\n", &option, "the first data segment"),
            Segment::ack(&ack_options, b"more of the request", &[], "a later data segment"),
            Segment::ack(&ack_options, b"", &[], "a later ACK"),
            Segment { flags: TCP_ACK | TCP_FIN, ..Segment::ack(&ack_options, b"", &[], "the FIN") },
        ];
        for segment in segments {
            check_segment(&bed, (client, sock(vip, 80)), inside, segment);
        }
        // Replies are not touched, beyond the SYN-ACK's MSS.
        let reply = packet::tcp_frame_with_options(inside.1, inside.0, TCP_ACK, &ack_options, b"200 OK");
        let expected = packet::tcp_frame_with_options(sock(vip, 80), client, TCP_ACK, &ack_options, b"200 OK");
        assert_eq!(bed.run(&reply), (XDP_REDIRECT, towards_client(expected)), "{vip}: a reply");
    }
    assert_eq!(bed.reason(Reason::ToaNoRoom), 0);
}

#[test]
fn without_toa_full_nat_leaves_the_options_and_the_mss_alone() {
    let bed = Bed::new(&services("fnat", ""));
    let client = sock("198.18.1.1", 40200);
    let inside = handshake(&bed, client, VIP4, 1460, 1460);
    let ack_options = options_of(12);
    for payload in [&b""[..], b"GET /"] {
        check_segment(&bed, (client, sock(VIP4, 80)), inside, Segment::ack(&ack_options, payload, &[], "no TOA"));
    }
}

#[test]
fn a_segment_without_room_for_toa_goes_on_without_it_and_is_counted() {
    let bed = Bed::new(&with_toa(&services("fnat", "")));
    let mut no_room = 0;
    // The most option bytes a header may have for the option to fit beside them (60
    // bytes in all), and the IP header's length.
    for (vip, fitting, ip_header) in [(VIP4, 32, 20), (VIP6, 20, 40)] {
        let (client, inside) = connect_with_toa(&bed, vip, 40300);
        let option = toa(client);
        let ack_options = options_of(12);
        // The largest payload whose packet, grown by the option, still fits the MTU.
        let fits = vec![b'x'; usize::from(bed::LINK_MTU) - ip_header - 20 - ack_options.len() - option.len()];
        let too_big = vec![b'x'; fits.len() + 1];
        let (full, longest, over) = (options_of(40), options_of(fitting), options_of(fitting + 4));
        let segments = [
            (Segment::ack(&full, b"", &[], "a full TCP header (60 bytes)"), true),
            (Segment::ack(&over, b"", &[], "a header one word too long for the option"), true),
            (Segment::ack(&longest, b"", &option, "a header the option just fits"), false),
            (Segment::ack(&ack_options, &too_big, &[], "a data segment the option would take over the MTU"), true),
            (Segment::ack(&ack_options, &fits, &option, "a data segment the option just fits the MTU"), false),
            (Segment::ack(&ack_options, b"more", &[], "the next data segment"), false),
        ];
        for (segment, counted) in segments {
            let what = format!("{vip}: {}", segment.what);
            check_segment(&bed, (client, sock(vip, 80)), inside, segment);
            no_room += u64::from(counted);
            assert_eq!(bed.reason(Reason::ToaNoRoom), no_room, "{what}");
        }
    }
}

#[test]
fn a_toa_option_the_client_sent_itself_is_blanked() {
    let bed = Bed::new(&with_toa(&services("fnat", "")));
    let forged = [254, 8, 0, 80, 203, 0, 113, 66];
    let forged6 = [&[254, 20, 0, 80][..], &"2001:db8::66".parse::<std::net::Ipv6Addr>().unwrap().octets()].concat();
    let nops = [1; 8];
    for vip in [VIP4, VIP6] {
        // Ours goes first; theirs becomes NOPs: after a timestamp, at an odd offset
        // after a NOP, of the IPv6 length, and in a full header that has no room for ours.
        let timestamp = options_of(12);
        let sack = [5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
        let cases = [
            ([&timestamp[..], &forged].concat(), [&timestamp[..], &nops].concat(), true),
            ([&[1], &forged[..], &[1, 1, 1]].concat(), vec![1; 12], true),
            (forged6.clone(), vec![1; 20], true),
            (
                [&timestamp[..], &forged, &sack, &[1, 1]].concat(),
                [&timestamp[..], &nops, &sack, &[1, 1]].concat(),
                false,
            ),
        ];
        // Each the ACK that completes a handshake of its own.
        for (port, (sent, blanked, room)) in (40400..).zip(cases) {
            let (client, inside) = connect_with_toa(&bed, vip, port);
            let received = if room { [&toa(client)[..], &blanked].concat() } else { blanked };
            let segment = Segment { flags: TCP_ACK, sent: &sent, payload: b"", received, what: vip };
            check_segment(&bed, (client, sock(vip, 80)), inside, segment);
        }
    }
    assert_eq!(bed.reason(Reason::ToaNoRoom), 2, "the full headers");
}

#[test]
fn only_an_mss_option_that_comes_first_in_the_syn_ack_is_lowered() {
    let bed = Bed::new(&with_toa(&services("fnat", "")));
    let client = sock("198.18.1.1", 40500);
    let syn = packet::tcp_frame_with_options(client, sock(VIP4, 80), TCP_SYN, &syn_options(1460), b"");
    let (verdict, out) = bed.run(&syn);
    assert_eq!(verdict, XDP_TX);
    let inside = (sock(LOCAL4, source_port(&out)), sock(REAL4, 8080));
    // SACK permitted first: the data path looks no further (Linux, the BSDs and Windows
    // send the MSS first), and the SYN-ACK goes on as it came.
    let options = [4, 2, 2, 4, 0x05, 0xb4, 1, 1];
    let syn_ack = packet::tcp_frame_with_options(inside.1, inside.0, TCP_SYN | TCP_ACK, &options, b"");
    let expected = packet::tcp_frame_with_options(sock(VIP4, 80), client, TCP_SYN | TCP_ACK, &options, b"");
    assert_eq!(bed.run(&syn_ack), (XDP_REDIRECT, towards_client(expected)));
}

#[test]
fn a_fragment_goes_on_without_toa_and_the_next_segment_has_it() {
    let bed = Bed::new(&with_toa(&services("fnat", "")));
    let payload: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
    for vip in [VIP4, VIP6] {
        let (client, inside) = connect_with_toa(&bed, vip, 40600);
        let ack_options = options_of(12);
        // The option would make the first fragment longer than the offsets of the
        // others say: the datagram's fragments go on as they came, rewritten.
        let cut = |src: SocketAddr, dst: SocketAddr| {
            let segment = packet::tcp_with_options(src, dst, TCP_ACK, &ack_options, &payload);
            let datagram = match src.ip() {
                IpAddr::V4(_) => packet::ipv4(src.ip(), dst.ip(), packet::PROTO_TCP, &[], &segment),
                IpAddr::V6(_) => packet::ipv6(src.ip(), dst.ip(), packet::PROTO_TCP, &segment),
            };
            let (ether_type, fragments) = match src.ip() {
                IpAddr::V4(_) => (packet::ETHERTYPE_IPV4, packet::ipv4_fragments(&datagram, 1448)),
                IpAddr::V6(_) => (packet::ETHERTYPE_IPV6, packet::ipv6_fragments(&datagram, 1448, 7)),
            };
            fragments.iter().map(|fragment| packet::ethernet(ether_type, fragment)).collect::<Vec<_>>()
        };
        let sent = cut(client, sock(vip, 80));
        let expected = cut(inside.0, inside.1);
        let real = inside.1.ip().to_string();
        assert_eq!(bed.run(&sent[0]), (XDP_TX, towards_real(&real, expected[0].clone())), "{vip}: first fragment");
        let segment = Segment::ack(&ack_options, b"GET /", &toa(client), "the next data segment");
        check_segment(&bed, (client, sock(vip, 80)), inside, segment);
    }
    assert_eq!(bed.reason(Reason::ToaNoRoom), 0);
}
