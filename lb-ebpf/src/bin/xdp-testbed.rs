//! Programs for the test bed, not for directors.
//!
//! `xdp_baseline` is the benchmark's yardstick: the least an XDP forwarder does (parse
//! Ethernet and IP, swap the MAC addresses, `XDP_TX`), measured beside `lb_ingress` in
//! the same run. `xdp_pass` lets a veth receive what its peer sends with `XDP_TX`: the
//! kernel delivers such frames only to a veth that has an XDP program of its own.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

#[xdp]
pub fn xdp_baseline(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN > end {
        return XDP_PASS;
    }
    let eth = start as *mut EthHdr;
    let ether_type = unsafe { (*eth).ether_type };
    let ip_len = if ether_type == EtherType::Ipv4 as u16 {
        size_of::<Ipv4Hdr>()
    } else if ether_type == EtherType::Ipv6 as u16 {
        size_of::<Ipv6Hdr>()
    } else {
        return XDP_PASS;
    };
    if start + EthHdr::LEN + ip_len > end {
        return XDP_PASS;
    }
    unsafe { core::mem::swap(&mut (*eth).dst_addr, &mut (*eth).src_addr) };
    XDP_TX
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
