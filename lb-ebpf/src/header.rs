//! Bounds-checked access to the frame's bytes: the only way the programs read a header.
//! Shared by `lb_ingress` and `lb_decap`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// A header of type `T` at `offset`, if the frame holds all of it.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *const T)
}

/// The frame's length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Writes the link-layer header: the MACs, one 802.1Q tag when `vlan_tci` is given,
/// and `ether_type` (network order, as `EtherType` holds it). `None` if the frame is
/// too short to hold it.
#[inline(always)]
pub fn write_link(
    ctx: &XdpContext,
    dst_addr: [u8; 6],
    src_addr: [u8; 6],
    vlan_tci: Option<[u8; 2]>,
    ether_type: u16,
) -> Option<()> {
    use network_types::{
        eth::{EthHdr, EtherType},
        vlan::VlanHdr,
    };
    let eth = header::<EthHdr>(ctx, 0)?.cast_mut();
    match vlan_tci {
        None => {
            // SAFETY: `header` checked that the frame holds the whole Ethernet header.
            unsafe { *eth = EthHdr { dst_addr, src_addr, ether_type } };
        }
        Some(tci) => {
            let tag = header::<VlanHdr>(ctx, EthHdr::LEN)?.cast_mut();
            // SAFETY: `header` checked that the frame holds both headers.
            unsafe {
                *eth = EthHdr { dst_addr, src_addr, ether_type: EtherType::Ieee8021q as u16 };
                *tag = VlanHdr { tci, ether_type };
            }
        }
    }
    Some(())
}
