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

/// `N` 32-bit words of the frame at `ptr`, in the frame's byte order: one load each.
/// The verifier allows unaligned loads from a frame (on architectures with efficient
/// unaligned access, such as x86-64 and arm64, and without `BPF_F_STRICT_ALIGNMENT`),
/// but LLVM does not know it and
/// reads what it cannot prove aligned (an address after the 14-byte Ethernet header) a
/// byte at a time, holding all of an IPv6 address's bytes in registers and on the
/// stack before storing them; so these loads are written out.
///
/// # Safety
/// `ptr` must point into the frame with `4 * N` bytes after it (as `header` checks).
#[inline(always)]
pub unsafe fn load_words<const N: usize>(ptr: *const u8) -> [u32; N] {
    let mut words = [0; N];
    for (i, word) in words.iter_mut().enumerate() {
        let value: u64;
        // SAFETY: within the frame, as the caller promised.
        unsafe {
            core::arch::asm!(
                "{value} = *(u32 *)({ptr} + 0)",
                ptr = in(reg) ptr.add(4 * i),
                value = lateout(reg) value,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        *word = value as u32;
    }
    words
}

/// An IPv4 address of the frame at `ptr`.
///
/// # Safety
/// As for [`load_words`].
#[inline(always)]
pub unsafe fn load_ipv4(ptr: *const [u8; 4]) -> [u8; 4] {
    // SAFETY: as the caller promised.
    let [word] = unsafe { load_words(ptr.cast()) };
    word.to_ne_bytes()
}

/// An IPv6 address of the frame at `ptr`.
///
/// # Safety
/// As for [`load_words`].
#[inline(always)]
pub unsafe fn load_ipv6(ptr: *const [u8; 16]) -> [u8; 16] {
    // SAFETY: as the caller promised; four words are sixteen bytes, in the same order.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(load_words(ptr.cast())) }
}

/// Writes `words` (in the frame's byte order) to the frame at `ptr`: one store each,
/// for the reason [`load_words`] gives.
///
/// # Safety
/// `ptr` must point into the frame with `4 * N` writable bytes after it.
#[inline(always)]
pub unsafe fn store_words<const N: usize>(ptr: *mut u8, words: [u32; N]) {
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: within the frame, as the caller promised.
        unsafe {
            core::arch::asm!(
                "*(u32 *)({ptr} + 0) = {value}",
                ptr = in(reg) ptr.add(4 * i),
                value = in(reg) u64::from(word),
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Writes an IPv4 address (the first four of the maps' 16 bytes) to the frame at `ptr`.
///
/// # Safety
/// As for [`store_words`].
#[inline(always)]
pub unsafe fn store_ipv4(ptr: *mut [u8; 4], address: &[u8; 16]) {
    let word = u32::from_ne_bytes([address[0], address[1], address[2], address[3]]);
    // SAFETY: as the caller promised.
    unsafe { store_words(ptr.cast(), [word]) }
}

/// Writes an IPv6 address to the frame at `ptr`.
///
/// # Safety
/// As for [`store_words`].
#[inline(always)]
pub unsafe fn store_ipv6(ptr: *mut [u8; 16], address: &[u8; 16]) {
    // SAFETY: as the caller promised; sixteen bytes are four words, in the same order.
    unsafe { store_words(ptr.cast(), core::mem::transmute::<[u8; 16], [u32; 4]>(*address)) }
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
