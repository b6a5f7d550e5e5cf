//! Full-NAT's TOA ("TCP option address"): a real server sees the director's local
//! address as the source of a Full-NAT connection, so the client's address and port go
//! to it in a TCP option, laid out as LVS's Full-NAT and DPVS send it and as their `toa`
//! kernel module reads it: kind 254, length 8, the client's port and IPv4 address
//! (network order), or length 20 with an IPv6 address.
//!
//! The option goes into the ACK that completes the handshake and the first segment that
//! carries data (the module reads it when the handshake completes; a data segment
//! covers a lost ACK): into each segment until one without data and one with data have
//! had it, never into the SYN. It is put first,
//! right after the fixed header, as DPVS puts it: a reader that takes the first kind 254
//! it finds gets ours, also when the client sent one of its own or ended its options
//! with EOL; and only the headers in front of it move. A TOA option the client sent is
//! overwritten with NOPs in these segments, also when ours does not fit, so a client
//! cannot name an address of its choice.
//!
//! Room: a TCP header holds at most 60 bytes, and the grown packet must fit the MTU
//! towards the real server. So that a client's full-sized segment still fits, the MSS
//! of the real server's SYN-ACK is lowered by the option's length on its way to the
//! client (as DPVS does). A segment that has no room anyway goes on without the option
//! and is counted (`toa_no_room`).
//!
//! The work is done by a program of its own, `lb_toa`, which `lb_ingress` tail-calls
//! for the few segments that need it (as Cilium splits its data path): its loops over
//! the headers and options are then checked by the verifier once, rather than once for
//! every path through `lb_ingress` that reaches them, which would not fit the verifier's
//! budget of a million instructions (`lb_ingress` took over a third of it before TOA).
//! `lb_ingress` leaves what `lb_toa` needs in `TOA_WORK`.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action::XDP_DROP, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    FAMILY_IPV4, TAIL_CALL_TOA,
    conn::{CONN_TOA, CONN_TOA_ACK, CONN_TOA_DONE, Conn},
    real::RealServer,
    stats::Reason,
};
use network_types::{
    eth::EtherType,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    conn,
    csum::Delta,
    header::{header, store_words},
    maps::{TAIL_CALLS, TOA_WORK, ToaWork},
    parse::{Packet, TCP_ACK, TCP_RST, TCP_SYN},
    stats,
};

/// The option's kind: RFC 6994's shared experimental kind, as LVS and DPVS use it.
const KIND: u8 = 254;
/// Its length with an IPv4 address: kind, length, port (2), address (4).
const LEN_IPV4: usize = 8;
/// Its length with an IPv6 address: kind, length, port (2), address (16).
const LEN_IPV6: usize = 20;

/// A TCP header with every option: the data offset's 15 words.
const TCP_MAX_HEADER: usize = 60;
const OPTION_EOL: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;
const OPTION_MSS_LEN: usize = 4;
/// Offset of the data offset byte in the TCP header.
const TCP_DATA_OFFSET: usize = 12;
/// The most bytes that move to open the gap for the option: Ethernet, a VLAN tag, an
/// IPv4 header with every option (the longer of the two families) and the TCP fixed
/// header. They are moved two bytes, then four at a time: the end is always 2 past a
/// multiple of 4 (14 or 18, then headers of whole 32-bit words).
const MAX_MOVED: usize = 14 + 4 + 60 + TcpHdr::LEN;

/// A client's segment of a Full-NAT connection, forwarded as `action`: if it still
/// needs the option (no SYN or RST, of a connection with TOA that has not sent it yet on
/// a segment with data, or, for one without, on one without), its action is marked
/// for `lb_toa` to finish it. Called where the stack is shallow
/// (`established`): never on the new-flow path, as the option never goes into a SYN.
#[inline(always)]
pub fn after_forward(packet: &Packet, conn: &Conn, real: &RealServer, action: u32) -> u32 {
    // Nor into a fragment: its datagram's later fragments would no longer fit it.
    // Whether the segment carries data, and so whether it needs the option when one
    // without data has had it, `lb_toa` tells: here it would cost the verifier a walk
    // of every path twice.
    if !conn.awaits_toa(true) || packet.tcp_flags & (TCP_SYN | TCP_RST) != 0 || packet.fragment != 0 {
        return action;
    }
    let Some(work) = TOA_WORK.get_ptr_mut(0) else { return action };
    // SAFETY: a per-CPU value, used by this CPU's packet only, until `lb_toa` is done
    // with it (a program runs to its end on one CPU, tail calls included).
    unsafe { *work = ToaWork { flow: packet.flow, action, mtu: real.mtu, _pad: [0; 2] } };
    action | PENDING
}

/// Marks the action of a packet that `lb_toa` is to finish (XDP actions are small
/// numbers).
const PENDING: u32 = 1 << 31;

/// Whether `lb_toa` is to finish the packet `action` was answered for.
#[inline(always)]
pub fn pending(action: u32) -> bool {
    action & PENDING != 0
}

/// Tail-calls `lb_toa`, which answers the packet's action. Should the call fail (no
/// program in the slot: never, with the agent's loader), the packet goes on as it is,
/// counted. A BPF function of its own that returns an integer, as one that tail-calls
/// must, called by `lb_ingress` itself: the verifier allows a tail call only with less
/// than 256 bytes of its callers' stack above it.
#[inline(never)]
pub fn finish(ctx: &XdpContext) -> u32 {
    // SAFETY: `lb_toa` is an XDP program taking the same context; on success control
    // does not come back here.
    unsafe { TAIL_CALLS.tail_call(ctx, TAIL_CALL_TOA) };
    stats::count_reason(Reason::ToaNoRoom);
    TOA_WORK.get(0).map_or(XDP_DROP, |work| work.action)
}

/// `lb_toa`: inserts the option as `lb_ingress` asked in `TOA_WORK`, and answers the
/// packet's action; drops the packet only if it could not finish a frame it had begun
/// to change.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(work) = TOA_WORK.get(0) else { return XDP_DROP };
    let work = *work;
    // The connection's entry (gone only if the table evicted it since `lb_ingress`).
    let Some(conn) = conn::lookup(&work.flow) else { return work.action };
    match insert(ctx, &work, conn) {
        Ok(Inserted::Yes { data }) => conn.flags |= if data { CONN_TOA_DONE } else { CONN_TOA_ACK },
        Ok(Inserted::NotNeeded) => {}
        Ok(Inserted::NoRoom) => stats::count_reason(Reason::ToaNoRoom),
        Err(reason) => {
            stats::count_reason(reason);
            return XDP_DROP;
        }
    }
    work.action
}

/// A real server's reply of a Full-NAT connection: the SYN-ACK of a connection with TOA
/// has its MSS lowered by the option's length, so that the client's full-sized
/// segments leave room for it. Only an MSS option that comes first is looked for, as
/// Linux and the BSDs (and Windows) send it: this runs in `lb_ingress`, where a walk
/// over the options would cost the verifier too much.
#[inline(always)]
pub fn after_reply(ctx: &XdpContext, packet: &Packet, conn: &Conn) {
    if conn.flags & CONN_TOA == 0 || packet.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
        return;
    }
    let by = if packet.flow.family == FAMILY_IPV4 { LEN_IPV4 } else { LEN_IPV6 } as u16;
    let Some(tcp) = header::<TcpHdr>(ctx, packet.l4) else { return };
    // SAFETY: `header` checked the TCP header is within the frame.
    if usize::from(unsafe { (*tcp).doff() }) * 4 < TcpHdr::LEN + OPTION_MSS_LEN {
        return;
    }
    let Some(option) = header::<[u8; OPTION_MSS_LEN]>(ctx, packet.l4 + TcpHdr::LEN) else { return };
    let option = option.cast_mut();
    // SAFETY: `header` checked the option's bytes are within the frame.
    let [kind, len, high, low] = unsafe { *option };
    let mss = u16::from_be_bytes([high, low]);
    if kind != OPTION_MSS || usize::from(len) != OPTION_MSS_LEN || mss <= by {
        return;
    }
    let new = (mss - by).to_be_bytes();
    // SAFETY: as above; the TCP header is still within the frame.
    unsafe {
        *option = [kind, len, new[0], new[1]];
        (*tcp.cast_mut()).check = Delta::default().replace([high, low], new).apply((*tcp).check);
    }
}

enum Inserted {
    /// The option is in; `data`: the segment carries data.
    Yes {
        data: bool,
    },
    NoRoom,
    /// A segment without data, when one without data has had it.
    NotNeeded,
}

/// Inserts the option (the client's address and port) after the TCP fixed header, with
/// the lengths and checksums updated; first overwrites a TOA option the client sent.
#[inline(always)]
fn insert(ctx: &XdpContext, work: &ToaWork, conn: &Conn) -> Result<Inserted, Reason> {
    let ipv4 = work.flow.family == FAMILY_IPV4;
    let len = if ipv4 { LEN_IPV4 } else { LEN_IPV6 };
    // `lb_ingress` parsed the frame: a layout that does not read again cannot be, but
    // would leave the frame as it is.
    let Some(Layout { l3, l4, ip_len, header_len }) = layout(ctx, ipv4) else { return Ok(Inserted::NoRoom) };
    let data = ip_len > l4 - l3 + header_len;
    if !conn.awaits_toa(data) {
        return Ok(Inserted::NotNeeded);
    }
    // The client's own TOA options go first, whether or not ours fits.
    let blanked = blank_forged(ctx, l4, header_len);
    let tcp = header::<TcpHdr>(ctx, l4).ok_or(Reason::TruncatedL4)?.cast_mut();
    // SAFETY: `header` checked the TCP header is within the frame.
    unsafe { (*tcp).check = blanked.apply((*tcp).check) };

    let mtu = usize::from(work.mtu);
    if header_len + len > TCP_MAX_HEADER || (mtu != 0 && ip_len + len > mtu) {
        return Ok(Inserted::NoRoom);
    }
    let end = l4 + TcpHdr::LEN;
    if !open_gap(ctx, end, len) {
        return Ok(Inserted::NoRoom);
    }
    // From here on the frame is no longer the one that came: a failure drops it.
    let (address, port) = (&work.flow.src, work.flow.src_port);
    let mut delta = if ipv4 {
        let option = header::<[u8; LEN_IPV4]>(ctx, end).ok_or(Reason::TruncatedL4)?.cast_mut();
        let [a0, a1, a2, a3, ..] = *address;
        // SAFETY: `header` checked the option's bytes are within the frame.
        unsafe { *option = [KIND, len as u8, port[0], port[1], a0, a1, a2, a3] };
        Delta::default().add(option)
    } else {
        let option = header::<[u8; LEN_IPV6]>(ctx, end).ok_or(Reason::TruncatedL4)?.cast_mut();
        // SAFETY: `header` checked the option's bytes are within the frame.
        let bytes = unsafe { &mut *option };
        bytes[..4].copy_from_slice(&[KIND, len as u8, port[0], port[1]]);
        bytes[4..].copy_from_slice(address);
        Delta::default().add(option)
    };
    // The data offset grows by the option's words; the pseudo-header's TCP length (the
    // IP packet's length, less its header) and the IP header's own length by its bytes.
    let offset = header::<[u8; 2]>(ctx, l4 + TCP_DATA_OFFSET).ok_or(Reason::TruncatedL4)?.cast_mut();
    // SAFETY: `header` checked both bytes are within the frame.
    unsafe {
        let old = *offset;
        (*offset)[0] = old[0] + ((len as u8 / 4) << 4);
        delta = delta.replace(old, *offset);
    }
    let segment_len = ip_len - (l4 - l3);
    delta = delta.replace((segment_len as u16).to_be_bytes(), ((segment_len + len) as u16).to_be_bytes());
    if ipv4 {
        let ip = header::<Ipv4Hdr>(ctx, l3).ok_or(Reason::MalformedIp)?.cast_mut();
        // SAFETY: `header` checked the IPv4 header is within the frame.
        let ip = unsafe { &mut *ip };
        let total = ((ip_len + len) as u16).to_be_bytes();
        ip.check = Delta::default().replace(ip.tot_len, total).apply(ip.check);
        ip.tot_len = total;
    } else {
        let ip = header::<Ipv6Hdr>(ctx, l3).ok_or(Reason::MalformedIp)?.cast_mut();
        // SAFETY: `header` checked the IPv6 header is within the frame.
        unsafe { (*ip).payload_len = ((segment_len + len) as u16).to_be_bytes() };
    }
    let tcp = header::<TcpHdr>(ctx, l4).ok_or(Reason::TruncatedL4)?.cast_mut();
    // SAFETY: `header` checked the TCP header is within the frame.
    unsafe { (*tcp).check = delta.apply((*tcp).check) };
    Ok(Inserted::Yes { data })
}

/// Where the headers of a forwarded frame are, and the lengths that matter here.
struct Layout {
    l3: usize,
    l4: usize,
    /// The IP packet's length.
    ip_len: usize,
    /// The TCP header's length, options included.
    header_len: usize,
}

/// The frame's [`Layout`], read from its bytes (`lb_ingress` parsed and checked them,
/// and only rewrote addresses and ports since).
#[inline(always)]
fn layout(ctx: &XdpContext, ipv4: bool) -> Option<Layout> {
    let ether_type = header::<[u8; 2]>(ctx, 12)?;
    // SAFETY: `header` checked both bytes are within the frame.
    let mut ether_type = u16::from_ne_bytes(unsafe { *ether_type });
    let mut l3 = 14;
    if ether_type == EtherType::Ieee8021q as u16 {
        let inner = header::<[u8; 2]>(ctx, 16)?;
        // SAFETY: `header` checked both bytes are within the frame.
        ether_type = u16::from_ne_bytes(unsafe { *inner });
        l3 = 18;
    }
    let (l4, ip_len) = if ipv4 && ether_type == EtherType::Ipv4 as u16 {
        let ip = header::<Ipv4Hdr>(ctx, l3)?;
        // SAFETY: `header` checked the IPv4 header is within the frame.
        let ip = unsafe { &*ip };
        (l3 + usize::from(ip.ihl()), usize::from(ip.tot_len()))
    } else if !ipv4 && ether_type == EtherType::Ipv6 as u16 {
        let ip = header::<Ipv6Hdr>(ctx, l3)?;
        // SAFETY: `header` checked the IPv6 header is within the frame.
        (l3 + Ipv6Hdr::LEN, Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(unsafe { (*ip).payload_len })))
    } else {
        return None;
    };
    let tcp = header::<TcpHdr>(ctx, l4)?;
    // SAFETY: `header` checked the TCP header is within the frame.
    let header_len = usize::from(unsafe { (*tcp).doff() }) * 4;
    if header_len < TcpHdr::LEN || ip_len < l4 - l3 + header_len {
        return None;
    }
    Some(Layout { l3, l4, ip_len, header_len })
}

/// Makes the frame `gap` bytes longer at its front and moves the first `end` bytes (the
/// headers up to the TCP options) there, leaving `gap` bytes free after them. False if
/// the frame has no headroom, and it is left as it was.
#[inline(always)]
fn open_gap(ctx: &XdpContext, end: usize, gap: usize) -> bool {
    // SAFETY: `ctx.ctx` is this run's own `xdp_md`. The helper checks the delta against
    // the headroom and leaves the frame as it was when it fails.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(gap as i32)) } != 0 {
        return false;
    }
    // Front first: every destination is before its source.
    let mut moved = move_bytes::<2>(ctx, 0, gap);
    for i in 0..(MAX_MOVED - 2) / 4 {
        let at = 2 + 4 * i;
        if at >= end {
            break;
        }
        moved &= move_bytes::<4>(ctx, at, gap);
    }
    moved
}

/// Copies the `N` bytes at `at + gap` to `at`.
#[inline(always)]
fn move_bytes<const N: usize>(ctx: &XdpContext, at: usize, gap: usize) -> bool {
    match (header::<[u8; N]>(ctx, at), header::<[u8; N]>(ctx, at + gap)) {
        (Some(to), Some(from)) => {
            // SAFETY: `header` checked both are within the frame; `N <= gap`, so they do
            // not overlap.
            unsafe { *to.cast_mut() = *from };
            true
        }
        _ => false,
    }
}

/// Overwrites the TOA options the client sent itself (kind 254, of either length) in
/// the TCP header of `header_len` bytes at `l4` with NOPs; returns the checksum change.
/// Stops at EOL and at a malformed option.
#[inline(always)]
fn blank_forged(ctx: &XdpContext, l4: usize, header_len: usize) -> Delta {
    let mut delta = Delta::default();
    let mut at = TcpHdr::LEN;
    // No counter of turns: each turn moves `at` on, and the verifier then follows far
    // fewer distinct states than with one.
    while at < header_len.min(TCP_MAX_HEADER) {
        // Kind and length together (a NOP or EOL may be last, its next byte not in the
        // frame: the walk ends there as it would anyway). Two bytes, too, keep LLVM
        // from turning the bounds check into one the verifier cannot use.
        let Some(option) = header::<[u8; 2]>(ctx, l4 + at) else { break };
        // SAFETY: `header` checked both bytes are within the frame.
        let [kind, size] = unsafe { *option };
        if kind == OPTION_EOL {
            break;
        }
        if kind == OPTION_NOP {
            at += 1;
            continue;
        }
        let size = usize::from(size);
        if size < 2 || at + size > header_len {
            break;
        }
        if kind == KIND && size == LEN_IPV4 {
            delta = delta.and(blank::<LEN_IPV4>(ctx, l4 + at).at(at));
        } else if kind == KIND && size == LEN_IPV6 {
            delta = delta.and(blank::<LEN_IPV6>(ctx, l4 + at).at(at));
        }
        at += size;
    }
    delta
}

/// Overwrites the `N` bytes at `offset` (`N` a multiple of 4) with NOPs; returns the
/// change to their sum, as if they started a 16-bit word.
#[inline(always)]
fn blank<const N: usize>(ctx: &XdpContext, offset: usize) -> Delta {
    let Some(option) = header_alone::<[u8; N]>(ctx, offset) else { return Delta::default() };
    let mut delta = Delta::default().remove(option);
    for word in 0..N / 4 {
        // SAFETY: `header_alone` checked the `N` bytes are within the frame.
        unsafe { store_words(option.cast::<u8>().add(4 * word), [u32::from_ne_bytes([OPTION_NOP; 4])]) };
        delta = delta.replace([0; 2], [OPTION_NOP; 2]).replace([0; 2], [OPTION_NOP; 2]);
    }
    delta
}

/// Like [`header`], for bytes the walk over the options has already pointed at: the
/// pointer is made unknown to the optimiser before it is checked, so every access goes
/// through the very pointer checked. LLVM would otherwise reach some of the bytes
/// through the walk's pointer to the same place, whose checked range the verifier does
/// not carry over.
#[inline(always)]
fn header_alone<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let mut start = ctx.data() + offset;
    // SAFETY: a register move: the value comes out as it went in, unknown to LLVM.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) start) };
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *mut T)
}
