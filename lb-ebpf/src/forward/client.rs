//! The way back to a client, for replies the director rewrites (NAT, Full-NAT): clients
//! are anywhere, so the kernel's routing and neighbour tables name the next hop
//! (`bpf_fib_lookup`), as they would for a packet the director forwarded itself.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{FAMILY_IPV4, stats::Reason};

use crate::parse::Packet;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a reply goes next.
pub struct NextHop {
    pub mac: [u8; 6],
    pub director_mac: [u8; 6],
    pub ifindex: u32,
}

/// The next hop for a packet from `src` to `dst` (the addresses it will leave with).
/// The frame must have come untagged: the data path does not re-tag frames. A
/// function of its own, for the stack's sake.
#[inline(never)]
pub fn next_hop(ctx: &XdpContext, packet: &Packet, src: &[u8; 16], dst: &[u8; 16]) -> Result<NextHop, Reason> {
    if packet.vlan != 0 {
        return Err(Reason::VlanMismatch);
    }
    // SAFETY: a plain C struct, for which all zeroes is a valid value.
    let mut params: FibLookup = unsafe { zeroed() };
    params.l4_protocol = packet.flow.protocol;
    params.ifindex = ctx.ingress_ifindex() as u32;
    if packet.flow.family == FAMILY_IPV4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: `params` is a `struct bpf_fib_lookup` of the size given, on our stack.
    let found = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut params, size_of::<FibLookup>() as i32, 0) };
    match found as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            Ok(NextHop { mac: params.dmac, director_mac: params.smac, ifindex: params.ifindex })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Reason::NextHopUnresolved),
        _ => Err(Reason::NoRoute),
    }
}

#[inline(always)]
pub fn transmit(ctx: &XdpContext, next_hop: &NextHop) -> u32 {
    super::to_next_hop(ctx, next_hop.mac, next_hop.director_mac, next_hop.ifindex)
}

#[inline(always)]
fn words(address: &[u8; 16]) -> [u32; 4] {
    let word = |at: usize| u32::from_ne_bytes([address[at], address[at + 1], address[at + 2], address[at + 3]]);
    [word(0), word(4), word(8), word(12)]
}
