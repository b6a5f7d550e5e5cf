//! Frames for the data-path tests and the benchmark, built byte by byte with correct
//! checksums, so the program sees what a real client would send.

use std::net::{IpAddr, SocketAddr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub use lb_common::state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Offset of the IP header in an untagged frame.
pub const L3: usize = 14;

/// A TCP segment from `src` to `dst` in a frame from the client to the director.
pub fn tcp_frame(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_frame_with_options(src, dst, flags, &[], payload)
}

/// Like [`tcp_frame`], with TCP `options` (a multiple of 4 bytes).
pub fn tcp_frame_with_options(src: SocketAddr, dst: SocketAddr, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let segment = tcp_with_options(src, dst, flags, options, payload);
    ip_frame(src.ip(), dst.ip(), PROTO_TCP, &segment)
}

/// A UDP datagram from `src` to `dst` in a frame from the client to the director.
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let datagram = udp(src, dst, payload);
    ip_frame(src.ip(), dst.ip(), PROTO_UDP, &datagram)
}

/// An IP packet of either family carrying `payload`, in a frame to the director.
pub fn ip_frame(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => ethernet(ETHERTYPE_IPV4, &ipv4(src, dst, protocol, &[], payload)),
        (IpAddr::V6(_), IpAddr::V6(_)) => ethernet(ETHERTYPE_IPV6, &ipv6(src, dst, protocol, payload)),
        _ => panic!("mixed address families"),
    }
}

/// The IP packet of an untagged `frame` in an IP tunnel from `src` to `dst`, in a
/// frame of the same MACs, as a tunnelling director sends it: an outer IPv4 header
/// (protocol 4 around IPv4, 41 around IPv6) or IPv6 header (next header 4 or 41).
pub fn tunnelled(src: IpAddr, dst: IpAddr, frame: &[u8]) -> Vec<u8> {
    let inner = &frame[L3..];
    let protocol = if inner[0] >> 4 == 6 { PROTO_IPV6 } else { PROTO_IPIP };
    ip_frame(src, dst, protocol, inner)
}

pub fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&DIRECTOR_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The same frame between other MAC addresses.
pub fn with_macs(frame: &[u8], destination: [u8; 6], source: [u8; 6]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[..6].copy_from_slice(&destination);
    frame[6..12].copy_from_slice(&source);
    frame
}

/// The same frame with an 802.1Q tag after the source MAC.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// An IPv4 header (with `options`, a multiple of 4 bytes) and `payload`.
pub fn ipv4(src: IpAddr, dst: IpAddr, protocol: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else { panic!("ipv4 needs IPv4 addresses") };
    assert_eq!(options.len() % 4, 0, "IPv4 options come in 32-bit words");
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut packet = vec![0x40 | (header_len / 4) as u8, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(options);
    let checksum = internet_checksum(&packet, 0);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

pub fn ipv6(src: IpAddr, dst: IpAddr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (src, dst) else { panic!("ipv6 needs IPv6 addresses") };
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next_header, 64]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(payload);
    packet
}

pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_with_options(src, dst, flags, &[], payload)
}

/// A TCP segment whose header holds `options` (a multiple of 4 bytes, 40 at most).
pub fn tcp_with_options(src: SocketAddr, dst: SocketAddr, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40, "TCP options come in up to ten 32-bit words");
    let data_offset = ((20 + options.len()) / 4) as u8;
    let mut segment = Vec::with_capacity(20 + options.len() + payload.len());
    segment.extend_from_slice(&src.port().to_be_bytes());
    segment.extend_from_slice(&dst.port().to_be_bytes());
    segment.extend_from_slice(&[0, 0, 0x10, 0x00, 0, 0, 0, 0, data_offset << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    segment.extend_from_slice(options);
    segment.extend_from_slice(payload);
    let checksum = transport_checksum(src.ip(), dst.ip(), PROTO_TCP, &segment);
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    segment
}

pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&src.port().to_be_bytes());
    datagram.extend_from_slice(&dst.port().to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let checksum = transport_checksum(src.ip(), dst.ip(), PROTO_UDP, &datagram);
    datagram[6..8].copy_from_slice(&checksum.to_be_bytes());
    datagram
}

/// An ARP request for `target` from `sender`.
pub fn arp_request(sender: IpAddr, target: IpAddr) -> Vec<u8> {
    let (IpAddr::V4(sender), IpAddr::V4(target)) = (sender, target) else { panic!("ARP is IPv4") };
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    let mut frame = ethernet(ETHERTYPE_ARP, &arp);
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame
}

/// An ICMP echo request.
pub fn icmp_echo(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    let checksum = internet_checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    ip_frame(src, dst, PROTO_ICMP, &icmp)
}

/// Recomputes the header checksum of the IPv4 packet at `l3`, after a test changed a
/// header field, so that only the change it meant is wrong with the packet.
pub fn refresh_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let header_len = usize::from(frame[l3] & 0x0f) * 4;
    let end = (l3 + header_len).min(frame.len());
    frame[l3 + 10..l3 + 12].fill(0);
    let checksum = internet_checksum(&frame[l3..end], 0);
    frame[l3 + 10..l3 + 12].copy_from_slice(&checksum.to_be_bytes());
}

fn transport_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => panic!("mixed address families"),
    }
    internet_checksum(segment, sum_words(&pseudo))
}

/// RFC 1071: the one's complement of the one's complement sum.
fn internet_checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial + sum_words(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum()
}

/// Whether the checksums of an untagged IP `frame` hold when summed again from scratch:
/// the IPv4 header's, and the TCP or UDP checksum over the pseudo-header and segment.
pub fn checksums_hold(frame: &[u8]) -> bool {
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &frame[L3..];
    let (src, dst, protocol, segment): (IpAddr, IpAddr, u8, &[u8]) = match ether_type {
        ETHERTYPE_IPV4 => {
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            if internet_checksum(&ip[..header_len], 0) != 0 {
                return false;
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let address = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[at..at + 4]).unwrap());
            (address(12), address(16), ip[9], &ip[header_len..total])
        }
        ETHERTYPE_IPV6 => {
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let address = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
            (address(8), address(24), ip[6], &ip[40..40 + payload])
        }
        _ => return false,
    };
    transport_checksum(src, dst, protocol, segment) == 0
}

/// A TCP segment as its receiver reads it from an untagged frame.
#[derive(Debug, Clone)]
pub struct Received {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    /// The options of its header.
    pub options: Vec<u8>,
    pub payload_len: usize,
    /// The IP packet's length.
    pub ip_len: usize,
}

/// The TCP segment in `frame`, if it is one.
pub fn received_tcp(frame: &[u8]) -> Option<Received> {
    let ip = frame.get(L3..)?;
    let (src, dst, l4, ip_len): (IpAddr, IpAddr, usize, usize) = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETHERTYPE_IPV4 if ip.get(9) == Some(&PROTO_TCP) => {
            let address = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[at..at + 4]).unwrap());
            (address(12), address(16), usize::from(ip[0] & 0x0f) * 4, usize::from(u16::from_be_bytes([ip[2], ip[3]])))
        }
        ETHERTYPE_IPV6 if ip.get(6) == Some(&PROTO_TCP) => {
            let address = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
            (address(8), address(24), 40, 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])))
        }
        _ => return None,
    };
    let tcp = ip.get(l4..ip_len)?;
    let header_len = usize::from(tcp.get(12)? >> 4) * 4;
    Some(Received {
        src: SocketAddr::new(src, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([tcp[2], tcp[3]])),
        flags: tcp[13],
        options: tcp.get(20..header_len)?.to_vec(),
        payload_len: tcp.len() - header_len,
        ip_len,
    })
}

/// The client a TOA option names, read as the `toa` kernel module reads it: the first
/// option of kind 254 and length 8 (port, IPv4 address) or 20 (port, IPv6 address).
pub fn toa_client(options: &[u8]) -> Option<SocketAddr> {
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => return None,
            1 => at += 1,
            kind => {
                let size = usize::from(*options.get(at + 1)?);
                let option = options.get(at..at + size.max(2))?;
                let port = || u16::from_be_bytes([option[2], option[3]]);
                match (kind, size) {
                    (254, 8) => return Some(SocketAddr::new(<[u8; 4]>::try_from(&option[4..]).ok()?.into(), port())),
                    (254, 20) => return Some(SocketAddr::new(<[u8; 16]>::try_from(&option[4..]).ok()?.into(), port())),
                    _ => at += size.max(2),
                }
            }
        }
    }
    None
}

/// The IP packet of an untagged `frame` in the tunnel a director builds towards a
/// real server: an outer IPv4 header (id 0, don't fragment, TTL 64) or IPv6 header
/// (hop limit 64, flow label 0: mask the program's with [`without_flow_label`]), with
/// the inner packet's DSCP and ECN bits, in a frame of the same MACs.
pub fn encapsulated(src: IpAddr, dst: IpAddr, frame: &[u8]) -> Vec<u8> {
    let inner = &frame[L3..];
    let traffic_class = if inner[0] >> 4 == 4 { inner[1] } else { (inner[0] << 4) | (inner[1] >> 4) };
    let mut outer = tunnelled(src, dst, frame);
    if src.is_ipv4() {
        set_ipv4_fields(&mut outer, L3, traffic_class, 0, 0x4000);
    } else {
        outer[L3] = 0x60 | (traffic_class >> 4);
        outer[L3 + 1] = traffic_class << 4;
    }
    outer
}

/// The frame with its outer IPv6 header's flow label zeroed (an untagged frame).
pub fn without_flow_label(frame: &[u8]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    if frame[L3] >> 4 == 6 {
        frame[L3 + 1] &= 0xf0;
        frame[L3 + 2] = 0;
        frame[L3 + 3] = 0;
    }
    frame
}

/// Sets the TOS, identification and flags/fragment offset of the IPv4 header at `l3`,
/// and its checksum to match.
pub fn set_ipv4_fields(frame: &mut [u8], l3: usize, tos: u8, id: u16, frags: u16) {
    frame[l3 + 1] = tos;
    frame[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
    frame[l3 + 6..l3 + 8].copy_from_slice(&frags.to_be_bytes());
    refresh_ipv4_checksum(frame, l3);
}

/// An ICMP message (IPv4) of `kind` and `code`, with the 4 bytes after the checksum
/// and the data given.
pub fn icmp(kind: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(data);
    let checksum = internet_checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    icmp
}

pub const PROTO_ICMPV6: u8 = 58;

/// An ICMPv6 message from `src` to `dst` (its checksum covers the pseudo-header).
pub fn icmpv6(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(data);
    let checksum = transport_checksum(src, dst, PROTO_ICMPV6, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    icmp
}

/// The fragments of an IPv4 packet without options (as a router splits it), each
/// carrying `chunk` bytes (a multiple of 8) of its payload but the last.
pub fn ipv4_fragments(packet: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment offsets count 8-byte units");
    let (header, payload) = packet.split_at(20);
    let chunks: Vec<&[u8]> = payload.chunks(chunk).collect();
    let last = chunks.len() - 1;
    let id = u16::from_be_bytes([header[4], header[5]]);
    chunks
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let mut fragment = header.to_vec();
            fragment[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
            let more = if i < last { 0x2000 } else { 0 };
            fragment.extend_from_slice(part);
            set_ipv4_fields(&mut fragment, 0, header[1], id, more | (i * chunk / 8) as u16);
            fragment
        })
        .collect()
}

/// The fragments of an IPv6 packet without extension headers, each with a fragment
/// header of identification `id` and `chunk` bytes (a multiple of 8) of its payload
/// but the last.
pub fn ipv6_fragments(packet: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment offsets count 8-byte units");
    let (header, payload) = packet.split_at(40);
    let chunks: Vec<&[u8]> = payload.chunks(chunk).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let mut fragment = header.to_vec();
            fragment[4..6].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
            fragment[6] = 44;
            let offset_and_more = ((i * chunk) as u16) | u16::from(i < last);
            fragment.extend_from_slice(&[header[6], 0]);
            fragment.extend_from_slice(&offset_and_more.to_be_bytes());
            fragment.extend_from_slice(&id.to_be_bytes());
            fragment.extend_from_slice(part);
            fragment
        })
        .collect()
}
