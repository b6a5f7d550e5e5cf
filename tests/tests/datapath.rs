//! The data path through `BPF_PROG_TEST_RUN`: a frame in, the verdict and the exact
//! frame out. The maps are filled by the agent's own director from a YAML
//! configuration, with the real servers' links given instead of resolved.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use lb_agent::director::View;
use lb_agent::{
    dataplane::{Dataplane, EbpfLogLevel},
    director::Director,
};
use lb_common::{IPPROTO_TCP, SCHED_RING_SLOTS, interface::InterfaceKey, service::ServiceKey, stats::Reason};
use lb_tests::{
    bed::{self, INGRESS, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, real_mac, service},
    packet::{self, DIRECTOR_MAC, L3, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";
const REALS4: [&str; 3] = ["198.18.1.11", "198.18.1.12", "198.18.1.13"];
const REALS6: [&str; 3] = ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13"];

struct Bed {
    director: Director,
}

impl Bed {
    /// A data path holding `services`, every real server reachable on the ingress
    /// interface.
    fn new(services: &str) -> Self {
        Self::with_links(services, bed::on_ingress)
    }

    fn with_links(services: &str, reach: bed::Reach) -> Self {
        Self { director: bed::director(services, 4096, reach).unwrap() }
    }

    fn reconfigure(&mut self, services: &str) {
        bed::reconfigure(&mut self.director, services, bed::on_ingress).unwrap();
    }

    /// Runs `frame` once; returns the verdict and the frame as the program left it.
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let run = bed::run(self.director.dataplane().program(), frame).unwrap();
        (run.verdict, run.frame)
    }

    /// The real server a forwarded frame went to, by its destination MAC.
    fn real_of(&self, frame: &[u8]) -> String {
        let (verdict, out) = self.run(frame);
        assert_eq!(verdict, XDP_TX, "expected the frame to be forwarded");
        bed::real_at(&out, REALS4.iter().chain(&REALS6)).to_string()
    }

    fn reason(&self, reason: Reason) -> u64 {
        bed::reason_count(&self.director, reason)
    }

    fn status(&self, service: &str) -> lb_api::ServiceStatus {
        self.director.status(View::Serving).unwrap().into_iter().find(|s| s.name == service).unwrap()
    }
}

fn web(weights: [u32; 3]) -> String {
    let reals4: Vec<(&str, u32)> = REALS4.iter().copied().zip(weights).collect();
    let reals6: Vec<(&str, u32)> = REALS6.iter().copied().zip(weights).collect();
    service("web4", VIP4, 80, "tcp", "wrr", &reals4)
        + &service("web6", VIP6, 80, "tcp", "wrr", &reals6)
        + &service("dns4", VIP4, 53, "udp", "wrr", &reals4)
        + &service("dns6", VIP6, 53, "udp", "wrr", &reals6)
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn client(vip: &str, port: u16) -> SocketAddr {
    if vip.contains(':') { sock("2001:db8:1::1", port) } else { sock("198.18.1.1", port) }
}

/// A frame is forwarded by direct routing: only the MACs changed.
fn assert_dr(frame: &[u8], verdict: u32, out: &[u8], real: &str) {
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), frame.len());
    assert_eq!(&out[..6], &real_mac(real), "destination MAC := the real server's");
    assert_eq!(&out[6..12], &DIRECTOR_MAC, "source MAC := the director interface's");
    assert_eq!(&out[12..], &frame[12..], "everything after the MACs is untouched");
}

#[test]
fn first_packets_of_tcp_and_udp_flows_are_forwarded_with_only_the_macs_changed() {
    let bed = Bed::new(&web([1, 1, 1]));
    for vip in [VIP4, VIP6] {
        for frame in [
            packet::tcp_frame(client(vip, 40000), sock(vip, 80), TCP_SYN, b""),
            packet::udp_frame(client(vip, 40001), sock(vip, 53), b"query"),
        ] {
            let (verdict, out) = bed.run(&frame);
            let reals = if vip == VIP4 { REALS4 } else { REALS6 };
            // Each service starts at its sequence's first real server.
            assert_dr(&frame, verdict, &out, reals[0]);
        }
    }
    assert_eq!(bed.status("web4").stats.conns, 1);
    assert_eq!(bed.status("dns6").stats.conns, 1);
}

#[test]
fn later_packets_of_a_flow_go_to_the_same_real_server() {
    let bed = Bed::new(&web([1, 1, 1]));
    for vip in [VIP4, VIP6] {
        let mut first = HashMap::new();
        for port in 41000..41030 {
            let syn = packet::tcp_frame(client(vip, port), sock(vip, 80), TCP_SYN, b"");
            first.insert(port, bed.real_of(&syn));
        }
        for port in 41000..41030 {
            let ack = packet::tcp_frame(client(vip, port), sock(vip, 80), TCP_ACK, b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(bed.real_of(&ack), first[&port], "flow from port {port}");
        }
        let spread: std::collections::HashSet<_> = first.values().collect();
        assert_eq!(spread.len(), 3, "wrr over three equal weights uses all three");
    }
    let web4 = bed.status("web4");
    assert_eq!(web4.stats.conns, 30, "an established flow is not a new connection");
    assert_eq!(web4.stats.in_packets, 60);
}

#[test]
fn wrr_over_many_flows_follows_the_weights_exactly() {
    let bed = Bed::new(&web([1, 2, 3]));
    for vip in [VIP4, VIP6] {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut order = Vec::new();
        for port in 0..600 {
            let syn = packet::tcp_frame(client(vip, 20000 + port), sock(vip, 80), TCP_SYN, b"");
            let real = bed.real_of(&syn);
            *counts.entry(real.clone()).or_default() += 1;
            order.push(real);
        }
        let reals = if vip == VIP4 { REALS4 } else { REALS6 };
        let counts = reals.map(|real| counts.get(real).copied().unwrap_or(0));
        assert_eq!(counts, [100, 200, 300], "{vip}");
        // IPVS's gcd-stepped cycle for 1:2:3 is rs3, rs2, rs3, rs1, rs2, rs3.
        let cycle = [reals[2], reals[1], reals[2], reals[0], reals[1], reals[2]];
        assert_eq!(order[..6], cycle);
        assert_eq!(order[6..12], cycle);
    }
    let web4 = bed.status("web4");
    let conns: Vec<u64> = web4.reals.iter().map(|r| r.stats.conns).collect();
    assert_eq!(conns, vec![100, 200, 300], "per-real new-connection counters");
}

#[test]
fn weight_zero_takes_no_new_flows_and_no_real_server_drops() {
    let bed = Bed::new(&web([0, 5, 0]));
    for port in 0..20 {
        let syn = packet::tcp_frame(client(VIP4, 30000 + port), sock(VIP4, 80), TCP_SYN, b"");
        assert_eq!(bed.real_of(&syn), REALS4[1]);
    }
    let bed = Bed::new(&web([0, 0, 0]));
    let syn = packet::tcp_frame(client(VIP4, 30000), sock(VIP4, 80), TCP_SYN, b"");
    let (verdict, out) = bed.run(&syn);
    assert_eq!((verdict, out), (XDP_DROP, syn));
    assert_eq!(bed.reason(Reason::NoRealServer), 1);
}

#[test]
fn an_established_flow_keeps_its_real_server_across_a_weight_change() {
    let mut bed = Bed::new(&web([1, 1, 1]));
    let mut first = HashMap::new();
    for port in 0..30 {
        let syn = packet::tcp_frame(client(VIP4, 50000 + port), sock(VIP4, 80), TCP_SYN, b"");
        first.insert(port, bed.real_of(&syn));
    }
    bed.reconfigure(&web([0, 0, 1]));
    for port in 0..30 {
        let ack = packet::tcp_frame(client(VIP4, 50000 + port), sock(VIP4, 80), TCP_ACK, b"");
        assert_eq!(bed.real_of(&ack), first[&port]);
    }
    let syn = packet::tcp_frame(client(VIP4, 60000), sock(VIP4, 80), TCP_SYN, b"");
    assert_eq!(bed.real_of(&syn), REALS4[2], "new flows follow the new weights");
}

#[test]
fn a_removed_real_server_keeps_its_established_flows() {
    let mut bed = Bed::new(&web([1, 1, 1]));
    let syns: Vec<Vec<u8>> =
        (0..3).map(|i| packet::tcp_frame(client(VIP4, 51000 + i), sock(VIP4, 80), TCP_SYN, b"")).collect();
    let reals: Vec<String> = syns.iter().map(|syn| bed.real_of(syn)).collect();
    let without_first = service("web4", VIP4, 80, "tcp", "wrr", &[(REALS4[1], 1), (REALS4[2], 1)]);
    bed.reconfigure(&without_first);
    for (syn, real) in syns.iter().zip(&reals) {
        assert_eq!(&bed.real_of(syn), real, "as IPVS does, a removed real server finishes its connections");
    }
    for port in 0..10 {
        let syn = packet::tcp_frame(client(VIP4, 52000 + port), sock(VIP4, 80), TCP_SYN, b"");
        assert_ne!(bed.real_of(&syn), REALS4[0], "but takes no new ones");
    }
}

#[test]
fn a_port_zero_service_takes_every_port_the_exact_one_does_not() {
    let bed = Bed::new(
        &(service("all", VIP4, 0, "tcp", "rr", &[(REALS4[0], 1)])
            + &service("web", VIP4, 80, "tcp", "rr", &[(REALS4[1], 1)])),
    );
    for port in [22, 443, 8080] {
        let syn = packet::tcp_frame(client(VIP4, 33000), sock(VIP4, port), TCP_SYN, b"");
        assert_eq!(bed.real_of(&syn), REALS4[0], "port {port}");
    }
    let syn = packet::tcp_frame(client(VIP4, 33000), sock(VIP4, 80), TCP_SYN, b"");
    assert_eq!(bed.real_of(&syn), REALS4[1]);
    let udp = packet::udp_frame(client(VIP4, 33000), sock(VIP4, 80), b"");
    assert_eq!(bed.run(&udp), (XDP_PASS, udp.clone()), "the port-0 service is TCP only");
}

/// A port of `VIP4` whose TCP service shares `SERVICE_SLOTS`'s slot with port 80's.
const SLOT_SHARING_PORT: u16 = 2277;

#[test]
fn services_that_share_a_slot_are_both_found_and_one_removed_leaves_the_other() {
    let key = |port: u16| {
        let (vip, family) = lb_agent::director::address_bytes(VIP4.parse().unwrap());
        ServiceKey { vip, port: port.to_be_bytes(), protocol: IPPROTO_TCP, family }
    };
    assert_eq!(key(80).slot(), key(SLOT_SHARING_PORT).slot(), "pick another port that shares port 80's slot");
    let web = || service("web", VIP4, 80, "tcp", "rr", &[(REALS4[0], 1)]);
    let other = || service("other", VIP4, SLOT_SHARING_PORT, "tcp", "rr", &[(REALS4[1], 1)]);
    let syn = |client_port, port| packet::tcp_frame(client(VIP4, client_port), sock(VIP4, port), TCP_SYN, b"");
    let mut bed = Bed::new(&(web() + &other()));
    let holder = |bed: &Bed| bed.director.dataplane().service_slot(key(80).slot()).unwrap().key;
    assert!([key(80), key(SLOT_SHARING_PORT)].contains(&holder(&bed)), "one of them holds the slot");
    // Whichever took the slot, the other is found in `SERVICES`.
    assert_eq!(bed.real_of(&syn(35000, 80)), REALS4[0]);
    assert_eq!(bed.real_of(&syn(35001, SLOT_SHARING_PORT)), REALS4[1]);
    // Either one removed, the other is found still and holds the slot, and the removed
    // one is not found.
    for (kept, gone, real) in [(other(), 80, REALS4[1]), (web(), SLOT_SHARING_PORT, REALS4[0])] {
        bed.reconfigure(&(web() + &other()));
        bed.reconfigure(&kept);
        let kept_port = if gone == 80 { SLOT_SHARING_PORT } else { 80 };
        assert_eq!(holder(&bed), key(kept_port), "port {kept_port} took the slot");
        assert_eq!(bed.real_of(&syn(35002, kept_port)), real, "port {kept_port} kept");
        let to_gone = syn(35003, gone);
        assert_eq!(bed.run(&to_gone), (XDP_PASS, to_gone.clone()), "port {gone} removed");
    }
    bed.reconfigure(&service("dns", VIP4, 53, "udp", "rr", &[(REALS4[0], 1)]));
    assert_eq!(holder(&bed), ServiceKey::default(), "a slot no service has is free");
}

/// A VLAN whose device shares `INTERFACE_SLOTS`'s slot with the untagged ingress
/// interface's.
const SLOT_SHARING_VLAN: u16 = 284;

#[test]
fn devices_that_share_a_slot_are_both_the_director_s_and_one_removed_is_not() {
    let untagged = InterfaceKey { ifindex: INGRESS, vlan: 0, _pad: [0; 2] };
    let tagged = InterfaceKey { vlan: SLOT_SHARING_VLAN, ..untagged };
    assert_eq!(untagged.slot(), tagged.slot(), "pick another VLAN that shares the untagged device's slot");
    let mut bed = Bed::with_links(&web([1, 1, 1]), |_| Some((INGRESS, SLOT_SHARING_VLAN)));
    let syn = |port| packet::tcp_frame(client(VIP4, port), sock(VIP4, 80), TCP_SYN, b"");
    // Whichever device took the slot, the other is found in `INTERFACES`.
    let on_vlan = packet::vlan_tagged(&syn(34500), SLOT_SHARING_VLAN);
    assert_eq!(bed.run(&on_vlan).0, XDP_TX);
    let off_vlan = syn(34501);
    assert_eq!(bed.run(&off_vlan), (XDP_DROP, off_vlan.clone()), "the director's device, but no real server there");
    assert_eq!((bed.reason(Reason::VlanMismatch), bed.reason(Reason::OtherHost)), (1, 0));
    // The real servers move off the VLAN: its device goes, from its slot too.
    bed.reconfigure(&web([1, 1, 1]));
    let on_vlan = packet::vlan_tagged(&syn(34502), SLOT_SHARING_VLAN);
    assert_eq!(bed.run(&on_vlan), (XDP_PASS, on_vlan.clone()));
    assert_eq!(bed.reason(Reason::OtherHost), 1);
    assert_eq!(bed.run(&syn(34503)).0, XDP_TX);
}

#[test]
fn ipv4_options_and_vlan_tags_are_forwarded_within_the_real_server_s_vlan() {
    let bed = Bed::with_links(&web([1, 1, 1]), |_| Some((INGRESS, 42)));
    let syn = |port| packet::tcp_frame(client(VIP4, port), sock(VIP4, 80), TCP_SYN, b"");
    let tagged = packet::vlan_tagged(&syn(34000), 42);
    let (verdict, out) = bed.run(&tagged);
    assert_dr(&tagged, verdict, &out, REALS4[0]);
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 42], "the tag stays");
    // Untagged, the director has a device but the real servers are not there.
    let untagged = syn(34001);
    assert_eq!(bed.run(&untagged), (XDP_DROP, untagged.clone()));
    assert_eq!(bed.reason(Reason::VlanMismatch), 1);
    // On VLAN 43 the director has no device at all: not its frame.
    let other_vlan = packet::vlan_tagged(&syn(34002), 43);
    assert_eq!(bed.run(&other_vlan), (XDP_PASS, other_vlan.clone()));
    assert_eq!(bed.reason(Reason::OtherHost), 1);
    assert_eq!(bed.status("web4").stats.conns, 1, "neither opened a connection");
    let ack = packet::vlan_tagged(&packet::tcp_frame(client(VIP4, 34001), sock(VIP4, 80), TCP_ACK, b""), 42);
    assert_eq!(bed.run(&ack).0, XDP_DROP, "the refused SYN left no connection behind");
    assert_eq!(bed.reason(Reason::NoConnection), 1);

    let bed = Bed::new(&web([1, 1, 1]));
    let priority_tagged = packet::vlan_tagged(&syn(34003), 0);
    assert_eq!(bed.run(&priority_tagged).0, XDP_TX, "VLAN 0 is the untagged link");

    for words in 1..=10 {
        let segment = packet::tcp(client(VIP4, 34100 + words), sock(VIP4, 80), TCP_SYN, b"");
        let options = vec![1u8; words as usize * 4]; // NOPs
        let ip = packet::ipv4(client(VIP4, 0).ip(), VIP4.parse().unwrap(), PROTO_TCP, &options, &segment);
        let frame = packet::ethernet(packet::ETHERTYPE_IPV4, &ip);
        let (verdict, out) = bed.run(&frame);
        assert_eq!(verdict, XDP_TX, "IHL {}", 5 + words);
        assert_eq!(&out[12..], &frame[12..]);
    }
}

#[test]
fn what_is_not_for_a_virtual_service_passes_untouched() {
    let bed = Bed::new(&web([1, 1, 1]));
    let director = "198.18.1.2";
    let cases = [
        (packet::tcp_frame(client(VIP4, 35000), sock(director, 22), TCP_SYN, b""), Reason::NotAService),
        (packet::tcp_frame(client(VIP4, 35000), sock(VIP4, 8080), TCP_SYN, b""), Reason::NotAService),
        (packet::tcp_frame(client(VIP6, 35000), sock("2001:db8:1::2", 22), TCP_SYN, b""), Reason::NotAService),
        (packet::arp_request(client(VIP4, 0).ip(), VIP4.parse().unwrap()), Reason::NotIp),
        (packet::icmp_echo(client(VIP4, 0).ip(), VIP4.parse().unwrap()), Reason::NotTcpUdp),
        (packet::icmp_echo(client(VIP4, 0).ip(), director.parse().unwrap()), Reason::NotTcpUdp),
        (packet::ip_frame(client(VIP6, 0).ip(), VIP6.parse().unwrap(), 58, &[135, 0, 0, 0]), Reason::NotTcpUdp),
    ];
    for (frame, reason) in cases {
        let before = bed.reason(reason);
        assert_eq!(bed.run(&frame), (XDP_PASS, frame.clone()), "{reason:?}");
        assert_eq!(bed.reason(reason), before + 1, "{reason:?} is counted");
    }
    assert_eq!(bed.status("web4").stats.in_packets, 0);
}

#[test]
fn fragments_it_does_not_follow_and_ipv6_extension_headers_pass_counted() {
    let bed = Bed::new(&web([1, 1, 1]));
    // A later TCP fragment whose first was not seen, and the first fragment of ICMP.
    let mut fragment = packet::tcp_frame(client(VIP4, 36000), sock(VIP4, 80), TCP_SYN, b"");
    packet::set_ipv4_fields(&mut fragment, L3, 0, 0x1234, 0x0010);
    let fragment6 = packet::ip_frame(client(VIP6, 0).ip(), VIP6.parse().unwrap(), 44, &[58, 0, 0, 1, 0, 0, 0, 7]);
    let hop_by_hop = packet::ip_frame(client(VIP6, 0).ip(), VIP6.parse().unwrap(), 0, &[6, 0, 1, 4, 0, 0, 0, 0]);
    for frame in [fragment, fragment6, hop_by_hop] {
        assert_eq!(bed.run(&frame), (XDP_PASS, frame.clone()));
    }
    assert_eq!(bed.reason(Reason::Fragment), 2);
    assert_eq!(bed.reason(Reason::Ipv6Extension), 1);
}

#[test]
fn truncated_and_malformed_frames_are_dropped_unchanged_and_counted() {
    let bed = Bed::new(&web([1, 1, 1]));
    let syn4 = packet::tcp_frame(client(VIP4, 37000), sock(VIP4, 80), TCP_SYN, b"");
    let syn6 = packet::tcp_frame(client(VIP6, 37000), sock(VIP6, 80), TCP_SYN, b"");
    let udp4 = packet::udp_frame(client(VIP4, 37000), sock(VIP4, 53), b"");
    // One byte changed; an IPv4 header's checksum follows, so that only the change
    // the case means is wrong with the frame.
    let with = |frame: &[u8], at: usize, byte: u8| {
        let mut frame = frame.to_vec();
        frame[at] = byte;
        if frame[12..14] == [0x08, 0x00] && frame.len() >= L3 + 20 {
            packet::refresh_ipv4_checksum(&mut frame, L3);
        }
        frame
    };
    let mut bad_checksum = syn4.clone();
    bad_checksum[L3 + 11] ^= 0xff;
    // A datagram whose IP length leaves no room for a UDP header, in a frame padded to
    // Ethernet's minimum: the bytes are there, but not in the packet.
    let mut short_udp = udp4[..L3 + 24].to_vec();
    short_udp[L3 + 2..L3 + 4].copy_from_slice(&24u16.to_be_bytes());
    packet::refresh_ipv4_checksum(&mut short_udp, L3);
    short_udp.resize(60, 0);
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        // BPF_PROG_TEST_RUN refuses frames under 14 bytes (no driver passes them on
        // either); an Ethernet header that promises a VLAN tag or IP and stops is the
        // shortest frame that reaches the program.
        ("VLAN tag missing", packet::vlan_tagged(&syn4, 7)[..14].to_vec(), Reason::TruncatedEthernet),
        ("VLAN tag cut", packet::vlan_tagged(&syn4, 7)[..16].to_vec(), Reason::TruncatedEthernet),
        ("IPv4 header missing", syn4[..L3].to_vec(), Reason::MalformedIp),
        ("IPv4 header cut", syn4[..L3 + 12].to_vec(), Reason::MalformedIp),
        ("IHL 4", with(&syn4, L3, 0x44), Reason::MalformedIp),
        ("IHL 0", with(&syn4, L3, 0x40), Reason::MalformedIp),
        ("IHL beyond the packet", with(&syn4, L3, 0x4f), Reason::MalformedIp),
        ("version 6 in an IPv4 frame", with(&syn4, L3, 0x65), Reason::MalformedIp),
        ("total length beyond the frame", with(&syn4, L3 + 2, 0x7f), Reason::MalformedIp),
        ("total length below the header", with(&with(&syn4, L3 + 2, 0), L3 + 3, 12), Reason::MalformedIp),
        ("IPv6 payload length beyond the frame", with(&syn6, L3 + 4, 0x7f), Reason::MalformedIp),
        ("IPv6 header cut", syn6[..L3 + 30].to_vec(), Reason::MalformedIp),
        ("TCP header cut", syn4[..L3 + 20 + 10].to_vec(), Reason::TruncatedL4),
        ("TCP data offset 4", with(&syn4, L3 + 20 + 12, 0x40), Reason::TruncatedL4),
        ("TCP data offset beyond the packet", with(&syn4, L3 + 20 + 12, 0xf0), Reason::TruncatedL4),
        ("IPv6 TCP header cut", syn6[..L3 + 40 + 8].to_vec(), Reason::TruncatedL4),
        ("UDP header cut", udp4[..L3 + 20 + 4].to_vec(), Reason::TruncatedL4),
        ("IPv4 header checksum wrong", bad_checksum, Reason::MalformedIp),
        ("UDP header beyond the IP length, frame padded", short_udp, Reason::TruncatedL4),
    ];
    for (what, frame, reason) in cases {
        // A cut frame's IP total length no longer fits it: such frames are malformed IP
        // unless the IP header itself still claims only what is there.
        let frame = fix_ip_length(frame, reason);
        let before = bed.reason(reason);
        assert_eq!(bed.run(&frame), (XDP_DROP, frame.clone()), "{what}");
        assert_eq!(bed.reason(reason), before + 1, "{what} is counted as {reason:?}");
    }
    assert_eq!(bed.status("web4").stats.in_packets, 0, "nothing was forwarded");
}

/// For the transport cases, makes the IP header claim exactly the bytes the frame
/// has, so the transport check is the one that refuses it.
fn fix_ip_length(mut frame: Vec<u8>, reason: Reason) -> Vec<u8> {
    if reason != Reason::TruncatedL4 || frame.len() < L3 + 20 || frame.len() == 60 {
        return frame;
    }
    let ip_len = (frame.len() - L3) as u16;
    match frame[L3] >> 4 {
        4 => {
            frame[L3 + 2..L3 + 4].copy_from_slice(&ip_len.to_be_bytes());
            packet::refresh_ipv4_checksum(&mut frame, L3);
        }
        _ => frame[L3 + 4..L3 + 6].copy_from_slice(&(ip_len - 40).to_be_bytes()),
    }
    frame
}

#[test]
fn unresolved_real_servers_take_no_new_flows() {
    let bed = Bed::with_links(&web([1, 1, 1]), |address| (address != REALS4[0]).then_some((INGRESS, 0)));
    for port in 0..12 {
        let syn = packet::tcp_frame(client(VIP4, 38000 + port), sock(VIP4, 80), TCP_SYN, b"");
        assert_ne!(bed.real_of(&syn), REALS4[0]);
    }
    let web4 = bed.status("web4");
    assert_eq!(web4.reals.iter().map(|r| r.resolved).collect::<Vec<_>>(), vec![false, true, true]);
}

#[test]
fn a_real_server_behind_another_interface_is_redirected_there() {
    let bed = Bed::with_links(&service("web4", VIP4, 80, "tcp", "rr", &[(REALS4[0], 1)]), |_| Some((INGRESS + 100, 0)));
    let syn = packet::tcp_frame(client(VIP4, 39000), sock(VIP4, 80), TCP_SYN, b"");
    let (verdict, out) = bed.run(&syn);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(&out[..6], &real_mac(REALS4[0]));
}

#[test]
fn bytes_count_the_ip_packets_as_ipvs_does() {
    let bed = Bed::new(&web([1, 1, 1]));
    let syn = packet::tcp_frame(client(VIP4, 39500), sock(VIP4, 80), TCP_SYN, b"");
    let data = packet::tcp_frame(client(VIP4, 39500), sock(VIP4, 80), TCP_ACK, &[7; 100]);
    let mut padded = syn.clone();
    padded.resize(60, 0); // Ethernet's minimum frame: the padding is not the packet's
    for frame in [&syn, &data, &padded] {
        assert_eq!(bed.run(frame).0, XDP_TX);
    }
    let web4 = bed.status("web4");
    assert_eq!((web4.stats.in_packets, web4.stats.in_bytes), (3, 40 + 140 + 40));
    assert_eq!(web4.reals[0].stats.in_bytes, 220);
}

/// Records what the program logs, for the test below.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn the_program_logs_scheduling_decisions_only_when_asked() {
    let services = service("web4", VIP4, 80, "tcp", "rr", &[(REALS4[0], 1)]);
    let syn = packet::tcp_frame(client(VIP4, 44000), sock(VIP4, 80), TCP_SYN, b"");
    let syn6 = packet::tcp_frame(client(VIP6, 44001), sock(VIP6, 80), TCP_SYN, b"");
    for (level, expected) in [(EbpfLogLevel::Off, 0), (EbpfLogLevel::Info, 0), (EbpfLogLevel::Debug, 1)] {
        let capture = Capture::default();
        let mut dataplane = Dataplane::load(4096, level).unwrap();
        let mut logger = dataplane.logger(capture.clone()).unwrap();
        let services = services.clone() + &service("web6", VIP6, 80, "tcp", "rr", &[(REALS6[0], 1)]);
        let director = bed::director_on(dataplane, &services, bed::on_ingress).unwrap();
        for frame in [&syn, &syn, &syn6] {
            assert_eq!(bed::run(director.dataplane().program(), frame).unwrap().verdict, XDP_TX);
        }
        logger.flush();
        let lines = capture.0.lock().unwrap().clone();
        assert_eq!(lines.len(), expected * 2, "{level:?}: one record per new flow: {lines:?}");
        if expected > 0 {
            assert_eq!(lines[0], "DEBUG new flow from 198.18.1.1:44000 (service 0) to real server 0");
            assert_eq!(lines[1], "DEBUG new flow from [2001:db8:1::1]:44001 (service 1) to real server 1");
        }
    }
}

#[test]
fn only_a_syn_opens_a_tcp_connection() {
    let bed = Bed::new(&web([1, 1, 1]));
    let flow = |flags| packet::tcp_frame(client(VIP4, 45000), sock(VIP4, 80), flags, b"");
    for flags in [TCP_ACK, TCP_RST, TCP_SYN | TCP_RST, TCP_FIN | TCP_ACK] {
        let frame = flow(flags);
        assert_eq!(bed.run(&frame), (XDP_DROP, frame.clone()), "flags {flags:#04x}");
    }
    assert_eq!(bed.reason(Reason::NoConnection), 4);
    assert_eq!(bed.status("web4").stats.conns, 0, "nothing was scheduled or remembered");
    assert_eq!(bed.real_of(&flow(TCP_SYN)), REALS4[0]);
    assert_eq!(bed.real_of(&flow(TCP_ACK)), REALS4[0], "then the connection's segments follow");
    let syn_ack = packet::tcp_frame(client(VIP4, 45001), sock(VIP4, 80), TCP_SYN | TCP_ACK, b"");
    assert_eq!(bed.real_of(&syn_ack), REALS4[1], "SYN+ACK opens one too, as in IPVS (active FTP)");
    assert_eq!(bed.status("web4").stats.conns, 2);
}

#[test]
fn mh_sh_and_dh_pick_up_a_connection_another_director_opened() {
    for scheduler in ["mh", "sh", "dh"] {
        let services = web([1, 1, 1]).replace("wrr", scheduler);
        // Two directors with the same configuration: one saw the SYN, the other only
        // what follows (an ECMP path moved).
        let (opened_on, moved_to) = (Bed::new(&services), Bed::new(&services));
        for port in 47000..47020 {
            let flow = |flags, payload: &[u8]| packet::tcp_frame(client(VIP4, port), sock(VIP4, 80), flags, payload);
            let real = opened_on.real_of(&flow(TCP_SYN, b""));
            let data = flow(TCP_ACK, b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(moved_to.real_of(&data), real, "{scheduler} port {port}: the same real server");
            assert_eq!(moved_to.real_of(&flow(TCP_ACK | TCP_FIN, b"")), real, "{scheduler}: and it stays there");
        }
        assert_eq!(moved_to.status("web4").stats.conns, 20, "{scheduler}: each picked up once");
        let reset = packet::tcp_frame(client(VIP4, 48000), sock(VIP4, 80), TCP_RST, b"");
        assert_eq!(moved_to.run(&reset).0, XDP_DROP, "{scheduler}: a RST opens nothing");
    }
}

#[test]
fn a_frame_for_another_host_passes_and_is_not_remembered() {
    let bed = Bed::new(&web([1, 1, 1]));
    let syn = packet::tcp_frame(client(VIP4, 46000), sock(VIP4, 80), TCP_SYN, b"");
    let mut flooded = syn.clone();
    flooded[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    assert_eq!(bed.run(&flooded), (XDP_PASS, flooded.clone()));
    assert_eq!(bed.reason(Reason::OtherHost), 1);
    assert_eq!(bed.status("web4").stats.conns, 0);
    let ack = packet::tcp_frame(client(VIP4, 46000), sock(VIP4, 80), TCP_ACK, b"");
    assert_eq!(bed.run(&ack).0, XDP_DROP, "the flooded SYN left no connection behind");
    assert_eq!(bed.real_of(&syn), REALS4[0], "nor took a scheduling turn");
    assert_eq!(bed.status("web4").stats.conns, 1);
    // A known flow's frame flooded to the director is not forwarded either.
    let mut flooded_ack = ack.clone();
    flooded_ack[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    assert_eq!(bed.run(&flooded_ack), (XDP_PASS, flooded_ack.clone()));
    assert_eq!(bed.reason(Reason::OtherHost), 2);
}

#[test]
fn a_removed_service_s_established_connections_finish() {
    let mut bed = Bed::new(&web([1, 1, 1]));
    let syn = packet::tcp_frame(client(VIP4, 47000), sock(VIP4, 80), TCP_SYN, b"");
    let real = bed.real_of(&syn);
    bed.reconfigure(&service("other", "203.0.113.99", 80, "tcp", "rr", &[(REALS4[2], 1)]));
    let ack = packet::tcp_frame(client(VIP4, 47000), sock(VIP4, 80), TCP_ACK, b"");
    assert_eq!(bed.real_of(&ack), real, "as IPVS does, connections outlive their service");
    let new = packet::tcp_frame(client(VIP4, 47001), sock(VIP4, 80), TCP_SYN, b"");
    assert_eq!(bed.run(&new), (XDP_PASS, new.clone()), "new connections find no service");
}

#[test]
fn a_changed_sequence_starts_from_its_first_slot() {
    let mut bed = Bed::new(&web([1, 1, 1]));
    let syn = |port| packet::tcp_frame(client(VIP4, port), sock(VIP4, 80), TCP_SYN, b"");
    assert_eq!(bed.real_of(&syn(48000)), REALS4[0]);
    bed.reconfigure(&web([1, 2, 3]));
    // 1:2:3 is rs3 rs2 rs3 rs1 rs2 rs3: without a restart the second turn would be rs2.
    assert_eq!(bed.real_of(&syn(48001)), REALS4[2], "the walk starts again at the first slot");
    assert_eq!(bed.real_of(&syn(48002)), REALS4[1]);
}

#[test]
fn a_plan_that_does_not_fit_changes_nothing() {
    let mut bed = Bed::new(&web([1, 2, 3]));
    // Each of these services needs a sequence of 2^16 slots: together more than the ring.
    let huge: String = (0..=SCHED_RING_SLOTS >> 16)
        .map(|i| {
            service(
                &format!("big{i}"),
                &format!("203.0.113.{}", 100 + i),
                80,
                "tcp",
                "wrr",
                &[(REALS4[0], 65535), (REALS4[1], 65534)],
            )
        })
        .collect();
    let refused = bed::reconfigure(&mut bed.director, &huge, bed::on_ingress).unwrap_err();
    let refused = format!("{refused:#}");
    assert!(refused.contains("no room left for a sequence") && refused.contains("ring holds 4194304"), "{refused}");
    let counts: Vec<String> = (0..6)
        .map(|i| bed.real_of(&packet::tcp_frame(client(VIP4, 49000 + i), sock(VIP4, 80), TCP_SYN, b"")))
        .collect();
    assert_eq!(counts, [REALS4[2], REALS4[1], REALS4[2], REALS4[0], REALS4[1], REALS4[2]], "still 1:2:3");
    assert!(bed.director.status(View::Serving).unwrap().iter().all(|s| !s.name.starts_with("big")));
}
