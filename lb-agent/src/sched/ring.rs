//! The scheduler ring: one array of slots that all services' sequences share.
//!
//! A changed sequence is written to fresh slots and only then published in the service's
//! map value, so a packet sees the old sequence or the new one, whole. The old slots
//! are not reused until the next change set begins; packets that read the old value
//! finished long before.

use std::ops::Range;

/// A run of slots owned by one sequence.
pub type Slots = Range<u32>;

#[derive(Clone, Debug)]
pub struct Ring {
    /// Free runs, sorted and merged.
    free: Vec<Slots>,
    /// Released in this change set; free from the next.
    retired: Vec<Slots>,
}

impl Ring {
    pub fn new(size: u32) -> Self {
        let whole: Slots = 0..size;
        Self { free: Vec::from([whole]), retired: Vec::new() }
    }

    /// The first free run of `len` slots.
    pub fn allocate(&mut self, len: u32) -> Option<Slots> {
        let index = self.free.iter().position(|run| run.len() >= len as usize)?;
        let run = &mut self.free[index];
        let slots = run.start..run.start + len;
        run.start += len;
        if run.start == run.end {
            self.free.remove(index);
        }
        Some(slots)
    }

    /// Slots no sequence will be published at any more.
    pub fn release(&mut self, slots: Slots) {
        if slots.start != slots.end {
            self.retired.push(slots);
        }
    }

    /// A new change set begins: what was released before may be reused.
    pub fn recycle(&mut self) {
        self.free.append(&mut self.retired);
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

    pub fn free_slots(&self) -> u32 {
        self.free.iter().map(|run| run.end - run.start).sum()
    }
}
