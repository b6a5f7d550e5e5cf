use std::net::SocketAddr;

use super::*;

/// IPVS's wrr, as ip_vs_wrr.c runs it: a cursor over the list and a current weight
/// that starts at max - (gcd - 1) and steps down by gcd. This is the reference the
/// agent's precomputed sequence must equal.
struct IpvsWrr {
    weights: Vec<u32>,
    cursor: Option<usize>,
    current: i64,
    gcd: i64,
    max: i64,
}

impl IpvsWrr {
    fn new(weights: &[u32]) -> Self {
        let gcd = i64::from(weights.iter().copied().fold(0, gcd).max(1));
        let max = i64::from(*weights.iter().max().unwrap()) - (gcd - 1);
        Self { weights: weights.to_vec(), cursor: None, current: max, gcd, max }
    }

    fn next(&mut self) -> usize {
        let mut i = self.cursor.map_or(0, |c| c + 1);
        loop {
            while i < self.weights.len() {
                if i64::from(self.weights[i]) >= self.current {
                    self.cursor = Some(i);
                    return i;
                }
                i += 1;
            }
            self.current -= self.gcd;
            if self.current <= 0 {
                self.current = self.max;
            }
            i = 0;
        }
    }
}

fn candidates(weights: &[u32]) -> Vec<Candidate> {
    weights.iter().enumerate().map(|(i, &weight)| candidate(i as u32 + 100, weight, weight)).collect()
}

/// Real server `id` at 198.18.1.`id` (its place in an mh table follows the address).
fn candidate(id: u32, weight: u32, last_weight: u32) -> Candidate {
    let address = SocketAddr::from(([198, 18, 1, id as u8], 80));
    Candidate { id, weight, reachable: true, last_weight, address }
}

#[test]
fn wrr_follows_ipvs_for_many_weight_sets() {
    let sets: &[&[u32]] = &[
        &[1, 2, 3],
        &[2, 1],
        &[1, 2],
        &[4, 4, 4],
        &[2, 4, 6],
        &[5, 0, 3],
        &[100, 1],
        &[7, 13, 1, 9],
        &[3],
        &[6, 9, 12, 15],
    ];
    for weights in sets {
        let sequence = sequence(Scheduler::Wrr, Hashing::default(), &candidates(weights));
        let mut ipvs = IpvsWrr::new(weights);
        // Two cycles: the sequence repeats exactly as IPVS's does.
        let expected: Vec<u32> = (0..sequence.len() * 2).map(|_| ipvs.next() as u32 + 100).collect();
        let twice: Vec<u32> = sequence.iter().chain(&sequence).copied().collect();
        assert_eq!(twice, expected, "weights {weights:?}");
    }
}

#[test]
fn wrr_cycle_holds_each_real_weight_over_gcd_times() {
    let sequence = sequence(Scheduler::Wrr, Hashing::default(), &candidates(&[2, 4, 6]));
    assert_eq!(sequence, vec![102, 101, 102, 100, 101, 102]);
    let sequence = sequence_counts(&[1, 2, 3]);
    assert_eq!(sequence, vec![1, 2, 3]);
}

fn sequence_counts(weights: &[u32]) -> Vec<usize> {
    let sequence = sequence(Scheduler::Wrr, Hashing::default(), &candidates(weights));
    (0..weights.len()).map(|i| sequence.iter().filter(|&&id| id == i as u32 + 100).count()).collect()
}

#[test]
fn weight_zero_takes_no_new_connections() {
    assert_eq!(sequence_counts(&[0, 3, 0]), vec![0, 1, 0]);
    assert!(sequence(Scheduler::Wrr, Hashing::default(), &candidates(&[0, 0])).is_empty());
    assert_eq!(sequence(Scheduler::Rr, Hashing::default(), &candidates(&[1, 0, 5])), vec![100, 102]);
}

#[test]
fn rr_ignores_weights_above_zero() {
    assert_eq!(sequence(Scheduler::Rr, Hashing::default(), &candidates(&[1, 9, 3])), vec![100, 101, 102]);
    assert!(sequence(Scheduler::Rr, Hashing::default(), &[]).is_empty());
}

#[test]
fn oversized_wrr_cycle_is_scaled_in_proportion() {
    let weights = [65535, 65534, 1, 40000];
    let sequence = sequence(Scheduler::Wrr, Hashing::default(), &candidates(&weights));
    assert!(sequence.len() <= MAX_SEQUENCE_LEN as usize);
    let counts = sequence_counts(&weights);
    let total: u32 = weights.iter().sum();
    for (count, weight) in counts.iter().zip(weights) {
        let share = *count as f64 / sequence.len() as f64;
        let expected = f64::from(weight) / f64::from(total);
        assert!((share - expected).abs() < 0.001, "{counts:?}");
        assert!(*count > 0);
    }
}

#[test]
fn ring_reuses_released_slots_only_once_they_are_old_enough() {
    let t0 = std::time::Instant::now();
    let later = t0 + std::time::Duration::from_secs(10);
    let mut ring = Ring::new(10);
    let a = ring.allocate(4).unwrap();
    let b = ring.allocate(6).unwrap();
    assert_eq!((a.clone(), b.clone()), (0..4, 4..10));
    assert_eq!(ring.allocate(1), None);
    ring.release(a, t0);
    assert_eq!(ring.allocate(1), None, "released slots are not free before a recycle");
    ring.recycle(t0);
    assert_eq!(ring.allocate(1), None, "released just now: a packet may still read them");
    ring.release(b, t0);
    ring.recycle(later);
    assert_eq!(ring.allocate(10), Some(0..10), "neighbouring runs merge");
}

#[test]
fn a_ring_rebuilt_from_the_runs_in_use_allocates_around_them() {
    let mut ring = Ring::with_taken(10, [6..8, 0..2, 3..3]);
    assert_eq!(ring.allocate(5), None, "free are 2..6 and 8..10");
    assert_eq!(ring.allocate(4), Some(2..6));
    assert_eq!(ring.allocate(2), Some(8..10));
    assert_eq!(ring.allocate(1), None);
}

fn mh(candidates: &[Candidate], size: u32, fallback: bool) -> Vec<u32> {
    sequence(Scheduler::Mh, Hashing { fallback, mh_table_size: size }, candidates)
}

fn buckets_of(table: &[u32], id: u32) -> usize {
    table.iter().filter(|&&bucket| bucket == id).count()
}

#[test]
fn mh_fills_every_bucket_in_proportion_to_the_weights() {
    let reals = candidates(&[1, 2, 3, 4]);
    let table = mh(&reals, 65537, false);
    assert_eq!(table.len(), 65537);
    for (i, real) in reals.iter().enumerate() {
        let share = buckets_of(&table, real.id) as f64 / table.len() as f64;
        let expected = (i + 1) as f64 / 10.0;
        assert!((share - expected).abs() < 0.005, "real {i}: {share} of the buckets, not {expected}");
    }
}

#[test]
fn mh_shifts_large_weights_down_as_ipvs_does() {
    // gcd 10: 100 and 1; 100 needs 7 bits, shifted by 1 to IPVS's 6: 50 turns, and 0
    // turns raised to 1.
    let reals = candidates(&[1000, 10]);
    let table = mh(&reals, 4093, false);
    assert_eq!(buckets_of(&table, 100) + buckets_of(&table, 101), 4093);
    let ratio = buckets_of(&table, 100) as f64 / buckets_of(&table, 101) as f64;
    assert!((ratio - 50.0).abs() < 1.0, "{ratio}");
}

#[test]
fn mh_quiesced_real_keeps_its_buckets_empty_or_falls_back() {
    let reals = candidates(&[1, 2, 3, 4]);
    let before = mh(&reals, 4093, false);
    let mut quiesced = reals.clone();
    quiesced[2].weight = 0;
    let after = mh(&quiesced, 4093, false);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(*new, if *old == 102 { NO_REAL } else { *old });
    }
    let fallback = mh(&quiesced, 4093, true);
    for (bucket, (old, new)) in before.iter().zip(&fallback).enumerate() {
        if *old == 102 {
            let next = (1..4093).map(|step| after[(bucket + step) % 4093]).find(|&id| id != NO_REAL);
            assert_eq!(Some(*new), next, "bucket {bucket}");
        } else {
            assert_eq!(new, old, "bucket {bucket}");
        }
    }
    let unreachable: Vec<Candidate> = reals.iter().map(|c| Candidate { reachable: c.id != 102, ..*c }).collect();
    assert_eq!(mh(&unreachable, 4093, false), after, "an unreachable real server keeps its place too");
}

#[test]
fn mh_real_that_never_had_a_weight_gets_no_place() {
    let reals = candidates(&[1, 2, 3]);
    let mut with_new = reals.clone();
    with_new.push(candidate(103, 0, 0));
    assert_eq!(mh(&with_new, 4093, false), mh(&reals, 4093, false));
    assert!(mh(&candidates(&[0, 0]), 4093, true).is_empty(), "no real server has a place");
    let all_quiesced = [candidate(100, 0, 5), candidate(101, 0, 1)];
    assert!(mh(&all_quiesced, 251, true).iter().all(|&id| id == NO_REAL));
}

#[test]
fn mh_table_names_the_same_addresses_whatever_the_ids_and_order() {
    let reals = candidates(&[1, 2, 3, 4, 5]);
    let table = mh(&reals, 4093, false);
    // Other ids (a director with another history), listed in another order.
    let renumbered: Vec<Candidate> = reals.iter().rev().map(|c| Candidate { id: c.id + 1000, ..*c }).collect();
    let other = mh(&renumbered, 4093, false);
    assert_eq!(other.iter().map(|id| id - 1000).collect::<Vec<_>>(), table);
}

#[test]
fn mh_removing_a_real_moves_few_other_buckets() {
    let reals = candidates(&[1, 1, 1, 1, 1]);
    let before = mh(&reals, 65537, false);
    let after = mh(&reals[..4], 65537, false);
    let kept: Vec<(&u32, &u32)> = before.iter().zip(&after).filter(|(old, _)| **old != 104).collect();
    let moved = kept.iter().filter(|(old, new)| old != new).count() as f64 / kept.len() as f64;
    assert!(moved < 0.05, "{moved} of the others' buckets moved");
}

#[test]
fn mh_table_is_pinned() {
    // The hashes are fixed arithmetic: a change here changes every director's choices
    // and must be deliberate (all directors of a site are to run the same).
    let table = mh(&candidates(&[1, 2, 3]), 251, false);
    assert_eq!(table[..16], [102, 102, 101, 102, 102, 101, 100, 102, 102, 101, 101, 102, 101, 101, 100, 100]);
}

#[test]
fn next_available_wraps_round_the_table() {
    assert_eq!(next_available(&[NO_REAL, 7, NO_REAL, 9, NO_REAL]), [7, 7, 9, 9, 7]);
    assert_eq!(next_available(&[NO_REAL; 3]), [NO_REAL; 3]);
}
