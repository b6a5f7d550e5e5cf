//! `REAL_LOAD` mapped into the agent's memory: each real server's connections, which
//! the data path changes with atomic adds as packets pass, and the weight and
//! thresholds the agent sets for it. The agent changes them the same way, word by word
//! (a map update would overwrite what a CPU adds meanwhile).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use anyhow::Result;
use aya::maps::MapData;
use lb_common::{MAX_REALS, names, real::RealLoad};

use super::mapped::Mapped;

pub struct RealLoads {
    loads: Mapped<RealLoad>,
}

/// What the agent sets for a real server: its weight and thresholds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

/// One real server's entry, field by field as atomics.
struct Entry<'a> {
    active: &'a AtomicI64,
    inactive: &'a AtomicI64,
    weight: &'a AtomicU32,
    upper_threshold: &'a AtomicU32,
    lower_threshold: &'a AtomicU32,
    overloaded: &'a AtomicU32,
}

impl RealLoads {
    /// Maps `data`, an array of `MAX_REALS` [`RealLoad`] made with `BPF_F_MMAPABLE`.
    pub fn map(data: &MapData) -> Result<Self> {
        Ok(Self { loads: Mapped::map(data, names::REAL_LOAD, MAX_REALS as usize)? })
    }

    fn entry(&self, id: u32) -> Entry<'_> {
        let load = self.loads.at(id as usize);
        // SAFETY: within the mapping, aligned (the kernel maps pages; the fields are
        // naturally aligned), shared only through atomic operations.
        unsafe {
            Entry {
                active: AtomicI64::from_ptr(&raw mut (*load).active),
                inactive: AtomicI64::from_ptr(&raw mut (*load).inactive),
                weight: AtomicU32::from_ptr(&raw mut (*load).weight),
                upper_threshold: AtomicU32::from_ptr(&raw mut (*load).upper_threshold),
                lower_threshold: AtomicU32::from_ptr(&raw mut (*load).lower_threshold),
                overloaded: AtomicU32::from_ptr(&raw mut (*load).overloaded),
            }
        }
    }

    /// Real server `id`'s load as it is now.
    pub fn get(&self, id: u32) -> RealLoad {
        let entry = self.entry(id);
        RealLoad {
            active: entry.active.load(Ordering::Relaxed),
            inactive: entry.inactive.load(Ordering::Relaxed),
            weight: entry.weight.load(Ordering::Relaxed),
            upper_threshold: entry.upper_threshold.load(Ordering::Relaxed),
            lower_threshold: entry.lower_threshold.load(Ordering::Relaxed),
            overloaded: entry.overloaded.load(Ordering::Relaxed),
        }
    }

    /// Every real server's load, by id.
    pub fn all(&self) -> Vec<RealLoad> {
        (0..MAX_REALS).map(|id| self.get(id)).collect()
    }

    /// Adds `active` and `inactive` connections to real server `id`'s counts; then,
    /// if it is overloaded and they fell below its lower threshold, lets it take new
    /// connections again (IPVS's `ip_vs_unbind_dest`: only freeing connections does).
    pub fn count(&self, id: u32, active: i64, inactive: i64) {
        let entry = self.entry(id);
        if active != 0 {
            entry.active.fetch_add(active, Ordering::Relaxed);
        }
        if inactive != 0 {
            entry.inactive.fetch_add(inactive, Ordering::Relaxed);
        }
        if entry.overloaded.load(Ordering::Relaxed) != 0 && self.get(id).below_lower_threshold() {
            entry.overloaded.store(0, Ordering::Relaxed);
        }
    }

    /// Sets what the configuration says of real server `id`. One whose upper
    /// threshold went or rose is not overloaded any more (IPVS's `__ip_vs_update_dest`).
    pub fn set_limits(&self, id: u32, limits: Limits) {
        let entry = self.entry(id);
        if limits.upper_threshold == 0 || limits.upper_threshold > entry.upper_threshold.load(Ordering::Relaxed) {
            entry.overloaded.store(0, Ordering::Relaxed);
        }
        entry.weight.store(limits.weight, Ordering::Relaxed);
        entry.upper_threshold.store(limits.upper_threshold, Ordering::Relaxed);
        entry.lower_threshold.store(limits.lower_threshold, Ordering::Relaxed);
    }
}
