//! From the frame's bytes to a flow, in layers: Ethernet (one 802.1Q tag), IPv4 with
//! any header length or IPv6, then the TCP or UDP ports, or an ICMP error's quoted
//! header. The offsets of the headers are kept, so a rewrite needs no second parse.
//!
//! An ICMP or ICMPv6 error (unreachable, too big, time exceeded, parameter problem)
//! quotes the header of the packet it is about, which went the other way: its flow is
//! that packet's, reversed, so it finds the connection that packet belonged to (as
//! Katran's `handle_icmp.h` does).
//!
//! Malformed or truncated headers are refused here with a [`Reason`], so no later step
//! ever reads past the frame or forwards something it did not understand.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP, conn::FlowKey, stats::Reason};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{
    csum,
    header::{frame_len, header, load_ipv4, load_ipv6},
};

/// What the rest of the journey needs to know of a packet.
pub struct Packet {
    pub flow: FlowKey,
    /// Length of the IP packet, as its header states (what IPVS counts as bytes).
    pub ip_len: u32,
    /// The 802.1Q VLAN id, 0 for an untagged (or priority-tagged) frame.
    pub vlan: u16,
    /// Where the IP header starts in the frame.
    pub l3: usize,
    /// Where the TCP or UDP header starts.
    pub l4: usize,
    /// The TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
    /// Whether the packet may open a connection: any UDP datagram, a TCP SYN without RST.
    pub opens_connection: bool,
    /// `FIRST_FRAGMENT` or `LATER_FRAGMENT` for a fragment of an IP datagram, else 0.
    pub fragment: u8,
    /// A fragment's IP identification (IPv4's 16 bits, IPv6's 32).
    pub fragment_id: u32,
    /// An ICMP error: where the quoted IP header starts (0 for any other packet).
    pub quoted_l3: u16,
    /// Where the quoted TCP or UDP header starts (8 of its bytes are in the frame).
    pub quoted_l4: u16,
}

impl Packet {
    /// A packet of nothing yet, for [`packet`] to fill.
    pub const fn empty() -> Self {
        let flow = FlowKey {
            src: [0; 16],
            dst: [0; 16],
            src_port: [0; 2],
            dst_port: [0; 2],
            protocol: 0,
            family: 0,
            _pad: [0; 2],
        };
        Self {
            flow,
            ip_len: 0,
            vlan: 0,
            l3: 0,
            l4: 0,
            tcp_flags: 0,
            opens_connection: false,
            fragment: 0,
            fragment_id: 0,
            quoted_l3: 0,
            quoted_l4: 0,
        }
    }

    /// A fragment that carries the transport header (ports, checksum).
    pub fn is_first_fragment(&self) -> bool {
        self.fragment == FIRST_FRAGMENT
    }

    /// A fragment without the transport header: its ports come from its first one's.
    pub fn is_later_fragment(&self) -> bool {
        self.fragment == LATER_FRAGMENT
    }

    pub fn is_icmp_error(&self) -> bool {
        self.quoted_l3 != 0
    }
}

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS: usize = 13;
pub use lb_common::state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Where the IP packet starts, and what the Ethernet header says is in it.
struct Link {
    ether_type: u16,
    vlan: u16,
    l3: usize,
}

/// Where the transport header starts, and what the IP header said about it.
struct Transport {
    offset: usize,
    /// Bytes from the transport header to the end of the IP packet.
    len: usize,
}

const IPV4_MF_OR_OFFSET: u16 = 0x3fff;
const IPV4_OFFSET: u16 = 0x1fff;
/// The offset bits of an IPv6 fragment header's offset-and-flags word.
const IPV6_OFFSET: u16 = 0xfff8;
const IPV6_FRAGMENT_HEADER: usize = 8;
/// [`Packet::fragment`] values.
pub const FIRST_FRAGMENT: u8 = 1;
pub const LATER_FRAGMENT: u8 = 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// Type, code, checksum and 4 bytes, then the quoted packet.
const ICMP_HEADER: usize = 8;
/// Destination unreachable (fragmentation needed among them), time exceeded, parameter
/// problem.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];
/// Destination unreachable, packet too big, time exceeded, parameter problem.
const ICMPV6_ERRORS: [u8; 4] = [1, 2, 3, 4];
const VLAN_ID: u16 = 0x0fff;
const IPV6_NEXT_FRAGMENT: u8 = 44;
/// IPv6 extension headers we do not walk yet (hop-by-hop, routing, destination
/// options, AH, mobility, HIP, shim6).
const IPV6_EXTENSIONS: [u8; 7] = [0, 43, 60, 51, 135, 139, 140];

/// Parses the frame into `packet`, which the caller gives (zeroed), so the packet is
/// built where it stays rather than copied out of a result.
#[inline(always)]
pub fn packet(ctx: &XdpContext, packet: &mut Packet) -> Result<(), Reason> {
    let Link { ether_type, vlan, l3 } = ethernet(ctx)?;
    let (transport, ip_len) = if ether_type == EtherType::Ipv4 as u16 {
        ipv4(ctx, l3, packet)?
    } else if ether_type == EtherType::Ipv6 as u16 {
        ipv6(ctx, l3, packet)?
    } else {
        return Err(Reason::NotIp);
    };
    packet.ip_len = ip_len;
    packet.vlan = vlan;
    packet.l3 = l3;
    packet.l4 = transport.offset;
    if packet.fragment != 0 {
        // Only TCP and UDP fragments are followed; the kernel reassembles the rest.
        if packet.flow.protocol != IPPROTO_TCP && packet.flow.protocol != IPPROTO_UDP {
            return Err(Reason::Fragment);
        }
        // A later fragment has no transport header: its ports are its first one's.
        if packet.is_later_fragment() {
            return Ok(());
        }
    } else if is_icmp(&packet.flow) {
        return quoted(ctx, &transport, packet);
    }
    packet.tcp_flags = ports(ctx, &transport, packet)?;
    packet.opens_connection = packet.flow.protocol == IPPROTO_UDP || packet.tcp_flags & (TCP_SYN | TCP_RST) == TCP_SYN;
    Ok(())
}

/// The ether type of the payload and where it starts, past one optional VLAN tag.
#[inline(always)]
fn ethernet(ctx: &XdpContext) -> Result<Link, Reason> {
    let eth: *const EthHdr = header(ctx, 0).ok_or(Reason::TruncatedEthernet)?;
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != EtherType::Ieee8021q as u16 {
        return Ok(Link { ether_type, vlan: 0, l3: EthHdr::LEN });
    }
    let tag: *const VlanHdr = header(ctx, EthHdr::LEN).ok_or(Reason::TruncatedEthernet)?;
    let (ether_type, tci) = unsafe { ((*tag).ether_type, (*tag).tci) };
    Ok(Link { ether_type, vlan: u16::from_be_bytes(tci) & VLAN_ID, l3: EthHdr::LEN + VlanHdr::LEN })
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize, packet: &mut Packet) -> Result<(Transport, u32), Reason> {
    let ip: *const Ipv4Hdr = header(ctx, l3).ok_or(Reason::MalformedIp)?;
    let ip = unsafe { &*ip };
    let header_len = usize::from(ip.ihl());
    let total_len = usize::from(ip.tot_len());
    if ip.version() != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len {
        return Err(Reason::MalformedIp);
    }
    if l3 + total_len > frame_len(ctx) || !csum::ipv4_header_intact(ctx, l3, header_len) {
        return Err(Reason::MalformedIp);
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IPV4_MF_OR_OFFSET != 0 {
        packet.fragment = if frags & IPV4_OFFSET == 0 { FIRST_FRAGMENT } else { LATER_FRAGMENT };
        packet.fragment_id = u32::from(u16::from_be_bytes(ip.id));
    }
    let flow = &mut packet.flow;
    flow.family = FAMILY_IPV4;
    flow.protocol = ip.proto;
    // SAFETY: `header` checked the whole IPv4 header is within the frame.
    flow.src[..4].copy_from_slice(&unsafe { load_ipv4(&raw const ip.src_addr) });
    flow.dst[..4].copy_from_slice(&unsafe { load_ipv4(&raw const ip.dst_addr) });
    let transport = Transport { offset: l3 + header_len, len: total_len - header_len };
    Ok((transport, total_len as u32))
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize, packet: &mut Packet) -> Result<(Transport, u32), Reason> {
    let ip: *const Ipv6Hdr = header(ctx, l3).ok_or(Reason::MalformedIp)?;
    let ip = unsafe { &*ip };
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload_len > frame_len(ctx) {
        return Err(Reason::MalformedIp);
    }
    let mut next_header = ip.next_hdr;
    let mut transport = Transport { offset: l3 + Ipv6Hdr::LEN, len: payload_len };
    if next_header == IPV6_NEXT_FRAGMENT {
        // Next header, reserved, offset (13 bits) and flags (M last), identification.
        let fragment: *const [u8; 8] = header(ctx, transport.offset).ok_or(Reason::MalformedIp)?;
        // SAFETY: `header` checked the fragment header is within the frame.
        let [next, _, offset_high, offset_low_and_flags, id @ ..] = unsafe { *fragment };
        if payload_len < IPV6_FRAGMENT_HEADER {
            return Err(Reason::MalformedIp);
        }
        let first = u16::from_be_bytes([offset_high, offset_low_and_flags]) & IPV6_OFFSET == 0;
        packet.fragment = if first { FIRST_FRAGMENT } else { LATER_FRAGMENT };
        packet.fragment_id = u32::from_be_bytes(id);
        next_header = next;
        transport =
            Transport { offset: transport.offset + IPV6_FRAGMENT_HEADER, len: payload_len - IPV6_FRAGMENT_HEADER };
    }
    if IPV6_EXTENSIONS.contains(&next_header) || next_header == IPV6_NEXT_FRAGMENT {
        return Err(Reason::Ipv6Extension);
    }
    let flow = &mut packet.flow;
    flow.family = FAMILY_IPV6;
    flow.protocol = next_header;
    // SAFETY: `header` checked the whole IPv6 header is within the frame.
    flow.src = unsafe { load_ipv6(&raw const ip.src_addr) };
    flow.dst = unsafe { load_ipv6(&raw const ip.dst_addr) };
    Ok((transport, (Ipv6Hdr::LEN + payload_len) as u32))
}

/// ICMP in IPv4, ICMPv6 in IPv6.
#[inline(always)]
fn is_icmp(flow: &FlowKey) -> bool {
    (flow.family == FAMILY_IPV4 && flow.protocol == IPPROTO_ICMP)
        || (flow.family == FAMILY_IPV6 && flow.protocol == IPPROTO_ICMPV6)
}

/// An ICMP error's quoted packet, reversed into `packet.flow` (the family stays: an
/// ICMP error quotes a packet of its own IP version). Other ICMP messages (echo,
/// neighbour discovery) are not the data path's.
#[inline(always)]
fn quoted(ctx: &XdpContext, transport: &Transport, packet: &mut Packet) -> Result<(), Reason> {
    let icmp: *const [u8; 2] = header(ctx, transport.offset).ok_or(Reason::MalformedIcmp)?;
    // SAFETY: `header` checked the type and code are within the frame.
    let [kind, _code] = unsafe { *icmp };
    let ipv4 = packet.flow.family == FAMILY_IPV4;
    let error = if ipv4 { ICMP_ERRORS.contains(&kind) } else { ICMPV6_ERRORS.contains(&kind) };
    if !error {
        return Err(Reason::NotTcpUdp);
    }
    let quoted_l3 = transport.offset + ICMP_HEADER;
    let (quoted_l4, quoted_protocol) = if ipv4 {
        let ip: *const Ipv4Hdr = header(ctx, quoted_l3).ok_or(Reason::MalformedIcmp)?;
        // SAFETY: `header` checked the quoted IPv4 header is within the frame.
        let ip = unsafe { &*ip };
        let header_len = usize::from(ip.ihl());
        if ip.version() != 4 || header_len < Ipv4Hdr::LEN {
            return Err(Reason::MalformedIcmp);
        }
        // SAFETY: as above.
        packet.flow.src[..4].copy_from_slice(&unsafe { load_ipv4(&raw const ip.dst_addr) });
        packet.flow.dst[..4].copy_from_slice(&unsafe { load_ipv4(&raw const ip.src_addr) });
        (quoted_l3 + header_len, ip.proto)
    } else {
        let ip: *const Ipv6Hdr = header(ctx, quoted_l3).ok_or(Reason::MalformedIcmp)?;
        // SAFETY: `header` checked the quoted IPv6 header is within the frame.
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return Err(Reason::MalformedIcmp);
        }
        // SAFETY: as above.
        packet.flow.src = unsafe { load_ipv6(&raw const ip.dst_addr) };
        packet.flow.dst = unsafe { load_ipv6(&raw const ip.src_addr) };
        (quoted_l3 + Ipv6Hdr::LEN, ip.next_hdr)
    };
    if quoted_protocol != IPPROTO_TCP && quoted_protocol != IPPROTO_UDP {
        return Err(Reason::NotTcpUdp);
    }
    // The ports, and the UDP checksum a translation updates: the 8 bytes every ICMP
    // error quotes. They must lie within the ICMP message, not only the frame.
    let ports: *const [[u8; 2]; 4] = header(ctx, quoted_l4).ok_or(Reason::MalformedIcmp)?;
    if quoted_l4 + 8 > transport.offset + transport.len {
        return Err(Reason::MalformedIcmp);
    }
    // SAFETY: `header` checked the 8 bytes are within the frame.
    let [source, dest, _, _] = unsafe { *ports };
    packet.flow.src_port = dest;
    packet.flow.dst_port = source;
    packet.flow.protocol = quoted_protocol;
    packet.quoted_l3 = quoted_l3 as u16;
    packet.quoted_l4 = quoted_l4 as u16;
    Ok(())
}

/// Reads the ports into `flow`; returns the TCP flags (0 for UDP).
#[inline(always)]
fn ports(ctx: &XdpContext, transport: &Transport, packet: &mut Packet) -> Result<u8, Reason> {
    // A first fragment holds the start of its datagram only.
    let first_fragment = packet.is_first_fragment();
    let flow = &mut packet.flow;
    match flow.protocol {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = header(ctx, transport.offset).ok_or(Reason::TruncatedL4)?;
            let tcp = unsafe { &*tcp };
            let header_len = usize::from(tcp.doff()) * 4;
            if header_len < TcpHdr::LEN || header_len > transport.len {
                return Err(Reason::TruncatedL4);
            }
            flow.src_port = tcp.source;
            flow.dst_port = tcp.dest;
            // SAFETY: within the header checked above (the flags are its 14th byte).
            let flags: *const u8 = header(ctx, transport.offset + TCP_FLAGS).ok_or(Reason::TruncatedL4)?;
            Ok(unsafe { *flags })
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = header(ctx, transport.offset).ok_or(Reason::TruncatedL4)?;
            let udp = unsafe { &*udp };
            let datagram_len = usize::from(u16::from_be_bytes(udp.len));
            let cut = datagram_len > transport.len && !first_fragment;
            if UdpHdr::LEN > transport.len || datagram_len < UdpHdr::LEN || cut {
                return Err(Reason::TruncatedL4);
            }
            flow.src_port = udp.src;
            flow.dst_port = udp.dst;
            Ok(0)
        }
        _ => Err(Reason::NotTcpUdp),
    }
}
