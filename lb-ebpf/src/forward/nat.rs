//! LVS-NAT: the director is the real servers' gateway. A client's packet leaves with
//! the real server's address and port as its destination; the real server's reply
//! comes back through the director, which puts the VIP and the service's port back as
//! its source. Checksums are updated for the changed bytes only (RFC 1624).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_IPV4, IPPROTO_TCP,
    conn::{CONN_REPLY, Conn, FlowKey},
    real::{Forwarding, RealServer},
    stats::Reason,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    conn,
    csum::Delta,
    header::{header, store_ipv4, store_ipv6},
    maps::Opening,
    parse::Packet,
};

/// Completes a new NAT connection's entry (`conn`, the client direction's) and writes
/// the reply's, which holds the VIP and port to put back. A function of its own, for
/// the stack's sake.
#[inline(never)]
pub fn open(packet: &Packet, real: &RealServer, opening: &mut Opening) -> Result<(), Reason> {
    let Opening { conn, reply, reply_key } = opening;
    conn.dst = real.address;
    conn.dst_port = super::real_port(packet, real);
    *reply = *conn;
    reply.flags = CONN_REPLY;
    reply.src = packet.flow.dst;
    reply.src_port = packet.flow.dst_port;
    reply.dst = [0; 16];
    reply.dst_port = [0; 2];
    set_deltas(&packet.flow, conn, reply);
    *reply_key = conn.reply_key(&packet.flow);
    conn::insert(reply_key, reply, false)
}

/// Which ends of its packets a NAT or Full-NAT entry rewrites, to its `src` and
/// `dst`: (source, destination). NAT rewrites the destination of a client's packets
/// and the source of the replies; Full-NAT both.
#[inline(always)]
fn rewritten_ends(entry: &Conn) -> (bool, bool) {
    let fnat = entry.forwarding == Forwarding::Fnat as u8;
    (entry.is_reply() || fnat, !entry.is_reply() || fnat)
}

/// `Conn::set_deltas`, a function of its own: in Full-NAT's search for a local port,
/// LLVM would otherwise keep parts of it across the tries, on the stack.
#[inline(never)]
pub fn set_deltas(flow: &FlowKey, conn: &mut Conn, reply: &mut Conn) {
    conn.set_deltas(flow, reply);
}

/// How much of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Addresses, ports and both checksums.
    Whole,
    /// The addresses only: a later fragment, which has no transport header (its first
    /// fragment's checksum update covers the whole datagram).
    Addresses,
}

/// Rewrites the packet's source and/or destination (address and port) as `conn`
/// says (`rewritten_ends`), with the IPv4 header checksum and the TCP or UDP checksum
/// (whose pseudo-header holds the addresses) updated by the changes worked out when
/// `conn` was written. A function of its own, for the stack's sake.
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, packet: &Packet, conn: &Conn, what: Rewrite) -> Result<(), Reason> {
    let (src, dst) = rewritten_ends(conn);
    write_addresses(ctx, packet, conn, src, dst)?;
    if what == Rewrite::Addresses {
        return Ok(());
    }
    let delta = Delta::from_bits(conn.port_delta);
    if packet.flow.protocol == IPPROTO_TCP {
        let tcp = header::<TcpHdr>(ctx, packet.l4).ok_or(Reason::TruncatedL4)?.cast_mut();
        // SAFETY: `header` checked the TCP header is within the frame.
        let tcp = unsafe { &mut *tcp };
        write_ports(&mut tcp.source, &mut tcp.dest, conn, src, dst);
        tcp.check = delta.apply(tcp.check);
    } else {
        let udp = header::<UdpHdr>(ctx, packet.l4).ok_or(Reason::TruncatedL4)?.cast_mut();
        // SAFETY: `header` checked the UDP header is within the frame.
        let udp = unsafe { &mut *udp };
        write_ports(&mut udp.src, &mut udp.dst, conn, src, dst);
        // An IPv4 datagram sent without a checksum (zero) keeps none; a computed zero
        // is sent as all ones, as zero would mean "none".
        if udp.check != [0; 2] || packet.flow.family != FAMILY_IPV4 {
            let check = delta.apply(udp.check);
            udp.check = if check == [0; 2] { [0xff; 2] } else { check };
        }
    }
    Ok(())
}

/// Writes `conn`'s source and/or destination address, and (IPv4) the header checksum.
#[inline(always)]
fn write_addresses(ctx: &XdpContext, packet: &Packet, conn: &Conn, src: bool, dst: bool) -> Result<(), Reason> {
    if packet.flow.family == FAMILY_IPV4 {
        let ip = header::<Ipv4Hdr>(ctx, packet.l3).ok_or(Reason::MalformedIp)?.cast_mut();
        // SAFETY: `header` checked the IPv4 header is within the frame.
        unsafe {
            if src {
                store_ipv4(&raw mut (*ip).src_addr, &conn.src);
            }
            if dst {
                store_ipv4(&raw mut (*ip).dst_addr, &conn.dst);
            }
            (*ip).check = Delta::from_bits(conn.address_delta).apply((*ip).check);
        }
    } else {
        let ip = header::<Ipv6Hdr>(ctx, packet.l3).ok_or(Reason::MalformedIp)?.cast_mut();
        // SAFETY: `header` checked the IPv6 header is within the frame.
        unsafe {
            if src {
                store_ipv6(&raw mut (*ip).src_addr, &conn.src);
            }
            if dst {
                store_ipv6(&raw mut (*ip).dst_addr, &conn.dst);
            }
        }
    }
    Ok(())
}

#[inline(always)]
fn write_ports(source: &mut [u8; 2], dest: &mut [u8; 2], conn: &Conn, src: bool, dst: bool) {
    if src {
        *source = conn.src_port;
    }
    if dst {
        *dest = conn.dst_port;
    }
}

/// An IPv4 address as the maps store it: the first four of 16 bytes.
#[inline(always)]
pub fn first_four(address: &[u8; 16]) -> &[u8; 4] {
    // SAFETY: the first four bytes of a 16-byte array, with the array's lifetime.
    unsafe { &*address.as_ptr().cast::<[u8; 4]>() }
}
