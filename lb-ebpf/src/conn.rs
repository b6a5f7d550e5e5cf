//! The connection table: a known flow keeps its real server (and its rewrite); a new
//! one is remembered before its first packet leaves. Each connection follows IPVS's
//! TCP states, and each real server's active and inactive connections are counted as
//! they open and change state, and no longer once they go.

mod table;

pub use table::{insert, lookup, remove};

use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    conn::{Conn, FlowKey, client_key, reply_key},
    real::{Forwarding, RealLoad},
    state::{self, Direction, ESTABLISHED},
    sync::{SYNC_THRESHOLD, announces},
};

use crate::{
    atomic,
    maps::{CLOCK, REAL_LOAD},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    sync::{self, lb_sync_announce},
};

/// Notes that `packet` was forwarded: when, and what it did to the connection's TCP
/// state. Each field is written only when it changes, so a busy flow does not keep
/// dirtying a cache line that other CPUs read.
#[inline(always)]
pub fn touch(conn: &mut Conn, packet: &Packet) {
    let now = now();
    if conn.last_seen != now {
        let quiet = now.wrapping_sub(conn.last_seen);
        conn.last_seen = now;
        sync::after_quiet(&packet.flow, conn, quiet);
    }
    // An established connection's plain segments leave it established in every
    // table: decided without looking.
    let steady = conn.state == ESTABLISHED && packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK) == TCP_ACK;
    // A reply's entry keeps its client entry's first count: only clients' packets count.
    if packet.flow.protocol == IPPROTO_UDP && conn.packets < SYNC_THRESHOLD && !conn.is_reply() {
        count_packet(conn, &packet.flow);
    }
    if packet.flow.protocol != IPPROTO_TCP || steady {
        return;
    }
    // IPVS's `set_tcp_state`: the next state by the segment's flags and the way it went.
    let state = state::next_tcp_state(direction(conn), packet.tcp_flags, conn.state);
    if state != conn.state {
        change_state(conn, &packet.flow, state);
    }
}

/// Moves the connection to `state`, and its real server's counts when it becomes
/// active or inactive. A function of its own: it runs a few times per connection, not
/// per packet.
#[inline(never)]
fn change_state(conn: &mut Conn, flow: &FlowKey, state: u8) {
    let (was, is) = (state::is_active(IPPROTO_TCP, conn.state), state::is_active(IPPROTO_TCP, state));
    if was != is
        && let Some(load) = REAL_LOAD.get_ptr_mut(conn.real)
    {
        let gained = if is { 1 } else { -1 };
        count(load, gained, -gained);
    }
    conn.state = state;
    // Both entries of a NAT or Full-NAT connection hold its state, so the next segment
    // either way starts from it.
    let partner_key = if conn.is_reply() { client_key(flow, conn) } else { reply_key(flow, conn) };
    let Some(partner_key) = partner_key else {
        announce(flow, conn, state);
        return;
    };
    let Some(partner) = lookup(&partner_key) else { return };
    partner.state = state;
    if conn.is_reply() {
        announce(&partner_key, partner, state);
    } else {
        announce(flow, conn, state);
    }
}

/// Tells the sync peers of the connection whose client entry is `conn` at `flow`, if
/// its new `state` is one they must learn of.
#[inline(always)]
fn announce(flow: &FlowKey, conn: &Conn, state: u8) {
    if announces(flow.protocol, state) {
        lb_sync_announce(flow, conn);
    }
}

/// Counts a stateless connection's client packet, the sync threshold's one announced.
/// A function of its own: it runs on a connection's first packets only.
#[inline(never)]
fn count_packet(conn: &mut Conn, flow: &FlowKey) {
    conn.packets += 1;
    if conn.packets == SYNC_THRESHOLD {
        lb_sync_announce(flow, conn);
    }
}

/// Which of IPVS's tables the connection's segments follow: a client's segment sees
/// only half of the conversation when the replies do not pass the director.
#[inline(always)]
fn direction(conn: &Conn) -> Direction {
    if conn.is_reply() {
        Direction::Output
    } else if conn.forwarding == Forwarding::Nat as u8 || conn.forwarding == Forwarding::Fnat as u8 {
        Direction::Input
    } else {
        Direction::InputOnly
    }
}

/// Counts a new connection of `protocol` on its real server `real`, active or not
/// by the state it opens in; one that reaches the real server's upper threshold marks
/// it overloaded (IPVS's `ip_vs_bind_dest`).
#[inline(always)]
pub fn count_open(real: u32, protocol: u8) {
    let Some(load) = REAL_LOAD.get_ptr_mut(real) else { return };
    if state::is_active(protocol, state::opening(protocol)) {
        count(load, 1, 0)
    } else {
        count(load, 0, 1)
    }
    // SAFETY: a map value, valid for the program's run. Other CPUs and the agent change
    // it meanwhile: each field is read once, by value, and the flag written whole.
    unsafe {
        let upper = i64::from((*load).upper_threshold);
        let total = (*load).active + (*load).inactive;
        if upper != 0 && (*load).overloaded == 0 && total >= upper {
            (*load).overloaded = 1;
        }
    }
}

#[inline(always)]
fn count(counts: *mut RealLoad, active: i64, inactive: i64) {
    // SAFETY: a map value, valid for the program's run; changed only atomically.
    unsafe {
        if active != 0 {
            atomic::add(&raw mut (*counts).active, active);
        }
        if inactive != 0 {
            atomic::add(&raw mut (*counts).inactive, inactive);
        }
    }
}

/// A connection that is no longer in the table: its real server no longer counts it.
#[inline(always)]
fn uncount(real: u32, active: bool) {
    if let Some(load) = REAL_LOAD.get_ptr_mut(real) {
        if active { count(load, -1, 0) } else { count(load, 0, -1) }
    }
}

/// Ends the connection of the client's `flow` now: its entries go, the client's first
/// (as the agent's ager removes them, so a Full-NAT local port is never free while a
/// client entry still forwards with it), and its real server no longer counts it.
#[inline(never)]
pub fn expire(flow: &FlowKey, conn: &Conn) {
    uncount(conn.real, state::is_active(flow.protocol, conn.state));
    // Read before the entry goes: a removed entry may be reused at once.
    let reply = reply_key(flow, conn);
    remove(flow);
    if let Some(reply) = reply {
        remove(&reply);
    }
}

/// Seconds of the kernel's monotonic clock, as the agent keeps them in `CLOCK` and ages
/// entries by them.
#[inline(always)]
pub fn now() -> u32 {
    CLOCK.get(0).copied().unwrap_or(0)
}

/// An entry with nothing rewritten (direct routing, tunnels), of a connection of
/// `protocol` opening now.
#[inline(always)]
pub fn plain(real: u32, service: u32, forwarding: u8, protocol: u8) -> Conn {
    Conn::plain(real, service, forwarding, state::opening(protocol), 1, now())
}
