//! Refreshes: a peer's copy of a connection is stamped with the time the master last
//! saw a packet of it (as the master said), and ages by its own timeout from there. A
//! connection that goes on carrying packets must be announced again before that copy
//! expires, without work for the data path on every packet. Two rules do it:
//!
//! - The ager, as it walks the table, announces again each announced connection that
//!   saw a packet in the last period (a quarter of its state's timeout), once per
//!   period, at a slot of its own (a hash of its key spreads the slots).
//! - The data path announces again a connection whose packet comes after [`quiet`]
//!   seconds without one (asked only when its stamp moves to another second).
//!
//! Whatever the last packet before a moment, the copy's stamp is then at most a period
//! and a quiet older than it, with a timeout at least twice a period and a quiet long:
//! no copy of a live connection expires, and an idle one costs nothing.

use std::hash::{DefaultHasher, Hash, Hasher};

use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    conn::{Conn, FlowKey},
    state,
    sync::announced,
};

use crate::config::Timeouts;

/// States with a shorter timeout end before a refresh would matter.
const SHORTEST_REFRESHED: u32 = 30;
/// The states the peers keep a copy of, by protocol.
const ANNOUNCED: [(u8, u8); 5] = [
    (IPPROTO_TCP, state::ESTABLISHED),
    (IPPROTO_TCP, state::FIN_WAIT),
    (IPPROTO_TCP, state::CLOSE_WAIT),
    (IPPROTO_TCP, state::TIME_WAIT),
    (IPPROTO_UDP, state::NONE),
];

/// The refresh period of a connection whose state times out after `timeout`.
fn period(timeout: u32) -> u32 {
    timeout / 4
}

/// The quiet after which the data path announces a connection again: a period of the
/// shortest refreshed timeout (0: none is refreshed).
pub fn quiet(timeouts: &Timeouts) -> u32 {
    let refreshed = ANNOUNCED.iter().map(|&(protocol, state)| timeouts.of(protocol, state));
    refreshed.filter(|&timeout| timeout >= SHORTEST_REFRESHED).map(period).min().unwrap_or(0)
}

/// Whether the client entry `conn` at `key` is due again in a walk at `now` (the data
/// path's clock) that follows one at `last`.
pub fn due(key: &FlowKey, conn: &Conn, timeouts: &Timeouts, last: u32, now: u32) -> bool {
    let timeout = timeouts.of(key.protocol, conn.state);
    if conn.is_reply() || !announced(key.protocol, conn) || timeout < SHORTEST_REFRESHED {
        return false;
    }
    let period = period(timeout);
    if now.saturating_sub(conn.last_seen) > period {
        return false;
    }
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    let phase = (hasher.finish() % u64::from(period)) as u32;
    let slot = |at: u32| (u64::from(at) + u64::from(period - phase)) / u64::from(period);
    slot(now) != slot(last)
}

#[cfg(test)]
mod tests {
    use lb_common::{FAMILY_IPV4, IPPROTO_TCP, state};

    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            src: [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: port.to_be_bytes(),
            dst_port: 80u16.to_be_bytes(),
            protocol: IPPROTO_TCP,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        }
    }

    fn established(last_seen: u32) -> Conn {
        Conn::plain(1, 0, 0, state::ESTABLISHED, 1, last_seen)
    }

    /// A peer's copy, refreshed by walks every `step` seconds and by the data path
    /// after a quiet, over a connection whose packets come `gaps` seconds apart (in
    /// turn), never expires while the connection lives.
    fn copy_outlives(gaps: &[u32], step: u32) {
        let timeouts = Timeouts::default();
        let (timeout, quiet) = (timeouts.tcp, quiet(&timeouts));
        for port in 1000..1050 {
            let key = flow(port);
            // Announced when established, at 0.
            let (mut copy, mut last_packet, mut last_walk) = (0, 0, 0);
            let mut packets = gaps.iter().cycle().scan(0, |at, gap| {
                *at += gap;
                Some(*at)
            });
            let mut next_packet = packets.next().unwrap();
            for now in 1..10 * timeout {
                if now == next_packet {
                    if now - last_packet >= quiet {
                        copy = now;
                    }
                    last_packet = now;
                    next_packet = packets.next().unwrap();
                }
                assert!(now - copy <= timeout, "port {port}: the copy expired at {now} (stamped {copy})");
                if now % step == 0 {
                    if due(&key, &established(last_packet), &timeouts, last_walk, now) {
                        copy = last_packet;
                    }
                    last_walk = now;
                }
            }
        }
    }

    #[test]
    fn a_live_connection_s_copy_never_expires() {
        assert_eq!(quiet(&Timeouts::default()), 15, "a quarter of close_wait's 60 s");
        copy_outlives(&[1], 2);
        copy_outlives(&[7], 2);
        copy_outlives(&[600], 8);
        copy_outlives(&[899], 3);
        copy_outlives(&[29, 1, 899, 450], 2);
        copy_outlives(&[29, 29, 29, 890], 7);
    }

    #[test]
    fn refreshes_spread_over_the_period_and_skip_idle_connections() {
        let timeouts = Timeouts::default();
        let due_now: usize = (0..3000).filter(|&port| due(&flow(port), &established(100), &timeouts, 100, 102)).count();
        // A period of 225 s, walks 2 s apart: about 3000 × 2/225 = 27.
        assert!((5..=40).contains(&due_now), "{due_now} of 3000 due in one walk");
        let idle = established(0);
        assert!(!(0..3000).any(|port| due(&flow(port), &idle, &timeouts, 400, 402)));
        let mut half_open = established(100);
        half_open.state = state::SYN_RECV;
        assert!(!(0..3000).any(|port| due(&flow(port), &half_open, &timeouts, 100, 102)));
    }
}
