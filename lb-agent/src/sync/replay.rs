//! Replayed datagrams: each sender draws an id when it starts and numbers its datagrams
//! up from there, both under the tag; a receiver keeps, per sender id, the highest
//! number seen and which of the 64 below it came (IPsec's window, RFC 4303 §3.4.3), so a
//! datagram a little out of order is taken once and a copy of an old one never, from
//! whatever address it comes. A receiver that starts anew takes only datagrams sent
//! within `MAX_AGE` of its own clock.

use std::collections::HashMap;

/// How far a datagram's send time may be from the receiver's clock: the directors'
/// clocks (NTP) must agree within it.
pub const MAX_AGE_NS: u64 = 60_000_000_000;
const WINDOW: u64 = 64;

#[derive(Default)]
pub struct Replay {
    senders: HashMap<u32, Window>,
}

#[derive(Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit `n`: `highest - n` was taken.
    seen: u64,
    /// When the receiver last took one of the sender's, UNIX ns.
    heard: u64,
}

impl Replay {
    /// Whether `sender`'s datagram `sequence`, sent at `sent_at` and received at `now`
    /// (both UNIX ns), is new; it is then remembered.
    pub fn accept(&mut self, sender: u32, sequence: u64, sent_at: u64, now: u64) -> bool {
        if sent_at.abs_diff(now) > MAX_AGE_NS {
            return false;
        }
        let Some(window) = self.senders.get_mut(&sender) else {
            self.forget_silent(now);
            self.senders.insert(sender, Window { highest: sequence, seen: 1, heard: now });
            return true;
        };
        if sequence > window.highest {
            let ahead = sequence - window.highest;
            window.seen = if ahead >= WINDOW { 1 } else { (window.seen << ahead) | 1 };
            window.highest = sequence;
            window.heard = now;
            return true;
        }
        let behind = window.highest - sequence;
        if behind >= WINDOW || window.seen & (1 << behind) != 0 {
            return false;
        }
        window.seen |= 1 << behind;
        window.heard = now;
        true
    }

    /// Forgets the senders not heard for twice `MAX_AGE` (a sender that restarted
    /// draws another id): any copy of their datagrams is too old to be taken by now,
    /// even from a clock ahead by `MAX_AGE`.
    fn forget_silent(&mut self, now: u64) {
        self.senders.retain(|_, window| now.saturating_sub(window.heard) <= 2 * MAX_AGE_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    #[test]
    fn each_datagram_is_taken_once_even_out_of_order() {
        let mut replay = Replay::default();
        let (sender, other) = (0x1234_5678, 0x9abc_def0);
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
        assert!(!replay.accept(7, 1, NOW - MAX_AGE_NS - 1, NOW));
        assert!(!replay.accept(7, 1, NOW + MAX_AGE_NS + 1, NOW));
        assert!(replay.accept(7, 1, NOW - MAX_AGE_NS + 1, NOW));
    }

    #[test]
    fn a_silent_sender_is_forgotten_only_once_its_copies_are_too_old() {
        let mut replay = Replay::default();
        assert!(replay.accept(7, 1, NOW, NOW));
        let later = NOW + 2 * MAX_AGE_NS;
        assert!(replay.accept(8, 1, later, later));
        assert!(!replay.accept(7, 1, NOW + MAX_AGE_NS, later), "still remembered");
        let much_later = later + 1;
        assert!(replay.accept(9, 1, much_later, much_later));
        assert_eq!(replay.senders.len(), 2, "sender 7 is forgotten");
        assert!(!replay.accept(7, 1, NOW + MAX_AGE_NS, much_later), "its copies are too old");
    }
}
