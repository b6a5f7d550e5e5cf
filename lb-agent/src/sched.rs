//! The agent's half of the schedulers: the sequences the data path walks, and the ring
//! their slots live in.

mod ring;

pub use ring::{Ring, Slots};

use lb_common::{MAX_SEQUENCE_LEN, service::Scheduler};

/// A real server as a scheduler sees it: its stable id and its weight. Only real servers
/// that can take new connections (resolved) are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    pub weight: u32,
}

/// One cycle of the service's schedule, as real-server ids.
pub fn sequence(scheduler: Scheduler, candidates: &[Candidate]) -> Vec<u32> {
    match scheduler {
        Scheduler::Rr => rr_sequence(candidates),
        Scheduler::Wrr => wrr_sequence(&fit_weights(candidates)),
    }
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
            Candidate { id: c.id, weight }
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests;
