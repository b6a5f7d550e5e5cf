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

use core::ptr::read_volatile;

use crate::{
    header::header,
    maps::{INTERFACE_SLOTS, INTERFACES, SERVICE_COPY, SERVICE_SLOTS, SERVICES},
    parse::Packet,
};

/// The service of a flow the director does not know yet: this CPU's copy of it, valid
/// for this run.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, packet: &Packet) -> Result<&'static Service, Reason> {
    let service = by_address(&packet.flow).ok_or(Reason::NotAService)?;
    // Checked before a new connection is scheduled, so a frame flooded to us (or seen
    // by a backup director) neither takes a scheduling turn nor opens a connection;
    // a known flow's frames are checked when forwarded.
    if !addressed_to_director(ctx, packet.vlan) {
        return Err(Reason::OtherHost);
    }
    Ok(service)
}

/// The service of the flow's VIP, protocol and port, else its all-ports one, copied
/// into `SERVICE_COPY`: from its slot, or from `SERVICES`. One copy, whichever way it
/// came, so that the verifier walks what follows once. A function of its own: its
/// keys have a frame of their own.
#[inline(never)]
fn by_address(flow: &FlowKey) -> Option<&'static Service> {
    let copy = SERVICE_COPY.get_ptr_mut(0)?;
    let mut key = ServiceKey { vip: flow.dst, port: flow.dst_port, protocol: flow.protocol, family: flow.family };
    for port in [flow.dst_port, [0; 2]] {
        key.port = port;
        // SAFETY: this CPU's copy, valid for the run.
        if in_slot(&key, copy) || in_map(&key, copy) {
            return Some(unsafe { &*copy });
        }
    }
    None
}

/// Copies the service `key` from its slot of `SERVICE_SLOTS` into `copy`, if the slot
/// holds it and was not being written meanwhile (`ServiceSlot`'s sequence lock).
#[inline(always)]
fn in_slot(key: &ServiceKey, copy: *mut Service) -> bool {
    let Some(slot) = SERVICE_SLOTS.get_ptr(key.slot()) else { return false };
    // SAFETY: a map value, valid for the whole run; written by the agent in place, so
    // every field is read once, by value, between the two reads of `seq` (x86 keeps
    // loads in order). `copy` is this CPU's.
    unsafe {
        let seq = read_volatile(&raw const (*slot).seq);
        if seq & 1 != 0 || !same_key(&raw const (*slot).key, key) {
            return false;
        }
        *copy = read_volatile(&raw const (*slot).service);
        read_volatile(&raw const (*slot).seq) == seq
    }
}

/// Copies the service `key` from `SERVICES` into `copy`, if there.
#[inline(always)]
fn in_map(key: &ServiceKey, copy: *mut Service) -> bool {
    // SAFETY: a map value, valid for the whole run (RCU) and never written by the data
    // path; `copy` is this CPU's.
    SERVICES.get_ptr(key).map(|service| unsafe { *copy = *service }).is_some()
}

/// Whether the key at `held`, read word by word, is `key`.
///
/// # Safety
/// `held` points into a map value.
#[inline(always)]
unsafe fn same_key(held: *const ServiceKey, key: &ServiceKey) -> bool {
    let held = held.cast::<u32>();
    let mut differ = 0;
    for (i, word) in key.words().iter().enumerate() {
        // SAFETY: a key of five words.
        differ |= unsafe { read_volatile(held.add(i)) } ^ word;
    }
    differ == 0
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
