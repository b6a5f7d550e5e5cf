//! Replayed datagrams: each sender numbers its datagrams up from the time it started,
//! and a receiver keeps, per sender, the highest number seen and which of the 64 below
//! it came (IPsec's window, RFC 4303 §3.4.3), so a datagram a little out of order is
//! taken once and a copy of an old one never. A receiver that starts anew takes only
//! datagrams sent within `MAX_AGE` of its own clock.

use std::{collections::HashMap, net::IpAddr};

/// How far a datagram's send time may be from the receiver's clock: the directors'
/// clocks (NTP) must agree within it.
pub const MAX_AGE_NS: u64 = 60_000_000_000;
const WINDOW: u64 = 64;

#[derive(Default)]
pub struct Replay {
    senders: HashMap<IpAddr, Window>,
}

#[derive(Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit `n`: `highest - n` was taken.
    seen: u64,
}

impl Replay {
    /// Whether `sender`'s datagram `sequence`, sent at `sent_at` and received at `now`
    /// (both UNIX ns), is new; it is then remembered.
    pub fn accept(&mut self, sender: IpAddr, sequence: u64, sent_at: u64, now: u64) -> bool {
        if sent_at.abs_diff(now) > MAX_AGE_NS {
            return false;
        }
        let Some(window) = self.senders.get_mut(&sender) else {
            self.senders.insert(sender, Window { highest: sequence, seen: 1 });
            return true;
        };
        if sequence > window.highest {
            let ahead = sequence - window.highest;
            window.seen = if ahead >= WINDOW { 1 } else { (window.seen << ahead) | 1 };
            window.highest = sequence;
            return true;
        }
        let behind = window.highest - sequence;
        if behind >= WINDOW || window.seen & (1 << behind) != 0 {
            return false;
        }
        window.seen |= 1 << behind;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    #[test]
    fn each_datagram_is_taken_once_even_out_of_order() {
        let mut replay = Replay::default();
        let sender: IpAddr = "198.18.30.1".parse().unwrap();
        let other: IpAddr = "198.18.30.2".parse().unwrap();
        assert!(replay.accept(sender, 100, NOW, NOW));
        assert!(!replay.accept(sender, 100, NOW, NOW));
        assert!(replay.accept(sender, 102, NOW, NOW));
        assert!(replay.accept(sender, 101, NOW, NOW), "late, but not seen");
        assert!(!replay.accept(sender, 101, NOW, NOW));
        assert!(replay.accept(other, 101, NOW, NOW), "each sender has its own numbers");
        assert!(replay.accept(sender, 102 + WINDOW, NOW, NOW));
        assert!(!replay.accept(sender, 102, NOW, NOW), "behind the window");
        assert!(replay.accept(sender, 103 + WINDOW, NOW, NOW));
    }

    #[test]
    fn a_datagram_sent_long_ago_or_ahead_is_refused_even_by_a_new_receiver() {
        let mut replay = Replay::default();
        let sender: IpAddr = "2001:db8:30::1".parse().unwrap();
        assert!(!replay.accept(sender, 1, NOW - MAX_AGE_NS - 1, NOW));
        assert!(!replay.accept(sender, 1, NOW + MAX_AGE_NS + 1, NOW));
        assert!(replay.accept(sender, 1, NOW - MAX_AGE_NS + 1, NOW));
    }
}
