//! Is the packet for a virtual service of this director? (VIP, protocol, port), then
//! the VIP's all-ports service; and the frame addressed to the receiving interface.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    conn::FlowKey,
    interface::InterfaceKey,
    service::{Service, ServiceKey},
    stats::Reason,
};
use network_types::eth::EthHdr;

use crate::{
    header::header,
    maps::{INTERFACE_SLOTS, INTERFACES, SERVICES},
    parse::Packet,
};

/// The service of a flow the director does not know yet: the map's value, valid for
/// this run (a replaced value is freed only after every run that may read it).
#[inline(always)]
pub fn lookup(ctx: &XdpContext, packet: &Packet) -> Result<&'static Service, Reason> {
    let service = by_address(&packet.flow)?;
    // Checked before a new connection is scheduled, so a frame flooded to us (or seen
    // by a backup director) neither takes a scheduling turn nor opens a connection;
    // a known flow's frames are checked when forwarded.
    if !addressed_to_director(ctx, packet.vlan) {
        return Err(Reason::OtherHost);
    }
    Ok(service)
}

#[inline(always)]
fn by_address(flow: &FlowKey) -> Result<&'static Service, Reason> {
    let mut key = ServiceKey { vip: flow.dst, port: flow.dst_port, protocol: flow.protocol, family: flow.family };
    // SAFETY: a map value, valid for the whole run (RCU) and never written by the data
    // path.
    if let Some(service) = SERVICES.get_ptr(key) {
        return Ok(unsafe { &*service });
    }
    key.port = [0; 2];
    // SAFETY: as above.
    SERVICES.get_ptr(key).map(|service| unsafe { &*service }).ok_or(Reason::NotAService)
}

/// Whether the frame's destination MAC is the director's device on the link it came
/// by (the receiving interface, or the VLAN over it): a VLAN the director has no
/// device on is not the director's either.
#[inline(always)]
pub fn addressed_to_director(ctx: &XdpContext, vlan: u16) -> bool {
    let Some(eth) = header::<EthHdr>(ctx, 0) else { return false };
    let destination = unsafe { (*eth).dst_addr };
    let key = InterfaceKey { ifindex: ctx.ingress_ifindex() as u32, vlan, _pad: [0; 2] };
    is_device_mac(&key, destination)
}

/// Whether `mac` is the director's device `key`'s: as its slot says, or `INTERFACES`
/// when another device holds the slot.
#[inline(always)]
fn is_device_mac(key: &InterfaceKey, mac: [u8; 6]) -> bool {
    if let Some(slot) = INTERFACE_SLOTS.get(key.slot())
        && slot.key.ifindex == key.ifindex
        && slot.key.vlan == key.vlan
    {
        return slot.interface.mac == mac;
    }
    // SAFETY: a map value, valid for the whole run (RCU).
    INTERFACES.get_ptr(key).is_some_and(|interface| unsafe { (*interface).mac } == mac)
}
