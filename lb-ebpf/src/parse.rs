//! From the frame's bytes to a flow, in layers: Ethernet (one 802.1Q tag), IPv4 with
//! any header length or IPv6, then the TCP or UDP ports. The offsets of the headers are
//! kept, so a rewrite needs no second parse.
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
    header::{frame_len, header},
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
}

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS: usize = 13;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

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
const VLAN_ID: u16 = 0x0fff;
const IPV6_NEXT_FRAGMENT: u8 = 44;
/// IPv6 extension headers we do not walk yet (hop-by-hop, routing, destination
/// options, AH, mobility, HIP, shim6).
const IPV6_EXTENSIONS: [u8; 7] = [0, 43, 60, 51, 135, 139, 140];

#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, Reason> {
    let Link { ether_type, vlan, l3 } = ethernet(ctx)?;
    let mut flow = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        src_port: [0; 2],
        dst_port: [0; 2],
        protocol: 0,
        family: 0,
        _pad: [0; 2],
    };
    let (transport, ip_len) = if ether_type == EtherType::Ipv4 as u16 {
        ipv4(ctx, l3, &mut flow)?
    } else if ether_type == EtherType::Ipv6 as u16 {
        ipv6(ctx, l3, &mut flow)?
    } else {
        return Err(Reason::NotIp);
    };
    let tcp_flags = ports(ctx, &transport, &mut flow)?;
    let opens_connection = flow.protocol == IPPROTO_UDP || tcp_flags & (TCP_SYN | TCP_RST) == TCP_SYN;
    Ok(Packet { flow, ip_len, vlan, l3, l4: transport.offset, tcp_flags, opens_connection })
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
fn ipv4(ctx: &XdpContext, l3: usize, flow: &mut FlowKey) -> Result<(Transport, u32), Reason> {
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
    if u16::from_be_bytes(ip.frags) & IPV4_MF_OR_OFFSET != 0 {
        return Err(Reason::Fragment);
    }
    flow.family = FAMILY_IPV4;
    flow.protocol = ip.proto;
    flow.src[..4].copy_from_slice(&ip.src_addr);
    flow.dst[..4].copy_from_slice(&ip.dst_addr);
    let transport = Transport { offset: l3 + header_len, len: total_len - header_len };
    Ok((transport, total_len as u32))
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize, flow: &mut FlowKey) -> Result<(Transport, u32), Reason> {
    let ip: *const Ipv6Hdr = header(ctx, l3).ok_or(Reason::MalformedIp)?;
    let ip = unsafe { &*ip };
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload_len > frame_len(ctx) {
        return Err(Reason::MalformedIp);
    }
    if ip.next_hdr == IPV6_NEXT_FRAGMENT {
        return Err(Reason::Fragment);
    }
    if IPV6_EXTENSIONS.contains(&ip.next_hdr) {
        return Err(Reason::Ipv6Extension);
    }
    flow.family = FAMILY_IPV6;
    flow.protocol = ip.next_hdr;
    flow.src = ip.src_addr;
    flow.dst = ip.dst_addr;
    let transport = Transport { offset: l3 + Ipv6Hdr::LEN, len: payload_len };
    Ok((transport, (Ipv6Hdr::LEN + payload_len) as u32))
}

/// Reads the ports into `flow`; returns the TCP flags (0 for UDP).
#[inline(always)]
fn ports(ctx: &XdpContext, transport: &Transport, flow: &mut FlowKey) -> Result<u8, Reason> {
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
            if UdpHdr::LEN > transport.len || datagram_len < UdpHdr::LEN || datagram_len > transport.len {
                return Err(Reason::TruncatedL4);
            }
            flow.src_port = udp.src;
            flow.dst_port = udp.dst;
            Ok(0)
        }
        _ => Err(Reason::NotTcpUdp),
    }
}
