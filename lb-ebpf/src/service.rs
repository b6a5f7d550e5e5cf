//! Is the packet for a virtual service of this director? (VIP, protocol, port), then
//! the VIP's all-ports service; and the frame addressed to the receiving interface.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    conn::FlowKey,
    service::{Service, ServiceKey},
    stats::Reason,
};
use network_types::eth::EthHdr;

use crate::{
    maps::{INTERFACES, SERVICES},
    parse::header,
};

/// The service of a flow the director does not know yet.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, flow: &FlowKey) -> Result<Service, Reason> {
    let service = by_address(flow)?;
    // Checked before a new connection is scheduled, so a frame flooded to us (or seen
    // by a backup director) neither takes a scheduling turn nor opens a connection;
    // a known flow's frames were checked when it opened.
    if !addressed_to_director(ctx) {
        return Err(Reason::OtherHost);
    }
    Ok(service)
}

#[inline(always)]
fn by_address(flow: &FlowKey) -> Result<Service, Reason> {
    let mut key = ServiceKey { vip: flow.dst, port: flow.dst_port, protocol: flow.protocol, family: flow.family };
    if let Some(service) = SERVICES.get_ptr(key) {
        return Ok(unsafe { *service });
    }
    key.port = [0; 2];
    match SERVICES.get_ptr(key) {
        Some(service) => Ok(unsafe { *service }),
        None => Err(Reason::NotAService),
    }
}

/// Whether the frame's destination MAC is the receiving interface's.
#[inline(always)]
fn addressed_to_director(ctx: &XdpContext) -> bool {
    let Some(eth) = header::<EthHdr>(ctx, 0) else { return false };
    let destination = unsafe { (*eth).dst_addr };
    let ingress = ctx.ingress_ifindex() as u32;
    INTERFACES.get_ptr(ingress).is_some_and(|interface| destination == unsafe { (*interface).mac })
}
