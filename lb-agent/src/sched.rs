//! The agent's half of the schedulers: the sequences the data path walks, and the ring
//! their slots live in.

mod maglev;
mod ring;

pub use maglev::offset_and_skip;
pub use ring::{Ring, Slots};

use std::net::SocketAddr;

use lb_common::{
    MAX_SEQUENCE_LEN,
    service::{HASH_BUCKETS, NO_REAL, Scheduler},
};

/// A real server as a scheduler sees it, in the configuration's order: its stable id,
/// its weight, and whether the data path can reach it (resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    pub weight: u32,
    pub reachable: bool,
    /// mh: IPVS's `last_weight`, its last weight above 0 (0 if it never had one), which
    /// keeps a quiesced real server's place in the table.
    pub last_weight: u32,
    /// mh: its address and port, which place it in the table.
    pub address: SocketAddr,
}

/// How a hashing scheduler lays out its table: ipvsadm's `sh-fallback` or
/// `mh-fallback`, and the size of mh's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hashing {
    pub fallback: bool,
    pub mh_table_size: u32,
}

impl Candidate {
    /// Whether it may take a new connection: IPVS's weight above 0, and reachable.
    fn available(&self) -> bool {
        self.weight > 0 && self.reachable
    }
}

/// What the data path reads to schedule: for rr and wrr one cycle of the service's
/// schedule, for sh and dh the hash table (with sh-fallback, its fallback table after
/// it), for mh the Maglev table, for the dynamic schedulers (lblc and lblcr too) the
/// real servers that may take a connection, as real-server ids.
pub fn sequence(scheduler: Scheduler, hashing: Hashing, candidates: &[Candidate]) -> Vec<u32> {
    let reachable: Vec<Candidate> = candidates.iter().filter(|c| c.reachable).copied().collect();
    match scheduler {
        Scheduler::Rr => rr_sequence(&reachable),
        Scheduler::Wrr => wrr_sequence(&fit_weights(&reachable)),
        // ip_vs_sh_reassign: a real server takes as many buckets as its weight, at
        // least one.
        Scheduler::Sh => hash_table(candidates, |c| c.weight.max(1), hashing.fallback),
        // ip_vs_dh_reassign: one bucket each, weights aside.
        Scheduler::Dh => hash_table(candidates, |_| 1, false),
        Scheduler::Mh => maglev::table(candidates, hashing.mh_table_size, hashing.fallback),
        // The data path weighs the live loads of these, in order.
        Scheduler::Lc
        | Scheduler::Wlc
        | Scheduler::Sed
        | Scheduler::Nq
        | Scheduler::Fo
        | Scheduler::Ovf
        | Scheduler::Lblc
        | Scheduler::Lblcr => rr_sequence(&reachable),
    }
}

/// IPVS's sh and dh tables: the buckets dealt to the real servers in order, each
/// taking `buckets_of` consecutive ones, round and round until all are dealt. A
/// bucket whose real server cannot take a new connection holds `NO_REAL`, as IPVS's
/// scheduler finds no server there. With `fallback`, a second table follows: for each
/// bucket, the first available real server from it on (wrapping), where
/// ip_vs_sh_get_fallback's search from that bucket ends. Empty without real servers.
fn hash_table(candidates: &[Candidate], buckets_of: impl Fn(&Candidate) -> u32, fallback: bool) -> Vec<u32> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut dealt: Vec<&Candidate> = Vec::with_capacity(HASH_BUCKETS as usize);
    for candidate in candidates.iter().cycle() {
        let room = HASH_BUCKETS as usize - dealt.len();
        dealt.extend(std::iter::repeat_n(candidate, (buckets_of(candidate) as usize).min(room)));
        if dealt.len() == HASH_BUCKETS as usize {
            break;
        }
    }
    let mut table: Vec<u32> = dealt.iter().map(|c| if c.available() { c.id } else { NO_REAL }).collect();
    if fallback {
        table.extend(next_available(&table));
    }
    table
}

/// For each bucket of `table`, the first real server from it on (wrapping) that is not
/// `NO_REAL`; all `NO_REAL` if there is none.
fn next_available(table: &[u32]) -> Vec<u32> {
    let Some(last) = table.iter().rposition(|&id| id != NO_REAL) else { return table.to_vec() };
    // Backwards from the last available bucket, once round: each bucket takes its own
    // real server, or the one the bucket after it found.
    let mut fallbacks = table.to_vec();
    let mut found = table[last];
    for step in 0..table.len() {
        let bucket = (last + table.len() - step) % table.len();
        if table[bucket] != NO_REAL {
            found = table[bucket];
        }
        fallbacks[bucket] = found;
    }
    fallbacks
}

/// IPVS rr: every real server with a weight above 0, in order.
fn rr_sequence(candidates: &[Candidate]) -> Vec<u32> {
    candidates.iter().filter(|c| c.weight > 0).map(|c| c.id).collect()
}

/// IPVS wrr (ip_vs_wrr.c): the current weight starts at the largest weight and steps
/// down by the weights' gcd; each step takes, in order, the real servers whose weight
/// reaches it. A cycle has sum(weight) / gcd entries.
fn wrr_sequence(candidates: &[Candidate]) -> Vec<u32> {
    let gcd = candidates.iter().map(|c| c.weight).fold(0, gcd);
    let max = candidates.iter().map(|c| c.weight).max().unwrap_or(0);
    if max == 0 {
        return Vec::new();
    }
    let mut sequence = Vec::new();
    let mut current = max;
    while current > 0 {
        sequence.extend(candidates.iter().filter(|c| c.weight >= current).map(|c| c.id));
        current -= gcd;
    }
    sequence
}

/// Weights whose wrr cycle fits `MAX_SEQUENCE_LEN`: as given when they fit, else scaled
/// down in proportion (a weight above 0 stays above 0).
fn fit_weights(candidates: &[Candidate]) -> Vec<Candidate> {
    let gcd = candidates.iter().map(|c| c.weight).fold(0, gcd).max(1);
    let cycle: u64 = candidates.iter().map(|c| u64::from(c.weight / gcd)).sum();
    if cycle <= u64::from(MAX_SEQUENCE_LEN) {
        return candidates.to_vec();
    }
    // Room for the scaled cycle, less one slot per real server that rounding up to a
    // weight of 1 may add.
    let room = u64::from(MAX_SEQUENCE_LEN) - candidates.len() as u64;
    log::warn!("a wrr cycle of {cycle} entries does not fit {MAX_SEQUENCE_LEN}; weights are scaled down in proportion");
    candidates
        .iter()
        .map(|c| {
            let scaled = u64::from(c.weight / gcd) * room / cycle;
            let weight = if c.weight > 0 { scaled.max(1) as u32 } else { 0 };
            Candidate { weight, ..*c }
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests;
