//! Sending a packet on: a client's packet to its real server by the connection's
//! forwarding method, and (NAT, Full-NAT) a real server's reply back to its client.

mod client;
mod fnat;
mod nat;
pub mod toa;

use aya_ebpf::{bindings::xdp_action::XDP_TX, helpers::bpf_redirect, programs::XdpContext};
use lb_common::{
    conn::{Conn, FlowKey},
    real::{Forwarding, RealServer},
    service::Service,
    stats::Reason,
};
use network_types::eth::EthHdr;

use crate::{conn, header::header, maps::REALS, parse::Packet};

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
/// (a NAT or Full-NAT packet never leaves without the entry its reply needs); `conn`
/// becomes the client direction's entry, `reply` the reply direction's.
#[inline(always)]
pub fn open(
    packet: &Packet,
    service: &Service,
    id: u32,
    real: &RealServer,
    conn: &mut Conn,
    reply: &mut Conn,
) -> Result<(), Reason> {
    *conn = conn::plain(id, service.index, real.forwarding);
    match Forwarding::from_u8(real.forwarding) {
        Some(Forwarding::Dr) => {}
        Some(Forwarding::Nat) => nat::open(packet, real, conn, reply)?,
        Some(Forwarding::Fnat) => fnat::open(packet, service, real, conn, reply)?,
        Some(Forwarding::Tun) | None => return Err(Reason::UnsupportedForwarding),
    }
    if let Err(reason) = conn::insert(&packet.flow, conn, false) {
        if conn.forwarding != Forwarding::Dr as u8 {
            conn::remove(&reply_key(packet, conn));
        }
        return Err(reason);
    }
    Ok(())
}

/// A client's packet to its real server, as its connection says.
#[inline(always)]
pub fn to_real(ctx: &XdpContext, packet: &Packet, conn: &Conn, real: &RealServer) -> Result<u32, Reason> {
    match Forwarding::from_u8(conn.forwarding) {
        // Direct routing: the real server has the VIP on a loopback and answers the
        // client itself, so only the Ethernet addresses change.
        Some(Forwarding::Dr) => Ok(transmit(ctx, real)),
        Some(Forwarding::Nat) => nat::to_real(ctx, packet, conn, real),
        Some(Forwarding::Fnat) => fnat::to_real(ctx, packet, conn, real),
        Some(Forwarding::Tun) | None => Err(Reason::UnsupportedForwarding),
    }
}

/// A real server's reply, back to the client with the VIP as its source.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, packet: &Packet, conn: &Conn) -> Result<u32, Reason> {
    match Forwarding::from_u8(conn.forwarding) {
        Some(Forwarding::Nat) => nat::to_client(ctx, packet, conn),
        Some(Forwarding::Fnat) => fnat::to_client(ctx, packet, conn),
        _ => Err(Reason::UnsupportedForwarding),
    }
}

/// The port the real server serves the packet's flow on: its own, or (none given, or
/// a port-0 service) the one the client asked for.
#[inline(always)]
fn real_port(packet: &Packet, real: &RealServer) -> [u8; 2] {
    if real.port == [0; 2] { packet.flow.dst_port } else { real.port }
}

/// The key of the replies of a NAT or Full-NAT connection: from the real server to
/// where the client's packets leave from (the client itself for NAT, the local address
/// for Full-NAT).
#[inline(always)]
fn reply_key(packet: &Packet, conn: &Conn) -> FlowKey {
    let fnat = conn.forwarding == Forwarding::Fnat as u8;
    FlowKey {
        src: conn.dst,
        dst: if fnat { conn.src } else { packet.flow.src },
        src_port: conn.dst_port,
        dst_port: if fnat { conn.src_port } else { packet.flow.src_port },
        protocol: packet.flow.protocol,
        family: packet.flow.family,
        _pad: [0; 2],
    }
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
