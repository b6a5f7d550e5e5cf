//! Sending a packet on: a client's packet to its real server by the connection's
//! forwarding method, and (NAT, Full-NAT) a real server's reply back to its client.

mod client;
mod fnat;
pub mod icmp;
mod nat;
pub mod toa;

pub use nat::Rewrite;
mod too_big;
mod tun;

use aya_ebpf::{bindings::xdp_action::XDP_TX, helpers::bpf_redirect, programs::XdpContext};
use lb_common::{
    conn::{CONN_EXPIRE_NODEST, Conn},
    real::{Forwarding, RealServer},
    service::{SERVICE_EXPIRE_NODEST, Service},
    stats::Reason,
};
use network_types::eth::EthHdr;

use crate::{
    conn,
    header::header,
    maps::{Opening, REALS},
    parse::Packet,
};

/// The real server `id`, if the data path can reach it from where `packet` came.
#[inline(always)]
pub fn reachable(ctx: &XdpContext, packet: &Packet, id: u32) -> Result<&'static RealServer, Reason> {
    let real: &RealServer = REALS.get(id).ok_or(Reason::RealUnresolved)?;
    if real.ifindex == 0 {
        return Err(Reason::RealUnresolved);
    }
    if packet.vlan != real.vlan {
        return Err(Reason::VlanMismatch);
    }
    if !addressed_to_director(ctx, real) {
        return Err(Reason::OtherHost);
    }
    Ok(real)
}

/// The entries of a new connection to `real`, written before its first packet leaves
/// (a NAT or Full-NAT packet never leaves without the entry its reply needs):
/// `opening.conn` becomes the client direction's entry, `opening.reply` the reply
/// direction's, keyed by `opening.reply_key`.
#[inline(always)]
pub fn open(
    packet: &Packet,
    service: &Service,
    id: u32,
    real: &RealServer,
    opening: &mut Opening,
) -> Result<(), Reason> {
    opening.conn = conn::plain(id, service.index, real.forwarding, packet.flow.protocol);
    let rewrites = match Forwarding::from_u8(real.forwarding) {
        // Neither rewrites the packet: the real server answers the client itself.
        Some(Forwarding::Dr | Forwarding::Tun) => false,
        Some(Forwarding::Nat) => {
            nat::open(packet, real, opening)?;
            true
        }
        Some(Forwarding::Fnat) => {
            fnat::open(packet, service, real, opening)?;
            true
        }
        None => return Err(Reason::UnsupportedForwarding),
    };
    if service.flags & SERVICE_EXPIRE_NODEST != 0 {
        opening.conn.flags |= CONN_EXPIRE_NODEST;
    }
    if let Err(reason) = conn::insert(&packet.flow, &opening.conn, false) {
        // NAT and Full-NAT wrote the reply's entry already.
        if rewrites {
            conn::remove(&opening.reply_key);
        }
        return Err(reason);
    }
    conn::count_open(id, packet.flow.protocol);
    Ok(())
}

/// A client's packet to its real server, as its connection says; `what` is
/// `Rewrite::Addresses` for a later fragment, which has no transport header.
#[inline(always)]
pub fn to_real(
    ctx: &XdpContext,
    packet: &Packet,
    conn: &Conn,
    real: &RealServer,
    what: Rewrite,
) -> Result<u32, Reason> {
    let inner_mtu = tun::inner_mtu(real);
    match Forwarding::from_u8(conn.forwarding) {
        // Direct routing: the real server has the VIP on a loopback and answers the
        // client itself, so only the Ethernet addresses change.
        Some(Forwarding::Dr) => Ok(transmit(ctx, real)),
        // A fragment's sender cannot make it smaller: no answer.
        Some(Forwarding::Tun) if packet.ip_len > u32::from(inner_mtu) && what == Rewrite::Addresses => {
            Err(Reason::TooBigUnanswered)
        }
        Some(Forwarding::Tun) if packet.ip_len > u32::from(inner_mtu) => {
            // Answered here rather than in `tun`, so the two frames are never on the
            // stack together.
            too_big::reply(ctx, packet, inner_mtu)?;
            Err(Reason::TooBig)
        }
        Some(Forwarding::Tun) => tun::to_real(ctx, packet, real),
        // NAT rewrites the destination to RIP:rport; Full-NAT the source to the local
        // address and port too.
        Some(Forwarding::Nat | Forwarding::Fnat) => {
            nat::rewrite(ctx, packet, conn, what)?;
            Ok(transmit(ctx, real))
        }
        None => Err(Reason::UnsupportedForwarding),
    }
}

/// A real server's reply (or a later fragment of one: `Rewrite::Addresses`), back to
/// the client with the VIP as its source, and for Full-NAT the client as its
/// destination again (which the reply's entry holds).
#[inline(always)]
pub fn to_client(ctx: &XdpContext, packet: &Packet, conn: &Conn, what: Rewrite) -> Result<u32, Reason> {
    let fnat = match Forwarding::from_u8(conn.forwarding) {
        Some(Forwarding::Nat) => false,
        Some(Forwarding::Fnat) => true,
        _ => return Err(Reason::UnsupportedForwarding),
    };
    let client = if fnat { &conn.dst } else { &packet.flow.dst };
    let next_hop = client::next_hop(ctx, packet, &conn.src, client)?;
    nat::rewrite(ctx, packet, conn, what)?;
    Ok(client::transmit(ctx, &next_hop))
}

/// The port the real server serves the packet's flow on: its own, or (none given, or
/// a port-0 service) the one the client asked for.
#[inline(always)]
fn real_port(packet: &Packet, real: &RealServer) -> [u8; 2] {
    if real.port == [0; 2] { packet.flow.dst_port } else { real.port }
}

/// The frame's 802.1Q tag control, if it has one: a frame the data path builds from it
/// keeps it.
#[inline(always)]
fn vlan_tci(ctx: &XdpContext, packet: &Packet) -> Option<[u8; 2]> {
    if packet.l3 == EthHdr::LEN {
        return None;
    }
    // SAFETY: `header` checked the two bytes are within the frame.
    header::<[u8; 2]>(ctx, EthHdr::LEN).map(|tci| unsafe { *tci })
}

/// Sends the frame to the next hop towards `real`: from the director's interface that
/// reaches it, back out the way it came (`XDP_TX`) or through another attached
/// interface.
#[inline(always)]
fn transmit(ctx: &XdpContext, real: &RealServer) -> u32 {
    to_next_hop(ctx, real.mac, real.director_mac, real.ifindex)
}

#[inline(always)]
fn to_next_hop(ctx: &XdpContext, next_hop: [u8; 6], director: [u8; 6], ifindex: u32) -> u32 {
    if let Some(eth) = header::<EthHdr>(ctx, 0) {
        let eth = eth.cast_mut();
        // SAFETY: `header` checked the Ethernet header is within the frame.
        unsafe {
            (*eth).dst_addr = next_hop;
            (*eth).src_addr = director;
        }
    }
    next_hop_action(ctx, ifindex)
}

/// Sends the frame out of `ifindex`: back out the way it came (`XDP_TX`) or through
/// another attached interface.
#[inline(always)]
fn next_hop_action(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex as usize == ctx.ingress_ifindex() {
        return XDP_TX;
    }
    // SAFETY: a helper taking plain integers. With no flags it cannot fail: it answers
    // XDP_REDIRECT.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

/// For a packet of a known flow: whether the frame is addressed to the director's device
/// facing the real server, which on a one-armed director is the one it came by (a
/// comparison, no lookup). Behind another interface, the check made when the flow
/// opened stands.
#[inline(always)]
fn addressed_to_director(ctx: &XdpContext, real: &RealServer) -> bool {
    if real.ifindex as usize != ctx.ingress_ifindex() {
        return true;
    }
    // SAFETY: `header` checked the Ethernet header is within the frame.
    header::<EthHdr>(ctx, 0).is_some_and(|eth| unsafe { (*eth).dst_addr } == real.director_mac)
}
