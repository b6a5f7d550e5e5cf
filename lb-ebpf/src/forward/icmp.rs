//! ICMP errors about a connection's packets, sent where the connection's packets go:
//! to its real server (an error about a packet that went to the client), or back to
//! the client (NAT and Full-NAT: an error about a packet the director sent to the real
//! server, such as "port unreachable" or "fragmentation needed" on the way to it).
//!
//! Where the connection is rewritten, the error is too, as IPVS does: the outer
//! addresses, so it reaches its new destination from a source that one knows, and the
//! quoted packet's addresses and ports, so it reads as the packet its receiver sent.
//! The checksums follow incrementally: the outer and quoted IPv4 headers', the quoted
//! UDP checksum (within the 8 bytes every error quotes; TCP's lies beyond them and
//! nobody verifies a quoted one), and the ICMP checksum over all it covers (for
//! ICMPv6, the outer addresses too).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_IPV4, IPPROTO_UDP,
    conn::Conn,
    real::{Forwarding, RealServer},
    stats::Reason,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use super::{client, nat::first_four, tun};
use crate::{csum::Delta, header::header, parse::Packet};

/// An error about a packet that went to the client, on to the connection's real server
/// (`conn` is the client direction's entry).
#[inline(always)]
pub fn to_real(ctx: &XdpContext, packet: &Packet, conn: &Conn, real: &RealServer) -> Result<u32, Reason> {
    match Forwarding::from_u8(conn.forwarding) {
        // The real server owns the VIP the error is addressed to, and sent the packet
        // it quotes.
        Some(Forwarding::Dr) => Ok(super::transmit(ctx, real)),
        // An error is never answered with another.
        Some(Forwarding::Tun) if packet.ip_len > u32::from(tun::inner_mtu(real)) => Err(Reason::TooBigUnanswered),
        Some(Forwarding::Tun) => tun::to_real(ctx, packet, real),
        // The quoted reply left as VIP:vport; the real server sent it from RIP:rport.
        Some(Forwarding::Nat) => {
            let real_end = Some((&conn.dst, conn.dst_port));
            translate(ctx, packet, (None, Some(&conn.dst)), (real_end, None))?;
            Ok(super::transmit(ctx, real))
        }
        // ... and to the local address and port, not to the client.
        Some(Forwarding::Fnat) => {
            let (real_end, local_end) = (Some((&conn.dst, conn.dst_port)), Some((&conn.src, conn.src_port)));
            translate(ctx, packet, (Some(&conn.src), Some(&conn.dst)), (real_end, local_end))?;
            Ok(super::transmit(ctx, real))
        }
        None => Err(Reason::UnsupportedForwarding),
    }
}

/// An error about a packet the director sent to a real server, back to the client
/// (`conn` is the reply direction's entry: what replies get back).
#[inline(always)]
pub fn to_client(ctx: &XdpContext, packet: &Packet, conn: &Conn) -> Result<u32, Reason> {
    let service_end = Some((&conn.src, conn.src_port));
    // The quoted packet went to RIP:rport; the client sent it to VIP:vport. The error
    // comes from the VIP, the only address of the site the client knows.
    let next_hop = match Forwarding::from_u8(conn.forwarding) {
        Some(Forwarding::Nat) => {
            // Reversed, the quoted packet's source is the client.
            let client = &packet.flow.dst;
            let next_hop = client::next_hop(ctx, packet, &conn.src, client)?;
            translate(ctx, packet, (Some(&conn.src), None), (None, service_end))?;
            next_hop
        }
        // ... and came from the local address and port, for the client's.
        Some(Forwarding::Fnat) => {
            let next_hop = client::next_hop(ctx, packet, &conn.src, &conn.dst)?;
            let client_end = Some((&conn.dst, conn.dst_port));
            translate(ctx, packet, (Some(&conn.src), Some(&conn.dst)), (client_end, service_end))?;
            next_hop
        }
        _ => return Err(Reason::UnsupportedForwarding),
    };
    Ok(client::transmit(ctx, &next_hop))
}

/// An address and a port a packet is rewritten to.
type Endpoint<'a> = (&'a [u8; 16], [u8; 2]);

/// New outer (source, destination) addresses and quoted (source, destination)
/// endpoints; `None` leaves one as it is.
type Outer<'a> = (Option<&'a [u8; 16]>, Option<&'a [u8; 16]>);
type Quoted<'a> = (Option<Endpoint<'a>>, Option<Endpoint<'a>>);

#[inline(always)]
fn translate(ctx: &XdpContext, packet: &Packet, outer: Outer, quoted: Quoted) -> Result<(), Reason> {
    let ipv4 = packet.flow.family == FAMILY_IPV4;
    let (quoted_src, quoted_dst) = quoted;
    let outer_src = outer.0.map(|address| (address, [0; 2]));
    let outer_dst = outer.1.map(|address| (address, [0; 2]));
    let (quoted_l3, quoted_l4) = quoted_offsets(packet)?;
    // The outer addresses are in ICMPv6's checksum (its pseudo-header), not ICMP's.
    let (outer, quoted_header, addresses) = if ipv4 {
        rewrite_ipv4(ctx, packet.l3, outer_src, outer_dst)?;
        let old = ipv4_check(ctx, quoted_l3)?;
        let addresses = rewrite_ipv4(ctx, quoted_l3, quoted_src, quoted_dst)?;
        let new = ipv4_check(ctx, quoted_l3)?;
        (Delta::default(), addresses.replace(old, new), addresses)
    } else {
        let outer = rewrite_ipv6(ctx, packet.l3, outer_src, outer_dst)?;
        let addresses = rewrite_ipv6(ctx, quoted_l3, quoted_src, quoted_dst)?;
        (outer, addresses, addresses)
    };
    let l4 = header::<[[u8; 2]; 4]>(ctx, quoted_l4).ok_or(Reason::MalformedIcmp)?.cast_mut();
    // SAFETY: `header` checked the 8 quoted bytes are within the frame.
    let [source, dest, _, check] = unsafe { &mut *l4 };
    let ports = replace_ports(source, dest, quoted_src, quoted_dst);
    let mut udp = Delta::default();
    // The quoted datagram's checksum becomes what its sender computed (an IPv4 one
    // sent without a checksum keeps none).
    if packet.flow.protocol == IPPROTO_UDP && (*check != [0; 2] || !ipv4) {
        let old = *check;
        let new = addresses.and(ports).apply(old);
        *check = if new == [0; 2] { [0xff; 2] } else { new };
        udp = Delta::default().replace(old, *check);
    }
    let icmp = header::<[u8; 4]>(ctx, packet.l4).ok_or(Reason::MalformedIcmp)?.cast_mut();
    // SAFETY: `header` checked the ICMP header's first 4 bytes are within the frame.
    let icmp = unsafe { &mut *icmp };
    let sum = outer.and(quoted_header).and(ports).and(udp).apply([icmp[2], icmp[3]]);
    icmp[2..4].copy_from_slice(&sum);
    Ok(())
}

/// The quoted headers' offsets, bounded for the verifier: it grants no access through
/// an offset that might reach 64 KiB, which a 16-bit field could.
#[inline(always)]
fn quoted_offsets(packet: &Packet) -> Result<(usize, usize), Reason> {
    // Ethernet, a tag, two IPv4 headers with options, ICMP's 8 bytes.
    const FURTHEST: u16 = 18 + 60 + 8 + 60;
    if packet.quoted_l3 > FURTHEST || packet.quoted_l4 > FURTHEST {
        return Err(Reason::MalformedIcmp);
    }
    Ok((usize::from(packet.quoted_l3), usize::from(packet.quoted_l4)))
}

#[inline(always)]
fn ipv4_check(ctx: &XdpContext, l3: usize) -> Result<[u8; 2], Reason> {
    let ip: *const Ipv4Hdr = header(ctx, l3).ok_or(Reason::MalformedIcmp)?;
    // SAFETY: `header` checked the IPv4 header is within the frame.
    Ok(unsafe { (*ip).check })
}

/// Rewrites the IPv4 addresses and the header checksum; returns the change to the
/// pseudo-header's sum.
#[inline(always)]
fn rewrite_ipv4(ctx: &XdpContext, l3: usize, src: Option<Endpoint>, dst: Option<Endpoint>) -> Result<Delta, Reason> {
    let ip = header::<Ipv4Hdr>(ctx, l3).ok_or(Reason::MalformedIp)?.cast_mut();
    // SAFETY: `header` checked the IPv4 header is within the frame.
    let ip = unsafe { &mut *ip };
    let mut delta = Delta::default();
    if let Some((address, _)) = src {
        delta = replace_address(delta, &mut ip.src_addr, first_four(address));
    }
    if let Some((address, _)) = dst {
        delta = replace_address(delta, &mut ip.dst_addr, first_four(address));
    }
    ip.check = delta.apply(ip.check);
    Ok(delta)
}

/// Rewrites the IPv6 addresses (IPv6 has no header checksum); returns the change to
/// the pseudo-header's sum.
#[inline(always)]
fn rewrite_ipv6(ctx: &XdpContext, l3: usize, src: Option<Endpoint>, dst: Option<Endpoint>) -> Result<Delta, Reason> {
    let ip = header::<Ipv6Hdr>(ctx, l3).ok_or(Reason::MalformedIp)?.cast_mut();
    // SAFETY: `header` checked the IPv6 header is within the frame.
    let ip = unsafe { &mut *ip };
    let mut delta = Delta::default();
    if let Some((address, _)) = src {
        delta = replace_address(delta, &mut ip.src_addr, address);
    }
    if let Some((address, _)) = dst {
        delta = replace_address(delta, &mut ip.dst_addr, address);
    }
    Ok(delta)
}

#[inline(always)]
fn replace_address<const N: usize>(delta: Delta, field: &mut [u8; N], new: &[u8; N]) -> Delta {
    let delta = delta.diff(field, new);
    *field = *new;
    delta
}

#[inline(always)]
fn replace_ports(source: &mut [u8; 2], dest: &mut [u8; 2], src: Option<Endpoint>, dst: Option<Endpoint>) -> Delta {
    let mut delta = Delta::default();
    if let Some((_, port)) = src {
        delta = delta.replace(*source, port);
        *source = port;
    }
    if let Some((_, port)) = dst {
        delta = delta.replace(*dest, port);
        *dest = port;
    }
    delta
}
