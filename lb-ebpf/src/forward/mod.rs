//! Sending a packet on to its real server, by the real server's forwarding method.

mod dr;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    real::{Forwarding, RealServer},
    stats::Reason,
};
use network_types::eth::EthHdr;

use crate::{header::header, maps::REALS, parse::Packet};

#[inline(always)]
pub fn to_real(ctx: &XdpContext, packet: &Packet, real: u32) -> Result<u32, Reason> {
    let real: &RealServer = REALS.get(real).ok_or(Reason::RealUnresolved)?;
    if real.ifindex == 0 {
        return Err(Reason::RealUnresolved);
    }
    if packet.vlan != real.vlan {
        return Err(Reason::VlanMismatch);
    }
    if !addressed_to_director(ctx, real) {
        return Err(Reason::OtherHost);
    }
    match Forwarding::from_u8(real.forwarding) {
        Some(Forwarding::Dr) => dr::forward(ctx, real),
        None => Err(Reason::UnsupportedForwarding),
    }
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
    header::<EthHdr>(ctx, 0).is_some_and(|eth| unsafe { (*eth).dst_addr } == real.director_mac)
}
