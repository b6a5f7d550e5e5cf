//! `lb_decap`: the XDP program on a real server behind a tunnelling (`tun`) director.
//!
//! A tunnel packet for this host and one of its VIPs loses its outer IP header and goes
//! on to the kernel as if the client's packet had arrived directly (`XDP_PASS`); the
//! real server has the VIPs on its loopback and answers the client itself, as in
//! LVS-DR. A tunnel packet it refuses is dropped and counted by [`Refusal`]. Anything
//! that is not a tunnel packet passes untouched and uncounted, so the host keeps working.
//!
//! The journey: `tunnel::outer` (a tunnel packet, well formed?) → for this host
//! (`DECAP_LOCAL`) → `tunnel::inner` (well formed, within the tunnel's payload?) → for
//! a VIP (`DECAP_VIPS`) → `strip` → `maps::count_*`.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

// Shared with lb_ingress, of which lb_decap needs only the header check and the
// link-layer header, not the rewrite's checksum updates and address copies.
#[path = "../../csum.rs"]
#[allow(dead_code)]
mod csum;
#[path = "../../header.rs"]
#[allow(dead_code)]
mod header;
mod maps;
mod strip;
mod tunnel;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::decap::Refusal;

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    match decapsulate(&ctx) {
        Ok(Some(inner_len)) => {
            maps::count_decapsulated(inner_len);
            XDP_PASS
        }
        Ok(None) => XDP_PASS,
        Err(refusal) => {
            maps::count_refused(refusal);
            XDP_DROP
        }
    }
}

/// Strips a tunnel packet's outer header; answers the inner packet's length, or `None`
/// for a frame that is not a tunnel packet (left as it came).
#[inline(always)]
fn decapsulate(ctx: &XdpContext) -> Result<Option<u32>, Refusal> {
    let Some(tunnel) = tunnel::outer(ctx)? else { return Ok(None) };
    if !maps::is_local(&tunnel.destination) {
        return Err(Refusal::NotLocal);
    }
    let inner = tunnel::inner(ctx, &tunnel)?;
    if !maps::is_vip(&inner.destination) {
        return Err(Refusal::NotAVip);
    }
    strip::outer_header(ctx, &tunnel, inner.ether_type)?;
    Ok(Some(inner.len))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
