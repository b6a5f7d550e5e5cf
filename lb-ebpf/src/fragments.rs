//! Fragments of a datagram take the way of its first one. Only the first carries the
//! transport header, so when the first is forwarded its ports are remembered, by the
//! datagram's addresses, protocol and identification; a later fragment takes them and
//! then the same connection (and, for NAT and Full-NAT, the same address rewrite). A
//! later fragment whose first was not seen (reordered, or not the director's) goes to
//! the kernel, never to a real server chosen without its ports.

use lb_common::{
    conn::FlowKey,
    fragment::{FRAGMENT_TIMEOUT, FirstFragment, FragmentKey},
    stats::Reason,
};

use crate::{conn, maps::FRAGMENTS, parse::Packet};

/// Remembers a forwarded first fragment's ports. (Functions of their own, so the key
/// is not on the stack beside a new flow's.)
#[inline(never)]
pub fn remember(packet: &Packet) {
    let first = FirstFragment { src_port: packet.flow.src_port, dst_port: packet.flow.dst_port, seen: conn::now() };
    let _ = FRAGMENTS.insert(key(packet), first, 0);
}

/// Gives a later fragment its first one's ports.
#[inline(never)]
pub fn take_ports(packet: &mut Packet) -> Result<(), Reason> {
    // SAFETY: a map value, valid for the whole run, only read here.
    let first = unsafe { FRAGMENTS.get(key(packet)) }.ok_or(Reason::Fragment)?;
    if conn::now().wrapping_sub(first.seen) > FRAGMENT_TIMEOUT {
        return Err(Reason::Fragment);
    }
    packet.flow.src_port = first.src_port;
    packet.flow.dst_port = first.dst_port;
    Ok(())
}

#[inline(always)]
fn key(packet: &Packet) -> FragmentKey {
    let FlowKey { src, dst, protocol, family, .. } = packet.flow;
    FragmentKey { src, dst, id: packet.fragment_id, protocol, family, _pad: [0; 2] }
}
