//! Internet checksums (RFC 1071).

use aya_ebpf::programs::XdpContext;

use crate::header::header;

/// Whether the IPv4 header of `len` bytes at `offset` sums to all ones, as a header
/// that arrived intact does.
#[inline(always)]
pub fn ipv4_header_intact(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    let mut sum: u32 = 0;
    let mut at = 0;
    // At most 15 32-bit words (IHL 15).
    for _ in 0..15 {
        if at >= len {
            break;
        }
        let Some(word) = header::<[u8; 4]>(ctx, offset + at) else { return false };
        let word = unsafe { *word };
        sum += u32::from(u16::from_be_bytes([word[0], word[1]])) + u32::from(u16::from_be_bytes([word[2], word[3]]));
        at += 4;
    }
    fold(sum) == 0xffff
}

/// The 32-bit one's complement sum folded to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
