//! `lb_ingress`: the director's XDP program on its client-facing interfaces.
//!
//! A packet's journey, one module a step: `parse` → `conn` (a known flow, or a NAT
//! reply) or `service` and `sched` (a new one) → `forward` → `stats`. Anything that is
//! not for a virtual service goes on to the kernel untouched, so the director stays a
//! normal host.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod atomic;
mod conn;
mod csum;
mod forward;
mod fragments;
mod header;
mod locality;
mod maps;
mod parse;
mod persist;
mod sched;
mod service;
mod stats;
mod sync;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    conn::{CONN_EXPIRE_NODEST, Conn},
    real::REAL_REMOVED,
    stats::{Reason, Verdict},
};

#[xdp]
pub fn lb_ingress(ctx: XdpContext) -> u32 {
    match ingress(&ctx) {
        // Full-NAT's TOA: a few segments of a connection are finished by `lb_toa`.
        Ok(action) if forward::toa::pending(action) => forward::toa::finish(&ctx),
        Ok(action) => action,
        Err(reason) => {
            stats::count_reason(reason);
            match reason.verdict() {
                Verdict::Pass => XDP_PASS,
                // A note is never a failed step's reason.
                Verdict::Drop | Verdict::Note => XDP_DROP,
                Verdict::Answer => XDP_TX,
            }
        }
    }
}

#[inline(always)]
fn ingress(ctx: &XdpContext) -> Result<u32, Reason> {
    let mut packet = parse::Packet::empty();
    parse::packet(ctx, &mut packet)?;
    // Decided here, once: nothing on the other paths asks whether a packet is a
    // fragment, so the verifier need not walk them once per kind of packet.
    match packet.fragment {
        parse::LATER_FRAGMENT => return later_fragment(ctx, &mut packet),
        parse::FIRST_FRAGMENT => fragments::remember(&packet),
        _ => {}
    }
    // Connections first, as IPVS does: an established flow needs no service lookup
    // and outlives its service's removal.
    if let Some(conn) = conn::lookup(&packet.flow) {
        match (packet.is_icmp_error(), conn.is_reply()) {
            (false, false) => match established(ctx, &packet, conn) {
                // Ended: the packet starts a new connection if it may.
                Err(Reason::NodestExpired) => stats::count_reason(Reason::NodestExpired),
                verdict => return verdict,
            },
            (false, true) => return reply(ctx, &packet, conn),
            (true, _) => return icmp_error(ctx, &packet, conn),
        }
    }
    if packet.is_icmp_error() {
        return Err(Reason::IcmpNoConnection);
    }
    new_flow(ctx, &packet)
}

// The paths are functions of their own (BPF-to-BPF calls), each with its own
// stack frame: inlined into one, their locals would not fit the 512 bytes of stack.

/// The first packet of a flow the director does not know.
#[inline(never)]
fn new_flow(ctx: &XdpContext, packet: &parse::Packet) -> Result<u32, Reason> {
    let service = service::lookup(ctx, packet)?;
    let id = persist::schedule(packet, service)?;
    let real = forward::reachable(ctx, packet, id)?;
    let opening = maps::OPENING.get_ptr_mut(0).ok_or(Reason::ConnInsertFailed)?;
    // SAFETY: a per-CPU value, used by this CPU's packet only, for this call.
    let opening = unsafe { &mut *opening };
    forward::open(packet, service, id, real, opening)?;
    let conn = &opening.conn;
    let action = forward::to_real(ctx, packet, conn, real, forward::Rewrite::Whole)?;
    stats::count_request(conn, packet.ip_len, true);
    Ok(action)
}

/// A client's packet of a known connection.
#[inline(never)]
fn established(ctx: &XdpContext, packet: &parse::Packet, conn: &mut Conn) -> Result<u32, Reason> {
    let real = forward::reachable(ctx, packet, conn.real)?;
    if conn.flags & CONN_EXPIRE_NODEST != 0 && real.flags & REAL_REMOVED != 0 {
        conn::expire(&packet.flow, conn);
        return Err(Reason::NodestExpired);
    }
    let action = forward::to_real(ctx, packet, conn, real, forward::Rewrite::Whole)?;
    // Only a packet that was forwarded keeps its connection alive.
    conn::touch(conn, packet);
    stats::count_request(conn, packet.ip_len, false);
    // Not in `to_real`, which the new-flow path shares: the option never goes into a SYN.
    Ok(forward::toa::after_forward(packet, conn, real, action))
}

/// A real server's reply through the director (NAT, Full-NAT).
#[inline(never)]
fn reply(ctx: &XdpContext, packet: &parse::Packet, conn: &mut Conn) -> Result<u32, Reason> {
    if !service::addressed_to_director(ctx, packet.vlan) {
        return Err(Reason::OtherHost);
    }
    let action = forward::to_client(ctx, packet, conn, forward::Rewrite::Whole)?;
    forward::toa::after_reply(ctx, packet, conn);
    conn::touch(conn, packet);
    stats::count_reply(conn, packet.ip_len);
    Ok(action)
}

/// An ICMP error about a packet of a known connection: one that went to the client
/// (the real server's, or for NAT and Full-NAT the director's rewritten reply) goes on
/// to the real server; one that the director sent to a real server (NAT, Full-NAT)
/// goes back to the client. Both are translated where the connection was rewritten,
/// so path-MTU discovery and unreachable ports work through every method.
#[inline(never)]
fn icmp_error(ctx: &XdpContext, packet: &parse::Packet, conn: &Conn) -> Result<u32, Reason> {
    if conn.is_reply() {
        if !service::addressed_to_director(ctx, packet.vlan) {
            return Err(Reason::OtherHost);
        }
        let action = forward::icmp::to_client(ctx, packet, conn)?;
        stats::count_reply(conn, packet.ip_len);
        return Ok(action);
    }
    let real = forward::reachable(ctx, packet, conn.real)?;
    let action = forward::icmp::to_real(ctx, packet, conn, real)?;
    stats::count_request(conn, packet.ip_len, false);
    Ok(action)
}

/// A fragment without the transport header, the way its datagram's first fragment
/// went (its ports remembered then); else the kernel's. Only addresses are rewritten:
/// the first fragment's checksum update covers the whole datagram.
#[inline(never)]
fn later_fragment(ctx: &XdpContext, packet: &mut parse::Packet) -> Result<u32, Reason> {
    fragments::take_ports(packet)?;
    let conn = conn::lookup(&packet.flow).ok_or(Reason::Fragment)?;
    if conn.is_reply() {
        if !service::addressed_to_director(ctx, packet.vlan) {
            return Err(Reason::OtherHost);
        }
        let action = forward::to_client(ctx, packet, conn, forward::Rewrite::Addresses)?;
        stats::count_reply(conn, packet.ip_len);
        return Ok(action);
    }
    let real = forward::reachable(ctx, packet, conn.real)?;
    let action = forward::to_real(ctx, packet, conn, real, forward::Rewrite::Addresses)?;
    stats::count_request(conn, packet.ip_len, false);
    Ok(action)
}

/// Full-NAT's TOA, tail-called by `lb_ingress` for the segments that need it
/// (`forward::toa`): a program of its own, so the verifier checks it once.
#[xdp]
pub fn lb_toa(ctx: XdpContext) -> u32 {
    forward::toa::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
