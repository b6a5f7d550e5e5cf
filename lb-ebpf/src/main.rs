//! `lb_ingress`: the director's XDP program on its client-facing interfaces.
//!
//! A packet's journey, one module a step: `parse` → `conn` (a known flow, or a NAT
//! reply) or `service` and `sched` (a new one) → `forward` → `stats`. Anything that is
//! not for a virtual service goes on to the kernel untouched, so the director stays a
//! normal host.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod conn;
mod csum;
mod forward;
mod header;
mod maps;
mod parse;
mod sched;
mod service;
mod stats;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{conn::Conn, stats::Reason};

#[xdp]
pub fn lb_ingress(ctx: XdpContext) -> u32 {
    match ingress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::count_reason(reason);
            if reason.is_pass() { XDP_PASS } else { XDP_DROP }
        }
    }
}

#[inline(always)]
fn ingress(ctx: &XdpContext) -> Result<u32, Reason> {
    let packet = parse::packet(ctx)?;
    // Connections first, as IPVS does: an established flow needs no service lookup
    // and outlives its service's removal.
    if let Some(conn) = conn::lookup(&packet.flow) {
        return if conn.is_reply() { reply(ctx, &packet, conn) } else { established(ctx, &packet, conn) };
    }
    new_flow(ctx, &packet)
}

// The three paths are functions of their own (BPF-to-BPF calls), each with its own
// stack frame: inlined into one, their locals would not fit the 512 bytes of stack.

/// The first packet of a flow the director does not know.
#[inline(never)]
fn new_flow(ctx: &XdpContext, packet: &parse::Packet) -> Result<u32, Reason> {
    let service = service::lookup(ctx, packet)?;
    let id = sched::new_connection(ctx, packet, &service)?;
    let real = forward::reachable(ctx, packet, id)?;
    let opening = maps::OPENING.get_ptr_mut(0).ok_or(Reason::ConnInsertFailed)?;
    // SAFETY: a per-CPU value, used by this CPU's packet only, for this call.
    let maps::Opening { conn, reply } = unsafe { &mut *opening };
    forward::open(packet, &service, id, real, conn, reply)?;
    let action = forward::to_real(ctx, packet, conn, real)?;
    stats::count_request(conn, packet.ip_len, true);
    Ok(action)
}

/// A client's packet of a known connection.
#[inline(never)]
fn established(ctx: &XdpContext, packet: &parse::Packet, conn: &mut Conn) -> Result<u32, Reason> {
    let real = forward::reachable(ctx, packet, conn.real)?;
    let action = forward::to_real(ctx, packet, conn, real)?;
    // Only a packet that was forwarded keeps its connection alive.
    conn::touch(conn, packet);
    stats::count_request(conn, packet.ip_len, false);
    // Not in `to_real`, which the new-flow path shares: the option never goes into a SYN.
    Ok(forward::toa::after_forward(ctx, packet, conn, real, action))
}

/// A real server's reply through the director (NAT, Full-NAT).
#[inline(never)]
fn reply(ctx: &XdpContext, packet: &parse::Packet, conn: &mut Conn) -> Result<u32, Reason> {
    if !service::addressed_to_director(ctx, packet.vlan) {
        return Err(Reason::OtherHost);
    }
    let action = forward::to_client(ctx, packet, conn)?;
    forward::toa::after_reply(ctx, packet, conn);
    conn::touch(conn, packet);
    stats::count_reply(conn, packet.ip_len);
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
