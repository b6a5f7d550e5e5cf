//! `lb_ingress`: the director's XDP program on its client-facing interfaces.
//!
//! A packet's journey, one module a step: `parse` → `service` → `conn` (→ `sched` for a
//! new flow) → `forward` → `stats`. Anything that is not for a virtual service goes on
//! to the kernel untouched, so the director stays a normal host.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod conn;
mod forward;
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
    let service = service::lookup(&packet.flow)?;
    let conn = conn::lookup_or_schedule(ctx, &packet.flow, &service)?;
    let action = forward::to_real(ctx, conn.real)?;
    stats::count_forwarded(&service, &conn, packet.ip_len);
    Ok(action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
