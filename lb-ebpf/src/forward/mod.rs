//! Sending a packet on to its real server, by the real server's forwarding method.

mod dr;

use crate::{maps::REALS, parse::Packet};
use aya_ebpf::programs::XdpContext;
use lb_common::{
    real::{Forwarding, RealServer},
    stats::Reason,
};

#[inline(always)]
pub fn to_real(ctx: &XdpContext, packet: &Packet, real: u32) -> Result<u32, Reason> {
    let real: &RealServer = REALS.get(real).ok_or(Reason::RealUnresolved)?;
    if real.ifindex == 0 {
        return Err(Reason::RealUnresolved);
    }
    if packet.vlan != real.vlan {
        return Err(Reason::VlanMismatch);
    }
    match Forwarding::from_u8(real.forwarding) {
        Some(Forwarding::Dr) => dr::forward(ctx, real),
        None => Err(Reason::UnsupportedForwarding),
    }
}
