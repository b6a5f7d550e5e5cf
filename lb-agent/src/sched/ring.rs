//! The scheduler ring: one array of slots that all services' sequences share.
//!
//! A changed sequence is written to fresh slots and only then published in the service's
//! map value, so a packet sees the old sequence or the new one, whole. Released slots
//! are reused only once every packet that may have read the old value is long done.

use std::{ops::Range, time::Instant};

/// A run of slots owned by one sequence.
pub type Slots = Range<u32>;

#[derive(Clone, Debug)]
pub struct Ring {
    /// Free runs, sorted and merged.
    free: Vec<Slots>,
    /// Released runs, with when they were released.
    released: Vec<(Slots, Instant)>,
}

impl Ring {
    pub fn new(size: u32) -> Self {
        let whole: Slots = 0..size;
        Self { free: Vec::from([whole]), released: Vec::new() }
    }

    /// A ring of `size` slots whose runs `taken` are in use (a restarted agent's, from
    /// the sequences the maps hold).
    pub fn with_taken(size: u32, taken: impl IntoIterator<Item = Slots>) -> Self {
        let mut taken: Vec<Slots> = taken.into_iter().filter(|run| run.start < run.end).collect();
        taken.sort_by_key(|run| run.start);
        let mut free = Vec::new();
        let mut next = 0;
        for run in taken {
            if run.start > next {
                free.push(next..run.start);
            }
            next = next.max(run.end);
        }
        if next < size {
            free.push(next..size);
        }
        Self { free, released: Vec::new() }
    }

    /// The first free run of `len` slots.
    pub fn allocate(&mut self, len: u32) -> Option<Slots> {
        let index = self.free.iter().position(|run| run.end - run.start >= len)?;
        let run = &mut self.free[index];
        let slots = run.start..run.start + len;
        run.start += len;
        if run.start == run.end {
            self.free.remove(index);
        }
        Some(slots)
    }

    /// Slots no sequence will be published at any more.
    pub fn release(&mut self, slots: Slots, now: Instant) {
        if slots.start != slots.end {
            self.released.push((slots, now));
        }
    }

    /// Makes the runs released before `before` free again.
    pub fn recycle(&mut self, before: Instant) {
        let (old, recent): (Vec<_>, Vec<_>) = self.released.drain(..).partition(|(_, at)| *at < before);
        self.released = recent;
        self.free.extend(old.into_iter().map(|(slots, _)| slots));
        self.free.sort_by_key(|run| run.start);
        let mut merged: Vec<Slots> = Vec::with_capacity(self.free.len());
        for run in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if last.end == run.start => last.end = run.end,
                _ => merged.push(run),
            }
        }
        self.free = merged;
    }
}
