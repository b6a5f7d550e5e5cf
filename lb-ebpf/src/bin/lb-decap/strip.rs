//! The outer header out: `bpf_xdp_adjust_head` drops it, and the link-layer header is
//! written again in front of the inner packet (the same addresses and VLAN tag, the
//! inner family's ether type). The inner packet's bytes are not touched.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::decap::Refusal;
use network_types::eth::EthHdr;

use crate::{
    header::{header, write_link},
    tunnel::Tunnel,
};

#[inline(always)]
pub fn outer_header(ctx: &XdpContext, tunnel: &Tunnel, ether_type: u16) -> Result<(), Refusal> {
    // Read before the move: afterwards these bytes are the outer header's.
    let eth: *const EthHdr = header(ctx, 0).ok_or(Refusal::MalformedOuter)?;
    // SAFETY: `header` checked that the frame holds the whole Ethernet header.
    let (dst_addr, src_addr) = unsafe { ((*eth).dst_addr, (*eth).src_addr) };
    // SAFETY: `ctx.ctx` is this run's own `xdp_md`. The helper checks the delta and
    // leaves the frame as it was when it fails; it fails only if less than an Ethernet
    // header would remain, which the inner header's checks rule out.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, i32::from(tunnel.outer_len)) } != 0 {
        return Err(Refusal::TruncatedInner);
    }
    // From here on a failure drops the frame: it is no longer the one that came.
    write_link(ctx, dst_addr, src_addr, tunnel.vlan_tci, ether_type).ok_or(Refusal::TruncatedInner)
}
