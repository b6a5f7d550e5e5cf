//! `lb_ingress`: the director's XDP program on its client-facing interfaces.
//!
//! A packet's journey, one module a step: `parse` → `conn` (a known flow) or `service`
//! and `sched` (a new one) → `forward` → `stats`. Anything that is not for a virtual
//! service goes on to the kernel untouched, so the director stays a normal host.
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
use lb_common::stats::Reason;

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
    let conn = match conn::lookup(&packet.flow) {
        Some(known) => known,
        None => {
            let service = service::lookup(ctx, &packet)?;
            sched::new_connection(ctx, &packet, &service)?
        }
    };
    let action = forward::to_real(ctx, &packet, conn.real)?;
    if conn.new {
        conn::remember(&packet.flow, &conn);
    }
    stats::count_forwarded(&conn, packet.ip_len);
    Ok(action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
