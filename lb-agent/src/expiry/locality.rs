//! lblc's and lblcr's tables (`LOCALITY`), aged as IPVS ages them
//! (`ip_vs_lblc_full_check`, `ip_vs_lblc_check_expire`, and lblcr's): an entry unused
//! for its service's expiration goes, and a service's table above IPVS's size loses
//! the entries unused for `ENTRY_TIMEOUT` first. IPVS checks the size every minute and
//! the expiration every half hour; the ager checks both at every walk.
//!
//! An lblcr set that a connection used after it had gone unchanged for the expiration
//! loses its most loaded member (`ip_vs_dest_set_max`). IPVS does that in the
//! scheduler, at that use; here the ager's next walk does it, seconds later, one member
//! per walk, so that the data path never rewrites a set. A member that is no longer a
//! real server of its service leaves at the next walk (IPVS keeps it, never chosen,
//! until the set or entry goes), so that its id can be given to another; an lblc entry
//! whose real server went, or a set left empty, goes (IPVS would schedule anew at the
//! next use, as the data path does without it).

use std::collections::{HashMap, HashSet};

use lb_common::{
    locality::{LOCALITY_SET_SIZE, Locality, LocalityKey},
    real::RealLoad,
    service::{NO_REAL, Scheduler},
};

/// IPVS's `ENTRY_TIMEOUT`: in a table above `MAX_SIZE`, an entry unused this long goes.
pub const ENTRY_TIMEOUT: u32 = 6 * 60;
/// IPVS's table size per service (`IP_VS_LBLC_TAB_SIZE * 16`), above which entries
/// unused for `ENTRY_TIMEOUT` go.
pub const MAX_SIZE: usize = 16 * 1024;

/// An lblc or lblcr service, as its entries are aged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Localizing {
    /// Which of the two ([`Scheduler`]): entries the other wrote are a former
    /// scheduler's.
    pub scheduler: u8,
    /// Seconds an entry lives unused, and an lblcr set stays unchanged
    /// (`lblc_expiration`, `lblcr_expiration`).
    pub expiration: u32,
    /// The ids of its real servers.
    pub reals: HashSet<u32>,
}

/// What a walk does to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Expire,
    /// Members leave: those no longer real servers of the service, and `erased`, the
    /// most loaded of a set gone unchanged for the expiration.
    Shrink {
        entry: Locality,
        erased: Option<u32>,
    },
}

/// What happens to `entry` at `now`, if anything. An entry of a service that is no
/// longer lblc or lblcr (or no longer the one that wrote it) goes once unused for
/// `orphaned` seconds (a reload may have made the service so during the walk).
pub fn fate(
    now: u32,
    key: &LocalityKey,
    entry: &Locality,
    services: &HashMap<u32, Localizing>,
    loads: &[RealLoad],
    orphaned: u32,
) -> Option<Fate> {
    let idle = now.saturating_sub(entry.last_used);
    let Some(service) = services.get(&key.service).filter(|service| service.scheduler == key.scheduler) else {
        return (idle > orphaned).then_some(Fate::Expire);
    };
    if idle > service.expiration {
        return Some(Fate::Expire);
    }
    let mut kept = *entry;
    retain(&mut kept.reals, |real| service.reals.contains(&real));
    if kept.reals[0] == NO_REAL {
        return Some(Fate::Expire);
    }
    let mut erased = None;
    if key.scheduler == Scheduler::Lblcr as u8 && stale(&kept, service.expiration) {
        erased = most_loaded(&kept.reals, loads);
        if let Some(most) = erased {
            retain(&mut kept.reals, |real| real != most);
            kept.last_modified = now;
        }
    }
    (kept != *entry).then_some(Fate::Shrink { entry: kept, erased })
}

/// Whether an entry is among those that go first in a table above `MAX_SIZE`.
pub fn crowded_out(now: u32, entry: &Locality) -> bool {
    now.saturating_sub(entry.last_used) > ENTRY_TIMEOUT
}

/// How many entries IPVS's check removes from a table of `entries` (at most), of those
/// unused for `ENTRY_TIMEOUT`.
pub fn over_size_goal(entries: usize) -> usize {
    (entries.saturating_sub(MAX_SIZE) * 4 / 3).min(MAX_SIZE / 2)
}

/// IPVS's condition for shrinking a set at a use: more than one member, and used after
/// it had stayed unchanged for `expiration`.
fn stale(entry: &Locality, expiration: u32) -> bool {
    let members = entry.reals.iter().filter(|&&real| real != NO_REAL).count();
    members > 1 && entry.last_used.saturating_sub(entry.last_modified) > expiration
}

/// IPVS's `ip_vs_dest_set_max`: in the set's list order (the newest member first), the
/// first member with a weight, then any with more connections per weight.
fn most_loaded(reals: &[u32; LOCALITY_SET_SIZE], loads: &[RealLoad]) -> Option<u32> {
    let mut most: Option<(u32, i64, u32)> = None;
    for &real in reals.iter().rev().filter(|&&real| real != NO_REAL) {
        let Some(load) = loads.get(real as usize) else { continue };
        let (overhead, weight) = (overhead(load), load.weight);
        let heavier = match most {
            None => weight > 0,
            Some((_, most_overhead, most_weight)) => {
                weight > 0 && most_overhead * i64::from(weight) < overhead * i64::from(most_weight)
            }
        };
        if heavier {
            most = Some((real, overhead, weight));
        }
    }
    most.map(|(real, _, _)| real)
}

/// IPVS's `ip_vs_dest_conn_overhead`, of counts that may dip below zero for a moment.
fn overhead(load: &RealLoad) -> i64 {
    (load.active.max(0) << 8) + load.inactive.max(0)
}

/// Keeps the members `keep` answers true for, in their order, from the first slot.
fn retain(reals: &mut [u32; LOCALITY_SET_SIZE], keep: impl Fn(u32) -> bool) {
    let kept: Vec<u32> = reals.iter().copied().filter(|&real| real != NO_REAL && keep(real)).collect();
    *reals = [NO_REAL; LOCALITY_SET_SIZE];
    reals[..kept.len()].copy_from_slice(&kept);
}

#[cfg(test)]
mod tests;
