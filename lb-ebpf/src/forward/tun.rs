//! LVS-TUN: the client's packet goes to the real server unchanged inside an outer IP
//! header, from the director's tunnel source to the real server's address; the real
//! server (`lb-decap`) takes the tunnel apart and answers the client itself.
//!
//! The outer header's family is the real server's, so an IPv4 VIP can be served by an
//! IPv6 real server (and the other way round). The outer TTL or hop limit is fresh, the
//! DSCP and ECN bits are the inner packet's, and an IPv4 outer header says "don't
//! fragment": a packet that would not fit the link towards the real server once
//! encapsulated is answered with ICMP instead (`too_big`), so the client's path-MTU
//! discovery lowers its segment size.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    FAMILY_IPV4,
    real::{IPPROTO_IPIP, IPPROTO_IPV6, OUTER_DF, OUTER_TTL, RealServer},
    stats::Reason,
};
use network_types::{
    eth::EtherType,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use super::nat::first_four;
use crate::{
    csum,
    header::{header, store_ipv6, store_words, write_link},
    parse::Packet,
};

/// IPv4 "don't fragment".
const DF: [u8; 2] = OUTER_DF.to_be_bytes();

/// The largest packet that fits the link towards `real` once encapsulated.
#[inline(always)]
pub fn inner_mtu(real: &RealServer) -> u16 {
    real.mtu.saturating_sub(outer_len(real) as u16)
}

#[inline(always)]
fn outer_len(real: &RealServer) -> u32 {
    if real.family == FAMILY_IPV4 { Ipv4Hdr::LEN as u32 } else { Ipv6Hdr::LEN as u32 }
}

/// Encapsulates the packet, which fits (`inner_mtu`), towards `real` and sends it to
/// the next hop. A function of its own, for the stack's sake.
#[inline(never)]
pub fn to_real(ctx: &XdpContext, packet: &Packet, real: &RealServer) -> Result<u32, Reason> {
    let outer_len = outer_len(real);
    let outer_ipv4 = real.family == FAMILY_IPV4;
    let traffic_class = traffic_class(ctx, packet)?;
    let tci = super::vlan_tci(ctx, packet);
    // SAFETY: `ctx.ctx` is this run's own `xdp_md`; on failure the frame is unchanged.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Reason::NoHeadroom);
    }
    // From here on a failure drops the frame: it is no longer the one that came.
    let outer =
        Outer { traffic_class, carried: if packet.flow.family == FAMILY_IPV4 { IPPROTO_IPIP } else { IPPROTO_IPV6 } };
    let ether_type = if outer_ipv4 {
        write_ipv4(ctx, packet, real, outer)?;
        EtherType::Ipv4 as u16
    } else {
        write_ipv6(ctx, packet, real, outer)?;
        EtherType::Ipv6 as u16
    };
    write_link(ctx, real.mac, real.director_mac, tci, ether_type).ok_or(Reason::NoHeadroom)?;
    Ok(super::next_hop_action(ctx, real.ifindex))
}

/// The inner packet's DSCP and ECN bits, which the outer header carries too (RFC 6040's
/// normal mode copies ECN, so congestion marks along the tunnel reach the real server).
#[inline(always)]
fn traffic_class(ctx: &XdpContext, packet: &Packet) -> Result<u8, Reason> {
    let first_two: *const [u8; 2] = header(ctx, packet.l3).ok_or(Reason::MalformedIp)?;
    // SAFETY: `header` checked the two bytes are within the frame.
    let [first, second] = unsafe { *first_two };
    Ok(if packet.flow.family == FAMILY_IPV4 { second } else { (first << 4) | (second >> 4) })
}

/// What the outer header takes from the inner packet.
#[derive(Clone, Copy)]
struct Outer {
    traffic_class: u8,
    /// IPPROTO_IPIP or IPPROTO_IPV6.
    carried: u8,
}

#[inline(always)]
fn write_ipv4(
    ctx: &XdpContext,
    packet: &Packet,
    real: &RealServer,
    Outer { traffic_class, carried }: Outer,
) -> Result<(), Reason> {
    let ip = header::<Ipv4Hdr>(ctx, packet.l3).ok_or(Reason::NoHeadroom)?.cast_mut();
    let tot_len = (packet.ip_len + Ipv4Hdr::LEN as u32) as u16;
    let outer = Ipv4Hdr {
        vihl: 0x45,
        tos: traffic_class,
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        frags: DF,
        ttl: OUTER_TTL,
        proto: carried,
        check: csum::finish(
            u32::from(real.outer_sum) + u32::from(traffic_class) + u32::from(tot_len) + u32::from(carried),
        ),
        src_addr: *first_four(&real.tunnel_source),
        dst_addr: *first_four(&real.address),
    };
    // SAFETY: `header` checked the outer header's bytes are within the frame; the
    // header is 20 bytes, five words.
    unsafe { store_words(ip.cast(), core::mem::transmute::<Ipv4Hdr, [u32; 5]>(outer)) };
    Ok(())
}

#[inline(always)]
fn write_ipv6(
    ctx: &XdpContext,
    packet: &Packet,
    real: &RealServer,
    Outer { traffic_class, carried }: Outer,
) -> Result<(), Reason> {
    let ip = header::<Ipv6Hdr>(ctx, packet.l3).ok_or(Reason::NoHeadroom)?.cast_mut();
    let label = flow_label(packet);
    let vcf = [
        0x60 | (traffic_class >> 4),
        (traffic_class << 4) | ((label >> 16) as u8 & 0x0f),
        (label >> 8) as u8,
        label as u8,
    ];
    let [len_high, len_low] = (packet.ip_len as u16).to_be_bytes();
    let lengths = [len_high, len_low, carried, OUTER_TTL];
    // SAFETY: `header` checked the outer header's bytes are within the frame.
    unsafe {
        store_words(ip.cast(), [u32::from_ne_bytes(vcf), u32::from_ne_bytes(lengths)]);
        store_ipv6(&raw mut (*ip).src_addr, &real.tunnel_source);
        store_ipv6(&raw mut (*ip).dst_addr, &real.address);
    }
    Ok(())
}

/// A flow label from the inner flow, so routers that spread by the outer header's
/// flow label keep a flow's packets on one path and spread different flows.
#[inline(always)]
fn flow_label(packet: &Packet) -> u32 {
    let word = |at: usize| {
        u32::from_ne_bytes([
            packet.flow.src[at],
            packet.flow.src[at + 1],
            packet.flow.src[at + 2],
            packet.flow.src[at + 3],
        ])
    };
    let ports = u32::from_ne_bytes([
        packet.flow.src_port[0],
        packet.flow.src_port[1],
        packet.flow.dst_port[0],
        packet.flow.dst_port[1],
    ]);
    let hash = (word(0) ^ word(4) ^ word(8) ^ word(12) ^ ports).wrapping_mul(0x9e37_79b1);
    hash >> 12
}
