use super::*;

const LBLC: u8 = Scheduler::Lblc as u8;
const LBLCR: u8 = Scheduler::Lblcr as u8;
const EXPIRATION: u32 = 100;
const ORPHANED: u32 = 2;

fn key(scheduler: u8) -> LocalityKey {
    LocalityKey::of(&[203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 4, 3, scheduler)
}

/// An entry of `members` (oldest first), used at `last_used`, its set changed at
/// `last_modified`.
fn entry(members: &[u32], last_used: u32, last_modified: u32) -> Locality {
    let mut reals = [NO_REAL; LOCALITY_SET_SIZE];
    reals[..members.len()].copy_from_slice(members);
    Locality { reals, last_used, last_modified }
}

/// Service 3, of `scheduler`, with real servers 0 to 4.
fn services(scheduler: u8) -> HashMap<u32, Localizing> {
    HashMap::from([(3, Localizing { scheduler, expiration: EXPIRATION, reals: (0..5).collect() })])
}

/// Loads of real servers 0 to 4: (weight, active, inactive).
fn loads(of: [(u32, i64, i64); 5]) -> Vec<RealLoad> {
    of.iter().map(|&(weight, active, inactive)| RealLoad { active, inactive, weight, ..RealLoad::default() }).collect()
}

fn fate_at(now: u32, scheduler: u8, entry: &Locality, loads: &[RealLoad]) -> Option<Fate> {
    fate(now, &key(scheduler), entry, &services(scheduler), loads, ORPHANED)
}

const EVEN: [(u32, i64, i64); 5] = [(1, 0, 0); 5];

#[test]
fn an_entry_goes_once_unused_for_longer_than_the_expiration() {
    for scheduler in [LBLC, LBLCR] {
        let used = entry(&[2], 1000, 1000);
        assert_eq!(fate_at(1000 + EXPIRATION, scheduler, &used, &loads(EVEN)), None, "not longer yet");
        assert_eq!(fate_at(1001 + EXPIRATION, scheduler, &used, &loads(EVEN)), Some(Fate::Expire));
        assert_eq!(fate_at(900, scheduler, &used, &loads(EVEN)), None, "a stamp from after the walk's now");
    }
}

#[test]
fn an_entry_of_a_service_no_longer_lblc_or_lblcr_goes_after_a_walks_interval() {
    let used = entry(&[2], 1000, 1000);
    let other = fate(1000 + ORPHANED, &key(LBLC), &used, &HashMap::new(), &loads(EVEN), ORPHANED);
    assert_eq!(other, None, "a reload may have made it lblc during the walk");
    let other = fate(1001 + ORPHANED, &key(LBLC), &used, &HashMap::new(), &loads(EVEN), ORPHANED);
    assert_eq!(other, Some(Fate::Expire));
    let switched = fate(1001 + ORPHANED, &key(LBLC), &used, &services(LBLCR), &loads(EVEN), ORPHANED);
    assert_eq!(switched, Some(Fate::Expire), "lblc's entry in what is now an lblcr service");
}

#[test]
fn a_removed_real_server_leaves_and_an_entry_left_without_one_goes() {
    let removed = 7;
    assert_eq!(fate_at(1000, LBLC, &entry(&[removed], 1000, 1000), &loads(EVEN)), Some(Fate::Expire));
    let shrunk = fate_at(1000, LBLCR, &entry(&[1, removed, 3], 1000, 990), &loads(EVEN));
    assert_eq!(shrunk, Some(Fate::Shrink { entry: entry(&[1, 3], 1000, 990), erased: None }), "unchanged lastmod");
    assert_eq!(fate_at(1000, LBLCR, &entry(&[removed], 1000, 1000), &loads(EVEN)), Some(Fate::Expire));
}

#[test]
fn a_set_used_after_going_unchanged_for_the_expiration_loses_its_most_loaded_member() {
    let busy = loads([(1, 0, 0), (2, 3, 0), (1, 2, 0), (1, 0, 0), (1, 0, 0)]);
    // Used no later than the expiration after it last changed: it stays.
    let set = entry(&[0, 1, 2], 1000 + EXPIRATION, 1000);
    assert_eq!(fate_at(1000 + EXPIRATION, LBLCR, &set, &busy), None);
    // Used later: 2 has 2 active per weight 1, more than 1's 3 per weight 2.
    let set = entry(&[0, 1, 2], 1001 + EXPIRATION, 1000);
    let now = 1002 + EXPIRATION;
    assert_eq!(
        fate_at(now, LBLCR, &set, &busy),
        Some(Fate::Shrink { entry: entry(&[0, 1], set.last_used, now), erased: Some(2) })
    );
    // Not used since: IPVS waits for a connection to shrink it.
    let unused = entry(&[0, 1, 2], 1000, 1000);
    assert_eq!(fate_at(1000 + EXPIRATION, LBLCR, &unused, &busy), None);
    // A set of one keeps it; lblc's entry has no set.
    assert_eq!(fate_at(now, LBLCR, &entry(&[2], 1001 + EXPIRATION, 1000), &busy), None);
    assert_eq!(fate_at(now, LBLC, &entry(&[2], 1001 + EXPIRATION, 1000), &busy), None);
}

#[test]
fn the_most_loaded_member_is_ipvs_s_the_newest_first_of_equals_and_never_a_quiesced_one() {
    let stale = |members: &[u32]| entry(members, 1001 + EXPIRATION, 1000);
    let erased = |members: &[u32], loads: &[RealLoad]| match fate_at(1001 + EXPIRATION, LBLCR, &stale(members), loads) {
        Some(Fate::Shrink { erased, .. }) => erased,
        other => panic!("{other:?}"),
    };
    assert_eq!(erased(&[0, 1, 2], &loads(EVEN)), Some(2), "all equal: the newest, first in IPVS's list");
    assert_eq!(erased(&[2, 1, 0], &loads(EVEN)), Some(0));
    // Overhead is active × 256 + inactive, per weight: 1 (256 + 10) / 1 against 0 (3 × 256) / 3.
    let weighed = loads([(3, 3, 0), (1, 1, 10), (1, 0, 0), (0, 9, 9), (1, 0, 0)]);
    assert_eq!(erased(&[0, 1, 2], &weighed), Some(1));
    assert_eq!(erased(&[3, 2], &weighed), Some(2), "weight 0 is never the most loaded");
    let quiesced = loads([(1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 9, 9), (0, 1, 1)]);
    assert_eq!(fate_at(1001 + EXPIRATION, LBLCR, &stale(&[3, 4]), &quiesced), None, "no member with a weight");
}

#[test]
fn a_table_above_ipvs_s_size_loses_entries_unused_for_six_minutes() {
    assert_eq!(over_size_goal(MAX_SIZE), 0);
    assert_eq!(over_size_goal(MAX_SIZE + 3), 4, "(entries - max) × 4 / 3");
    assert_eq!(over_size_goal(10 * MAX_SIZE), MAX_SIZE / 2, "at most half the size at once");
    assert!(!crowded_out(1000 + ENTRY_TIMEOUT, &entry(&[1], 1000, 1000)));
    assert!(crowded_out(1001 + ENTRY_TIMEOUT, &entry(&[1], 1000, 1000)));
}
