//! Direct routing: the real server has the VIP on a loopback and answers the client
//! itself, so only the Ethernet addresses change. IP and L4 bytes stay as they came.

use aya_ebpf::{bindings::xdp_action::XDP_TX, helpers::bpf_redirect, programs::XdpContext};
use lb_common::{real::RealServer, stats::Reason};
use network_types::eth::EthHdr;

use crate::header::header;

#[inline(always)]
pub fn forward(ctx: &XdpContext, real: &RealServer) -> Result<u32, Reason> {
    let eth: *mut EthHdr = header::<EthHdr>(ctx, 0).ok_or(Reason::TruncatedEthernet)?.cast_mut();
    unsafe {
        (*eth).dst_addr = real.mac;
        (*eth).src_addr = real.director_mac;
    }
    if real.ifindex as usize == ctx.ingress_ifindex() {
        return Ok(XDP_TX);
    }
    // With no flags, bpf_redirect cannot fail: it answers XDP_REDIRECT.
    Ok(unsafe { bpf_redirect(real.ifindex, 0) } as u32)
}
