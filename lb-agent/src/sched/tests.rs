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
    weights.iter().enumerate().map(|(i, &weight)| Candidate { id: i as u32 + 100, weight, reachable: true }).collect()
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
        let sequence = sequence(Scheduler::Wrr, false, &candidates(weights));
        let mut ipvs = IpvsWrr::new(weights);
        // Two cycles: the sequence repeats exactly as IPVS's does.
        let expected: Vec<u32> = (0..sequence.len() * 2).map(|_| ipvs.next() as u32 + 100).collect();
        let twice: Vec<u32> = sequence.iter().chain(&sequence).copied().collect();
        assert_eq!(twice, expected, "weights {weights:?}");
    }
}

#[test]
fn wrr_cycle_holds_each_real_weight_over_gcd_times() {
    let sequence = sequence(Scheduler::Wrr, false, &candidates(&[2, 4, 6]));
    assert_eq!(sequence, vec![102, 101, 102, 100, 101, 102]);
    let sequence = sequence_counts(&[1, 2, 3]);
    assert_eq!(sequence, vec![1, 2, 3]);
}

fn sequence_counts(weights: &[u32]) -> Vec<usize> {
    let sequence = sequence(Scheduler::Wrr, false, &candidates(weights));
    (0..weights.len()).map(|i| sequence.iter().filter(|&&id| id == i as u32 + 100).count()).collect()
}

#[test]
fn weight_zero_takes_no_new_connections() {
    assert_eq!(sequence_counts(&[0, 3, 0]), vec![0, 1, 0]);
    assert!(sequence(Scheduler::Wrr, false, &candidates(&[0, 0])).is_empty());
    assert_eq!(sequence(Scheduler::Rr, false, &candidates(&[1, 0, 5])), vec![100, 102]);
}

#[test]
fn rr_ignores_weights_above_zero() {
    assert_eq!(sequence(Scheduler::Rr, false, &candidates(&[1, 9, 3])), vec![100, 101, 102]);
    assert!(sequence(Scheduler::Rr, false, &[]).is_empty());
}

#[test]
fn oversized_wrr_cycle_is_scaled_in_proportion() {
    let weights = [65535, 65534, 1, 40000];
    let sequence = sequence(Scheduler::Wrr, false, &candidates(&weights));
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
