//! Is the frame a tunnel packet, and where are its parts? Ethernet (one 802.1Q tag),
//! the outer IP header (IPv4 with protocol 4 or 41, IPv6 with next header 41 or 4),
//! then the inner IP header, each checked against what the header before it states.
//!
//! A frame is a tunnel packet when its outer protocol number says so; until then
//! nothing is refused. From there on, whatever does not check out is a [`Refusal`],
//! so `strip` only ever sees a packet it can hand to the kernel whole.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6,
    decap::{AddressKey, Refusal},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use crate::{
    csum,
    header::{frame_len, header},
};

/// A well-formed outer header, and what it says of the inner packet.
///
/// The offsets are bytes on purpose: kept on the stack, a wider value may come back to
/// the verifier with no bounds at all (stored narrow, loaded wide), and it refuses a
/// packet pointer moved by an unbounded amount; a byte loaded is at most 255.
pub struct Tunnel {
    /// Where the outer IP header starts: past the Ethernet header and tag, if any.
    pub l3: u8,
    /// The 802.1Q tag's TCI, kept for the inner packet's link-layer header.
    pub vlan_tci: Option<[u8; 2]>,
    /// Length of the outer IP header (at most 60).
    pub outer_len: u8,
    /// Bytes after the outer header, as it states (the frame may hold padding beyond).
    pub payload_len: usize,
    /// The inner packet's family, as the outer protocol number announces it.
    pub inner_family: u8,
    pub destination: AddressKey,
}

/// A well-formed inner header that fits the tunnel's payload.
pub struct Inner {
    /// The ether type that names its family, network order.
    pub ether_type: u16,
    /// Its length, as its header states.
    pub len: u32,
    pub destination: AddressKey,
}

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPV4_MF_OR_OFFSET: u16 = 0x3fff;
/// Where the protocol number is in an IPv4 header, and the next header in IPv6's.
const IPV4_PROTOCOL_AT: usize = 9;
const IPV6_NEXT_HEADER_AT: usize = 6;

/// The frame's tunnel, or `None` when it is not a tunnel packet.
#[inline(always)]
pub fn outer(ctx: &XdpContext) -> Result<Option<Tunnel>, Refusal> {
    let Some((ether_type, l3, vlan_tci)) = link(ctx) else { return Ok(None) };
    if ether_type == EtherType::Ipv4 as u16 {
        outer_ipv4(ctx, l3, vlan_tci)
    } else if ether_type == EtherType::Ipv6 as u16 {
        outer_ipv6(ctx, l3, vlan_tci)
    } else {
        Ok(None)
    }
}

/// The ether type of the payload, where it starts, and the VLAN tag's TCI if tagged.
#[inline(always)]
fn link(ctx: &XdpContext) -> Option<(u16, usize, Option<[u8; 2]>)> {
    let eth: *const EthHdr = header(ctx, 0)?;
    // SAFETY: `header` checked that the frame holds the whole Ethernet header.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != EtherType::Ieee8021q as u16 {
        return Some((ether_type, EthHdr::LEN, None));
    }
    let tag: *const VlanHdr = header(ctx, EthHdr::LEN)?;
    // SAFETY: `header` checked that the frame holds the whole tag.
    let (ether_type, tci) = unsafe { ((*tag).ether_type, (*tag).tci) };
    Some((ether_type, EthHdr::LEN + VlanHdr::LEN, Some(tci)))
}

#[inline(always)]
fn outer_ipv4(ctx: &XdpContext, l3: usize, vlan_tci: Option<[u8; 2]>) -> Result<Option<Tunnel>, Refusal> {
    let Some(ip) = header::<Ipv4Hdr>(ctx, l3) else { return cut_short(ctx, l3 + IPV4_PROTOCOL_AT) };
    // SAFETY: `header` checked that the frame holds the whole fixed header.
    let ip = unsafe { &*ip };
    let Some(inner_family) = tunnelled(ip.proto) else { return Ok(None) };
    let header_len = usize::from(ip.ihl());
    let total_len = usize::from(ip.tot_len());
    if ip.version() != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len || l3 + total_len > frame_len(ctx) {
        return Err(Refusal::MalformedOuter);
    }
    if !csum::ipv4_header_intact(ctx, l3, header_len) {
        return Err(Refusal::MalformedOuter);
    }
    if u16::from_be_bytes(ip.frags) & IPV4_MF_OR_OFFSET != 0 {
        return Err(Refusal::Fragment);
    }
    Ok(Some(Tunnel {
        l3: l3 as u8,
        vlan_tci,
        outer_len: ip.ihl(),
        payload_len: total_len - header_len,
        inner_family,
        destination: AddressKey::ipv4(ip.dst_addr),
    }))
}

#[inline(always)]
fn outer_ipv6(ctx: &XdpContext, l3: usize, vlan_tci: Option<[u8; 2]>) -> Result<Option<Tunnel>, Refusal> {
    let Some(ip) = header::<Ipv6Hdr>(ctx, l3) else { return cut_short(ctx, l3 + IPV6_NEXT_HEADER_AT) };
    // SAFETY: `header` checked that the frame holds the whole header.
    let ip = unsafe { &*ip };
    // Extension headers before the tunnel's are not walked: such a packet is left to
    // the kernel, as is anything else that does not say it is a tunnel at once.
    let Some(inner_family) = tunnelled(ip.next_hdr) else { return Ok(None) };
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if ip.version() != 6 || l3 + Ipv6Hdr::LEN + payload_len > frame_len(ctx) {
        return Err(Refusal::MalformedOuter);
    }
    Ok(Some(Tunnel {
        l3: l3 as u8,
        vlan_tci,
        outer_len: Ipv6Hdr::LEN as u8,
        payload_len,
        inner_family,
        destination: AddressKey::ipv6(ip.dst_addr),
    }))
}

/// For a frame that ends inside the outer IP header: a tunnel packet cut short when
/// the protocol byte is there and names a tunnel, else not one of ours.
#[inline(always)]
fn cut_short(ctx: &XdpContext, protocol_at: usize) -> Result<Option<Tunnel>, Refusal> {
    let Some(protocol) = header::<u8>(ctx, protocol_at) else { return Ok(None) };
    // SAFETY: `header` checked that the frame holds the byte.
    match tunnelled(unsafe { *protocol }) {
        Some(_) => Err(Refusal::MalformedOuter),
        None => Ok(None),
    }
}

/// The family of the packet inside, for a protocol number that is a tunnel's.
#[inline(always)]
fn tunnelled(protocol: u8) -> Option<u8> {
    match protocol {
        IPPROTO_IPIP => Some(FAMILY_IPV4),
        IPPROTO_IPV6 => Some(FAMILY_IPV6),
        _ => None,
    }
}

/// The inner packet, of the family the outer header announced, within its payload.
#[inline(always)]
pub fn inner(ctx: &XdpContext, tunnel: &Tunnel) -> Result<Inner, Refusal> {
    let at = usize::from(tunnel.l3) + usize::from(tunnel.outer_len);
    if tunnel.inner_family == FAMILY_IPV4 {
        inner_ipv4(ctx, at, tunnel.payload_len)
    } else {
        inner_ipv6(ctx, at, tunnel.payload_len)
    }
}

#[inline(always)]
fn inner_ipv4(ctx: &XdpContext, at: usize, room: usize) -> Result<Inner, Refusal> {
    if room < Ipv4Hdr::LEN {
        return Err(Refusal::TruncatedInner);
    }
    let ip: *const Ipv4Hdr = header(ctx, at).ok_or(Refusal::TruncatedInner)?;
    // SAFETY: `header` checked that the frame holds the whole fixed header.
    let ip = unsafe { &*ip };
    let header_len = usize::from(ip.ihl());
    let total_len = usize::from(ip.tot_len());
    if ip.version() != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len || total_len > room {
        return Err(Refusal::MalformedInner);
    }
    // Nobody checks it after us: the kernel sees the inner header only once we are done.
    if !csum::ipv4_header_intact(ctx, at, header_len) {
        return Err(Refusal::MalformedInner);
    }
    Ok(Inner { ether_type: EtherType::Ipv4 as u16, len: total_len as u32, destination: AddressKey::ipv4(ip.dst_addr) })
}

#[inline(always)]
fn inner_ipv6(ctx: &XdpContext, at: usize, room: usize) -> Result<Inner, Refusal> {
    if room < Ipv6Hdr::LEN {
        return Err(Refusal::TruncatedInner);
    }
    let ip: *const Ipv6Hdr = header(ctx, at).ok_or(Refusal::TruncatedInner)?;
    // SAFETY: `header` checked that the frame holds the whole header.
    let ip = unsafe { &*ip };
    let len = Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(ip.payload_len));
    if ip.version() != 6 || len > room {
        return Err(Refusal::MalformedInner);
    }
    Ok(Inner { ether_type: EtherType::Ipv6 as u16, len: len as u32, destination: AddressKey::ipv6(ip.dst_addr) })
}
