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
