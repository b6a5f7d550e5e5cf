//! Internet checksums: verifying an IPv4 header (RFC 1071), and updating a checksum
//! for rewritten bytes without summing the packet again (RFC 1624).

use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};

use crate::header::{header, load_words};

/// Whether the IPv4 header of `len` bytes at `offset` sums to all ones, as a header
/// that arrived intact does. Summed a 32-bit word at a time in the machine's order
/// (a one's complement sum is the same in either order, RFC 1071): the 20 bytes
/// every header has at once, then any options a word at a time.
#[inline(always)]
pub fn ipv4_header_intact(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    let Some(fixed) = header::<[u8; 20]>(ctx, offset) else { return false };
    // SAFETY: `header` checked the 20 bytes are within the frame.
    let words: [u32; 5] = unsafe { load_words(fixed.cast()) };
    let mut sum: u64 = words.iter().map(|&word| u64::from(word)).sum();
    let mut at = 20;
    // At most 10 words of options (IHL 15).
    for _ in 0..10 {
        if at >= len {
            break;
        }
        let Some(word) = header::<[u8; 4]>(ctx, offset + at) else { return false };
        // SAFETY: `header` checked the four bytes are within the frame.
        let [word] = unsafe { load_words(word.cast()) };
        sum += u64::from(word);
        at += 4;
    }
    fold64(sum) == 0xffff
}

/// A one's complement sum of 32-bit words folded to 16 bits.
#[inline(always)]
fn fold64(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(sum as u32)
}

/// The change that replacing bytes makes to a one's complement sum: the sum of the
/// old words complemented and of the new ones (RFC 1624, eqn. 3's `~m + m'`).
///
/// Kept in the machine's byte order, as `bpf_csum_diff` sums: a one's complement sum is
/// the same in either order (RFC 1071), so the checksum field is read and written in
/// that order too.
#[derive(Clone, Copy, Default)]
pub struct Delta(u32);

impl Delta {
    /// A change worked out before (kept in a connection's entry).
    #[inline(always)]
    pub fn from_bits(bits: u16) -> Self {
        Self(u32::from(bits))
    }

    /// The change of replacing the `N` bytes `old` by `new` (`N` even, the bytes at an
    /// even offset of the summed data), summed here rather than by `bpf_csum_diff`, for
    /// bytes that are not in the frame.
    #[inline(always)]
    pub fn replace_bytes<const N: usize>(self, old: &[u8; N], new: &[u8; N]) -> Self {
        let mut sum = self.0;
        for i in (0..N).step_by(2) {
            sum += u32::from(!u16::from_ne_bytes([old[i], old[i + 1]]))
                + u32::from(u16::from_ne_bytes([new[i], new[i + 1]]));
        }
        Self(u32::from(fold(sum)))
    }

    /// The change of replacing the `N` bytes at `old` (in the frame) by `new`, which
    /// must not overlap them. `N` is a multiple of 4.
    #[inline(always)]
    pub fn diff<const N: usize>(self, old: *const [u8; N], new: *const [u8; N]) -> Self {
        // SAFETY: both point at `N` readable bytes (the frame, checked by the caller,
        // and a map value or the stack), which the helper only reads.
        let sum = unsafe { bpf_csum_diff(old.cast_mut().cast(), N as u32, new.cast_mut().cast(), N as u32, self.0) };
        Self(u32::from(fold(sum as u32)))
    }

    /// The change of adding the `N` bytes at `new` where there were none: `N` a multiple
    /// of 4, and the bytes at an even offset of the summed data.
    #[inline(always)]
    pub fn add<const N: usize>(self, new: *const [u8; N]) -> Self {
        // SAFETY: `new` points at `N` readable bytes, which the helper only reads; no
        // bytes are taken away.
        let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, new.cast_mut().cast(), N as u32, self.0) };
        Self(u32::from(fold(sum as u32)))
    }

    /// The change of taking away the `N` bytes at `old` (`N` a multiple of 4, the bytes at
    /// an even offset of the summed data).
    #[inline(always)]
    pub fn remove<const N: usize>(self, old: *const [u8; N]) -> Self {
        // SAFETY: `old` points at `N` readable bytes, which the helper only reads; no
        // bytes are added.
        let sum = unsafe { bpf_csum_diff(old.cast_mut().cast(), N as u32, core::ptr::null_mut(), 0, self.0) };
        Self(u32::from(fold(sum as u32)))
    }

    /// The change of replacing two bytes that form one 16-bit word of the summed data.
    #[inline(always)]
    pub fn replace(self, old: [u8; 2], new: [u8; 2]) -> Self {
        self.replace_bytes(&old, &new)
    }

    /// This change, of bytes summed as if they started a 16-bit word, for where they are:
    /// at offset `at` of the summed data. At an odd offset every byte is in the other
    /// half of its word, which swaps the halves of the sum (RFC 1071).
    #[inline(always)]
    pub fn at(self, at: usize) -> Self {
        if at.is_multiple_of(2) { self } else { Self(u32::from((self.0 as u16).swap_bytes())) }
    }

    #[inline(always)]
    pub fn and(self, other: Self) -> Self {
        Self(u32::from(fold(self.0 + other.0)))
    }

    /// The checksum field `check` updated by this change: `HC' = ~(~HC + ~m + m')`.
    #[inline(always)]
    pub fn apply(self, check: [u8; 2]) -> [u8; 2] {
        let sum = u32::from(!u16::from_ne_bytes(check)) + self.0;
        (!fold(sum)).to_ne_bytes()
    }
}

/// A checksum computed from scratch (RFC 1071) over byte runs whose lengths are
/// multiples of 4, in the machine's byte order as [`Delta`] is.
#[derive(Clone, Copy, Default)]
pub struct Sum(u32);

impl Sum {
    /// The sum with the `N` bytes at `bytes` (the frame, checked by the caller, or the
    /// stack) added.
    #[inline(always)]
    pub fn of<const N: usize>(self, bytes: *const [u8; N]) -> Self {
        // SAFETY: `bytes` points at `N` readable bytes, which the helper only reads.
        let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, bytes.cast_mut().cast(), N as u32, self.0) };
        Self(u32::from(fold(sum as u32)))
    }

    /// The checksum field for these bytes.
    #[inline(always)]
    pub fn checksum(self) -> [u8; 2] {
        (!fold(self.0)).to_ne_bytes()
    }
}

/// The header checksum of an IPv4 header without options whose `check` is zero.
#[inline(always)]
pub fn ipv4_header(ip: &network_types::ip::Ipv4Hdr) -> [u8; 2] {
    Sum::default().of((ip as *const network_types::ip::Ipv4Hdr).cast::<[u8; 20]>()).checksum()
}

/// The checksum field (network order) for a sum of big-endian 16-bit words.
#[inline(always)]
pub fn finish(sum: u32) -> [u8; 2] {
    (!fold(sum)).to_be_bytes()
}

/// The 32-bit one's complement sum folded to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
