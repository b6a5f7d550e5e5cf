//! The connection table: a known flow keeps its real server (and its rewrite); a new
//! one is remembered before its first packet leaves.

use lb_common::{
    IPPROTO_TCP,
    conn::{CONN_CLOSING, Conn, FlowKey},
    stats::Reason,
};

use crate::{
    maps::{CLOCK, CONNS},
    parse::{Packet, TCP_FIN, TCP_RST},
};

/// The entry of a known flow, in the map (its packets refresh it in place).
#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Option<&'static mut Conn> {
    // SAFETY: a map value stays valid for the whole run of the program (RCU), and only
    // this packet's run writes these fields through this reference.
    CONNS.get_ptr_mut(flow).map(|conn| unsafe { &mut *conn })
}

/// Notes that `packet` was seen: when, and whether the connection is closing. Each
/// field is written only when it changes, so a busy flow does not keep dirtying a
/// cache line that other CPUs read.
#[inline(always)]
pub fn touch(conn: &mut Conn, packet: &Packet) {
    let now = now();
    if conn.last_seen != now {
        conn.last_seen = now;
    }
    if packet.flow.protocol == IPPROTO_TCP
        && packet.tcp_flags & (TCP_FIN | TCP_RST) != 0
        && conn.flags & CONN_CLOSING == 0
    {
        conn.flags |= CONN_CLOSING;
    }
}

/// Remembers a flow. `only_new` refuses a key that is already there (a Full-NAT local
/// port in use).
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &Conn, only_new: bool) -> Result<(), Reason> {
    let flags = if only_new { aya_ebpf::bindings::BPF_NOEXIST } else { aya_ebpf::bindings::BPF_ANY };
    CONNS.insert(flow, conn, u64::from(flags)).map_err(|_| Reason::ConnInsertFailed)
}

#[inline(always)]
pub fn remove(flow: &FlowKey) {
    let _ = CONNS.remove(flow);
}

/// Seconds of the kernel's monotonic clock, as the agent keeps them in `CLOCK` and ages
/// entries by them.
#[inline(always)]
pub fn now() -> u32 {
    CLOCK.get(0).copied().unwrap_or(0)
}

/// An entry with nothing rewritten (direct routing, tunnels), seen now.
#[inline(always)]
pub fn plain(real: u32, service: u32, forwarding: u8) -> Conn {
    Conn {
        real,
        service,
        forwarding,
        flags: 0,
        state: 0,
        _pad: 0,
        last_seen: now(),
        src: [0; 16],
        dst: [0; 16],
        src_port: [0; 2],
        dst_port: [0; 2],
        address_delta: 0,
        port_delta: 0,
    }
}
