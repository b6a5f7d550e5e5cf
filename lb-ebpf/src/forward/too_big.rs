//! ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big", built in place of a
//! client's packet that would not fit the link towards its real server once
//! encapsulated, and sent back the way the packet came (as Katran does). The client's
//! stack lowers its path MTU for the VIP and sends smaller segments; nothing is
//! fragmented.
//!
//! The message comes from the VIP (the address the client sent to) and quotes the
//! packet's IP header and the first 8 bytes of its transport header, which is what a
//! client needs to find its socket (RFC 792; RFC 4443 allows more, but not less).

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};
use lb_common::{FAMILY_IPV4, stats::Reason};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use super::nat::first_four;
use crate::{
    csum::{self, Sum},
    header::{header, write_link},
    parse::Packet,
};

/// The part of the transport header quoted.
const QUOTED_L4: usize = 8;
/// ICMP and ICMPv6 headers: type, code, checksum, then 4 bytes (the MTU here).
const ICMP_HEADER: usize = 8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMP type 3 (destination unreachable) code 4 (fragmentation needed and DF set).
const FRAGMENTATION_NEEDED: [u8; 2] = [3, 4];
/// ICMPv6 type 2 (packet too big) code 0.
const PACKET_TOO_BIG: [u8; 2] = [2, 0];
/// IPTOS_PREC_INTERNETCONTROL, as Linux sends its own ICMP errors.
const INTERNET_CONTROL: u8 = 0xc0;
const TTL: u8 = 64;

/// Turns the frame into the ICMP error telling the client that `mtu` is the largest
/// packet that fits, addressed back to where the frame came from; the caller sends it
/// back (`Reason::TooBig`). A function of its own, for the stack's sake.
#[inline(never)]
pub fn reply(ctx: &XdpContext, packet: &Packet, mtu: u16) -> Result<(), Reason> {
    let eth: *const EthHdr = header(ctx, 0).ok_or(Reason::TruncatedEthernet)?;
    // SAFETY: `header` checked the Ethernet header is within the frame.
    let (from, to) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    let tci = super::vlan_tci(ctx, packet);
    if packet.flow.family == FAMILY_IPV4 {
        // Quoting a header with options would need a copy of variable length; such
        // packets (rare, and not TCP's) are dropped without an answer.
        if packet.l4 - packet.l3 != Ipv4Hdr::LEN {
            return Err(Reason::TooBigUnanswered);
        }
        make_room(ctx, packet, Ipv4Hdr::LEN + ICMP_HEADER, Ipv4Hdr::LEN)?;
        write_link(ctx, from, to, tci, EtherType::Ipv4 as u16).ok_or(Reason::NoHeadroom)?;
        write_ipv4(ctx, packet, mtu)?;
    } else {
        make_room(ctx, packet, Ipv6Hdr::LEN + ICMP_HEADER, Ipv6Hdr::LEN)?;
        write_link(ctx, from, to, tci, EtherType::Ipv6 as u16).ok_or(Reason::NoHeadroom)?;
        write_ipv6(ctx, packet, mtu)?;
    }
    Ok(())
}

/// Grows the frame's head by `added` bytes (the new IP and ICMP headers) and cuts its
/// tail after the quoted IP header (`ip_len` bytes) and transport bytes.
#[inline(always)]
fn make_room(ctx: &XdpContext, packet: &Packet, added: usize, ip_len: usize) -> Result<(), Reason> {
    // SAFETY: `ctx.ctx` is this run's own `xdp_md`; on failure the frame is unchanged.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(added as i32)) } != 0 {
        return Err(Reason::NoHeadroom);
    }
    let wanted = packet.l3 + added + ip_len + QUOTED_L4;
    // The parse checked the IP header and at least 8 transport bytes are there, so
    // this only ever shrinks the frame.
    // SAFETY: `ctx.ctx` is this run's own `xdp_md`. (The helper, not the difference of
    // the frame's pointers: the verifier allows no arithmetic on its end.)
    let cut = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32 - wanted as i32;
    // SAFETY: as above; a negative delta within the frame.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) } != 0 {
        return Err(Reason::NoHeadroom);
    }
    Ok(())
}

#[inline(always)]
fn write_ipv4(ctx: &XdpContext, packet: &Packet, mtu: u16) -> Result<(), Reason> {
    const QUOTED: usize = Ipv4Hdr::LEN + QUOTED_L4;
    let ip = header::<Ipv4Hdr>(ctx, packet.l3).ok_or(Reason::NoHeadroom)?.cast_mut();
    let mut reply = Ipv4Hdr {
        vihl: 0x45,
        tos: INTERNET_CONTROL,
        tot_len: ((Ipv4Hdr::LEN + ICMP_HEADER + QUOTED) as u16).to_be_bytes(),
        id: [0; 2],
        frags: [0; 2],
        ttl: TTL,
        proto: IPPROTO_ICMP,
        check: [0; 2],
        src_addr: *first_four(&packet.flow.dst),
        dst_addr: *first_four(&packet.flow.src),
    };
    reply.check = csum::ipv4_header(&reply);
    let icmp = header::<[u8; ICMP_HEADER + QUOTED]>(ctx, packet.l3 + Ipv4Hdr::LEN).ok_or(Reason::NoHeadroom)?;
    let [mtu_high, mtu_low] = mtu.to_be_bytes();
    // SAFETY: `header` checked both headers are within the frame; the quoted bytes
    // after the ICMP header are the packet's own.
    unsafe {
        *ip = reply;
        let icmp = &mut *icmp.cast_mut();
        icmp[..ICMP_HEADER].copy_from_slice(&[
            FRAGMENTATION_NEEDED[0],
            FRAGMENTATION_NEEDED[1],
            0,
            0,
            0,
            0,
            mtu_high,
            mtu_low,
        ]);
        let check = Sum::default().of(icmp).checksum();
        icmp[2..4].copy_from_slice(&check);
    }
    Ok(())
}

#[inline(always)]
fn write_ipv6(ctx: &XdpContext, packet: &Packet, mtu: u16) -> Result<(), Reason> {
    const QUOTED: usize = Ipv6Hdr::LEN + QUOTED_L4;
    const ICMP_LEN: u8 = (ICMP_HEADER + QUOTED) as u8;
    let ip = header::<Ipv6Hdr>(ctx, packet.l3).ok_or(Reason::NoHeadroom)?.cast_mut();
    let icmp = header::<[u8; ICMP_HEADER + QUOTED]>(ctx, packet.l3 + Ipv6Hdr::LEN).ok_or(Reason::NoHeadroom)?;
    let [_, _, mtu_high, mtu_low] = u32::from(mtu).to_be_bytes();
    // The pseudo-header's length and next header, as two 32-bit words.
    let pseudo_rest: [u8; 8] = [0, 0, 0, ICMP_LEN, 0, 0, 0, IPPROTO_ICMPV6];
    // SAFETY: `header` checked both headers are within the frame; the quoted bytes
    // after the ICMPv6 header are the packet's own.
    unsafe {
        *ip = Ipv6Hdr {
            vcf: [0x60, 0, 0, 0],
            payload_len: u16::from(ICMP_LEN).to_be_bytes(),
            next_hdr: IPPROTO_ICMPV6,
            hop_limit: TTL,
            src_addr: packet.flow.dst,
            dst_addr: packet.flow.src,
        };
        let icmp = &mut *icmp.cast_mut();
        icmp[..ICMP_HEADER].copy_from_slice(&[PACKET_TOO_BIG[0], PACKET_TOO_BIG[1], 0, 0, 0, 0, mtu_high, mtu_low]);
        let addresses = core::ptr::addr_of!((*ip).src_addr).cast::<[u8; 32]>();
        let check = Sum::default().of(addresses).of(&pseudo_rest).of(icmp).checksum();
        icmp[2..4].copy_from_slice(&check);
    }
    Ok(())
}
