//! mh: IPVS's Maglev lookup table (`ip_vs_mh.c`, after the Maglev paper's §3.4).
//!
//! Each real server that has ever had a weight walks its own permutation of the
//! buckets (an offset and a skip, from hashes of its address and port) and, in turn,
//! takes the next bucket of it that is still free, as many per turn as its weight
//! allows, until every bucket is taken. The hashes and the order of the turns depend
//! only on what the real servers are, so every director with the same real servers
//! computes the same table, whatever ids it gave them; and a real server that comes or
//! goes moves few buckets of the others.

use std::net::{IpAddr, SocketAddr};

use lb_common::service::NO_REAL;

use super::{Candidate, next_available};

/// IPVS's `IP_VS_MH_TAB_BITS`: how many bits of max weight / gcd keep their turns as
/// they are; larger weights are shifted down to this many.
const TAB_BITS: u32 = 6;
/// Seeds of the offset's and the skip's hash: the keys IPVS gives hsiphash
/// (`generate_hash_secret`).
const OFFSET_SEED: u64 = 2_654_435_761;
const SKIP_SEED: u64 = 2_654_446_892;

/// A real server's walk through the table: IPVS's `ip_vs_mh_dest_setup`.
struct Walk<'a> {
    candidate: &'a Candidate,
    /// The bucket it looks at next, and how far it steps when that one is taken.
    next: u32,
    skip: u32,
    /// Buckets it takes per turn.
    turns: u32,
}

/// The service's Maglev table of `size` buckets (a prime) as real-server ids. A
/// bucket whose real server cannot take a new connection (quiesced, unreachable) holds
/// `NO_REAL`, as IPVS's `is_unavailable`, or, with `fallback`, the first real server
/// from it on that can (`NO_REAL` if none can). Empty when no real server has a place.
///
/// IPVS's fallback hashes the client again with each next offset until it finds an
/// available real server, a hash per probe on the data path. Ours takes the next
/// available bucket of the same table, which the agent works out beforehand, so a
/// lookup is one read either way; a quiesced server's clients still spread over the
/// others about as their buckets do, since the table interleaves them.
pub fn table(candidates: &[Candidate], size: u32, fallback: bool) -> Vec<u32> {
    let mut walks = permutations(candidates, size);
    if walks.is_empty() {
        return Vec::new();
    }
    let owners = populate(&mut walks, size);
    let table: Vec<u32> = owners.iter().map(|c| if c.available() { c.id } else { NO_REAL }).collect();
    if fallback { next_available(&table) } else { table }
}

/// IPVS's `ip_vs_mh_permutate`, over the real servers that have a place (a last
/// weight above 0), in the order of their addresses and ports: IPVS walks its list
/// (newest first), which would make the table depend on the order of configuration.
fn permutations(candidates: &[Candidate], size: u32) -> Vec<Walk<'_>> {
    let gcd = candidates.iter().map(|c| c.last_weight).fold(0, super::gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let max = candidates.iter().map(|c| c.last_weight).max().unwrap_or(0) / gcd;
    // IPVS's ip_vs_mh_shift_weight: fls(max / gcd) - IP_VS_MH_TAB_BITS, at least 0.
    let shift = (u32::BITS - max.leading_zeros()).saturating_sub(TAB_BITS);
    let mut walks: Vec<Walk> = candidates
        .iter()
        .filter(|c| c.last_weight > 0)
        .map(|candidate| {
            let (offset, skip) = offset_and_skip(candidate.address, size);
            Walk { candidate, next: offset, skip, turns: ((candidate.last_weight / gcd) >> shift).max(1) }
        })
        .collect();
    walks.sort_by_key(|walk| walk.candidate.address);
    walks
}

/// IPVS's `ip_vs_mh_populate`: the real servers in turn, each taking `turns` buckets
/// per turn, the next free one of its permutation each time, until all are taken.
/// `size` is a prime, so every skip reaches every bucket.
fn populate<'a>(walks: &mut [Walk<'a>], size: u32) -> Vec<&'a Candidate> {
    let mut table: Vec<Option<&Candidate>> = vec![None; size as usize];
    let mut filled = 0;
    'filling: loop {
        for walk in walks.iter_mut() {
            for _ in 0..walk.turns {
                while table[walk.next as usize].is_some() {
                    walk.next = (walk.next + walk.skip) % size;
                }
                table[walk.next as usize] = Some(walk.candidate);
                filled += 1;
                if filled == table.len() {
                    break 'filling;
                }
            }
        }
    }
    table.into_iter().map(|bucket| bucket.expect("every bucket filled")).collect()
}

/// Where a real server's walk through a table of `size` buckets starts, and how far it
/// steps: IPVS's `hash % size` and `hash % (size - 1) + 1`, with two hashes of
/// [`real_hash`]'s.
pub fn offset_and_skip(address: SocketAddr, size: u32) -> (u32, u32) {
    let offset = real_hash(OFFSET_SEED, address) % u64::from(size);
    let skip = real_hash(SKIP_SEED, address) % u64::from(size - 1) + 1;
    (offset as u32, skip as u32)
}

/// A real server's hash for its place in the table: its address (16 bytes, an IPv4
/// one in the first four), IP version and port, a 64-bit word at a time, each mixed in
/// by murmur3's 64-bit finalizer. Fixed arithmetic only, so it is the same on every
/// machine and with every compiler (unlike std's `DefaultHasher`).
fn real_hash(seed: u64, address: SocketAddr) -> u64 {
    let (high, low, version) = match address.ip() {
        IpAddr::V4(v4) => (u64::from(v4.to_bits()) << 32, 0, 4),
        IpAddr::V6(v6) => ((v6.to_bits() >> 64) as u64, v6.to_bits() as u64, 6),
    };
    [high, low, (version << 16) | u64::from(address.port())].into_iter().fold(seed, |hash, word| fmix64(hash ^ word))
}

/// murmur3's `fmix64`: every bit of the input moves every bit of the output.
fn fmix64(mut value: u64) -> u64 {
    value ^= value >> 33;
    value = value.wrapping_mul(0xff51_afd7_ed55_8ccd);
    value ^= value >> 33;
    value = value.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    value ^ (value >> 33)
}
