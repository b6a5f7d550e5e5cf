//! The schedulers through `BPF_PROG_TEST_RUN`: for thousands of new flows, the real
//! server the data path chooses is the one a model of IPVS's own code chooses (written
//! again here from it, list walks and all): the hashing ones (`ip_vs_sh.c`,
//! `ip_vs_dh.c`, `ip_vs_mh.c`) with weights, quiesced real servers, `sh-port`,
//! `sh-fallback`, `mh-port` and `mh-fallback`, and mh's shares, disruption and
//! determinism across directors; the
//! dynamic ones (`ip_vs_lc.c`, `ip_vs_wlc.c`, `ip_vs_sed.c`, `ip_vs_nq.c`, `ip_vs_fo.c`,
//! `ip_vs_ovf.c`) as connections open, close and go, and weights and thresholds change
//! (`ip_vs_bind_dest`, `ip_vs_unbind_dest`, `__ip_vs_update_dest`); and lblc and lblcr
//! (`ip_vs_lblc.c`, `ip_vs_lblcr.c`) for many destination addresses of a firewall-mark
//! service as well, with real servers removed and added back, and their tables aged
//! by the agent's ager.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    thread::sleep,
    time::Duration,
};

use lb_agent::{
    director::{Director, address_bytes},
    sched::offset_and_skip,
};
use lb_common::service::NO_REAL;
use lb_tests::{
    bed::{self, AgedBed, XDP_DROP, XDP_TX, real_mac},
    packet::{self, TCP_ACK, TCP_FIN, TCP_SYN},
};

const REALS4: [&str; 5] = ["198.18.1.11", "198.18.1.12", "198.18.1.13", "198.18.1.14", "198.18.1.15"];
const REALS6: [&str; 5] = ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13", "2001:db8:1::14", "2001:db8:1::15"];
const FLOWS: u32 = 3000;
/// IPVS's IP_VS_SH_TAB_BITS and IP_VS_DH_TAB_BITS.
const TAB_BITS: u32 = 8;
const TAB_SIZE: usize = 1 << TAB_BITS;

/// The kernel's `hash_32`.
fn hash_32(value: u32) -> usize {
    (value.wrapping_mul(0x61c8_8647) >> (32 - TAB_BITS)) as usize
}

/// `addr_fold`, as host order: the IPv4 address, or the XOR of an IPv6 address's words.
fn fold(address: IpAddr) -> u32 {
    match address {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let octets = v6.octets();
            (0..4).map(|i| u32::from_be_bytes(octets[4 * i..4 * i + 4].try_into().unwrap())).fold(0, |a, w| a ^ w)
        }
    }
}

/// `ip_vs_sh_hashkey`.
fn sh_hashkey(address: IpAddr, port: u16, offset: usize) -> usize {
    (offset + hash_32(u32::from(port).wrapping_add(fold(address)))) & (TAB_SIZE - 1)
}

/// A real server as IPVS's list holds it: its index in the configuration, its weight.
#[derive(Clone, Copy)]
struct Dest {
    index: usize,
    weight: u32,
}

/// `ip_vs_sh_reassign`: `weight` buckets each (at least one), in list order, round and
/// round.
fn sh_reassign(dests: &[Dest]) -> Vec<Option<Dest>> {
    let mut buckets = vec![None; TAB_SIZE];
    let (mut p, mut d_count) = (0, 0);
    for bucket in buckets.iter_mut() {
        if dests.is_empty() {
            continue;
        }
        let dest = dests[p % dests.len()];
        *bucket = Some(dest);
        d_count += 1;
        if d_count >= dest.weight {
            p += 1;
            d_count = 0;
        }
    }
    buckets
}

/// `ip_vs_dh_reassign`: one bucket each, in list order.
fn dh_reassign(dests: &[Dest]) -> Vec<Option<Dest>> {
    (0..TAB_SIZE).map(|i| (!dests.is_empty()).then(|| dests[i % dests.len()])).collect()
}

/// Which real servers are overloaded (`IP_VS_DEST_F_OVERLOAD`), by index.
type Overloaded<'a> = &'a dyn Fn(usize) -> bool;

/// Nothing overloaded: a service without thresholds.
fn never(_: usize) -> bool {
    false
}

/// sh's and dh's `is_unavailable` (dh's `is_overloaded` and weight check).
fn is_unavailable(dest: &Dest, overloaded: Overloaded) -> bool {
    dest.weight == 0 || overloaded(dest.index)
}

/// `ip_vs_sh_get` and `ip_vs_sh_get_fallback`.
fn sh_schedule(
    buckets: &[Option<Dest>],
    address: IpAddr,
    port: u16,
    fallback: bool,
    overloaded: Overloaded,
) -> Option<usize> {
    let ihash = sh_hashkey(address, port, 0);
    let dest = buckets[ihash]?;
    if !is_unavailable(&dest, overloaded) {
        return Some(dest.index);
    }
    if !fallback {
        return None;
    }
    for offset in 0..TAB_SIZE {
        let roffset = (offset + ihash) % TAB_SIZE;
        let dest = buckets[sh_hashkey(address, port, roffset)]?;
        if !is_unavailable(&dest, overloaded) {
            return Some(dest.index);
        }
    }
    None
}

/// `ip_vs_dh_schedule`.
fn dh_schedule(buckets: &[Option<Dest>], address: IpAddr, overloaded: Overloaded) -> Option<usize> {
    buckets[hash_32(fold(address))].filter(|dest| !is_unavailable(dest, overloaded)).map(|dest| dest.index)
}

/// A little generator of client addresses and ports, the same in every run.
struct Clients(u64);

impl Clients {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as u32
    }

    fn client(&mut self, ipv6: bool) -> SocketAddr {
        let word = self.next();
        let port = 1024 + (self.next() % 60000) as u16;
        let ip: IpAddr = if ipv6 {
            let [a, b, c, d] = word.to_be_bytes();
            format!(
                "2001:db8:2:{:x}:{:x}::{:x}",
                self.next() & 0xffff,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d])
            )
            .parse()
            .unwrap()
        } else {
            let [_, b, c, d] = word.to_be_bytes();
            IpAddr::from([198, 18 + (b & 1), c, d])
        };
        SocketAddr::new(ip, port)
    }
}

fn services(scheduler: &str, flags: &str, vips: &[String], weights: &[u32]) -> String {
    let mut yaml = String::new();
    for (i, vip) in vips.iter().enumerate() {
        let reals = if vip.contains(':') { REALS6 } else { REALS4 };
        let reals: Vec<String> = reals
            .iter()
            .zip(weights)
            .map(|(real, weight)| format!("{{ address: \"{real}\", weight: {weight} }}"))
            .collect();
        yaml += &format!(
            "  - {{ name: s{i}, vip: \"{vip}\", port: 80, protocol: tcp, scheduler: {scheduler}, \
             scheduler_flags: [{flags}], reals: [{}] }}\n",
            reals.join(", ")
        );
    }
    yaml
}

/// The index of the real server a SYN went to, or None when it was dropped.
fn chosen(director: &Director, client: SocketAddr, vip: &str) -> Option<usize> {
    let syn = packet::tcp_frame(client, SocketAddr::new(vip.parse().unwrap(), 80), TCP_SYN, b"");
    let run = bed::run(director.dataplane().program(), &syn).unwrap();
    if run.verdict == XDP_DROP {
        return None;
    }
    assert_eq!(run.verdict, XDP_TX, "{client} -> {vip}");
    let reals = if vip.contains(':') { REALS6 } else { REALS4 };
    Some(reals.iter().position(|real| real_mac(real) == run.frame[..6]).expect("a real server's MAC"))
}

fn dests(weights: &[u32]) -> Vec<Dest> {
    weights.iter().enumerate().map(|(index, &weight)| Dest { index, weight }).collect()
}

#[test]
fn sh_chooses_as_ipvs_does_with_weights_quiesced_servers_port_and_fallback() {
    let vips = ["203.0.113.10".to_string(), "2001:db8:100::10".to_string()];
    let mut clients = Clients(0x5eed);
    for (weights, flags) in [
        ([1, 2, 3, 4], ""),
        ([3, 0, 2, 1], ""),
        ([3, 0, 2, 1], "sh-fallback"),
        ([5, 1, 0, 0], "sh-port, sh-fallback"),
        ([2, 2, 1, 1], "sh-port"),
    ] {
        let director = bed::director(&services("sh", flags, &vips, &weights), 1 << 16, bed::on_ingress).unwrap();
        let buckets = sh_reassign(&dests(&weights));
        check_against_model(&director, &vips, &mut clients, &format!("sh {weights:?} [{flags}]"), |client, _| {
            let port = if flags.contains("sh-port") { client.port() } else { 0 };
            sh_schedule(&buckets, client.ip(), port, flags.contains("sh-fallback"), &never)
        });
    }
}

/// Sends `FLOWS` new flows from `clients` to each of `vips`, each to the real server
/// `model` chooses for it (`None`: refused), and prints how many each one took.
fn check_against_model(
    director: &Director,
    vips: &[String],
    clients: &mut Clients,
    case: &str,
    model: impl Fn(SocketAddr, &str) -> Option<usize>,
) {
    let (mut dropped, mut counts) = (0, [0u32; 4]);
    for vip in vips {
        for _ in 0..FLOWS {
            let client = clients.client(vip.contains(':'));
            let got = chosen(director, client, vip);
            assert_eq!(got, model(client, vip), "{case}: {client} -> {vip}");
            match got {
                Some(index) => counts[index] += 1,
                None => dropped += 1,
            }
        }
    }
    println!("{case}: {counts:?} per real server, {dropped} without one");
}

#[test]
fn dh_chooses_by_destination_as_ipvs_does() {
    // A service per destination address: dh spreads destinations, as for caches.
    let vips: Vec<String> = (100..164).map(|last| format!("203.0.113.{last}")).collect();
    let mut clients = Clients(0xd00d);
    for weights in [[1, 1, 1, 1], [4, 0, 1, 2]] {
        let director = bed::director(&services("dh", "", &vips, &weights), 1 << 16, bed::on_ingress).unwrap();
        let buckets = dh_reassign(&dests(&weights));
        for vip in &vips {
            let expected = dh_schedule(&buckets, vip.parse().unwrap(), &never);
            for _ in 0..20 {
                let client = clients.client(false);
                assert_eq!(chosen(&director, client, vip), expected, "{weights:?} {client} -> {vip}");
            }
        }
    }
}

/// A real server as IPVS's mh sees it: its place in the configuration, address and
/// port, weight and `last_weight` (`__ip_vs_update_dest` sets it when a real server is
/// added, and again with each weight above 0).
#[derive(Clone, Copy, Debug)]
struct MhDest {
    index: usize,
    address: SocketAddr,
    weight: u32,
    last_weight: u32,
}

/// IPVS's `IP_VS_MH_TAB_BITS`.
const MH_TAB_BITS: u32 = 6;

/// The kernel's `gcd`.
fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// IPVS's `ip_vs_mh_dest_setup`.
struct MhSetup {
    perm: u32,
    skip: u32,
    turns: u32,
}

/// `ip_vs_mh_gcd_weight`, `ip_vs_mh_shift_weight`, `ip_vs_mh_permutate` and
/// `ip_vs_mh_populate`, over IPVS's list `dests`. Offsets and skips come from the
/// agent's hash of each real server (`offset_and_skip`), where IPVS's come from
/// hsiphash.
fn mh_reassign(dests: &[MhDest], size: u32) -> Vec<Option<MhDest>> {
    let mut lookup = vec![None; size as usize];
    let mut g = 0;
    for dest in dests.iter().filter(|dest| dest.last_weight > 0) {
        g = if g > 0 { gcd(dest.last_weight, g) } else { dest.last_weight };
    }
    if g < 1 {
        return lookup;
    }
    let mw = dests.iter().map(|dest| dest.last_weight).max().unwrap() / g;
    let rshift = (u32::BITS - mw.leading_zeros()).saturating_sub(MH_TAB_BITS);
    let mut setup: Vec<MhSetup> = dests
        .iter()
        .map(|dest| {
            let (offset, skip) = offset_and_skip(dest.address, size);
            let turns = match (dest.last_weight / g) >> rshift {
                0 => u32::from(dest.last_weight != 0),
                turns => turns,
            };
            MhSetup { perm: offset, skip, turns }
        })
        .collect();
    let mut table = vec![false; size as usize];
    let (mut n, mut dt_count) = (0, 0);
    while n < size {
        let mut p = 0;
        while p < dests.len() {
            let ds = &mut setup[p];
            if ds.turns < 1 {
                p += 1;
                continue;
            }
            while table[ds.perm as usize] {
                ds.perm += ds.skip;
                if ds.perm >= size {
                    ds.perm -= size;
                }
            }
            table[ds.perm as usize] = true;
            lookup[ds.perm as usize] = Some(dests[p]);
            n += 1;
            if n == size {
                return lookup;
            }
            dt_count += 1;
            if dt_count >= ds.turns {
                dt_count = 0;
                p += 1;
            }
        }
    }
    lookup
}

/// The data path's hash of a client for mh: IPVS's fold of the address plus the port,
/// mixed by murmur3's fmix32.
fn mh_hashkey(address: IpAddr, port: u16) -> u32 {
    let mut hash = fold(address).wrapping_add(u32::from(port));
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

/// `ip_vs_mh_get`, and with `fallback` `ip_vs_mh_get_fallback` as the agent's table
/// does it: where IPVS hashes the client again with each next offset, the buckets
/// after the client's, in order.
fn mh_schedule(
    lookup: &[Option<MhDest>],
    address: IpAddr,
    port: u16,
    fallback: bool,
    overloaded: Overloaded,
) -> Option<usize> {
    let available = |dest: &MhDest| dest.weight > 0 && !overloaded(dest.index);
    let ihash = mh_hashkey(address, port) as usize % lookup.len();
    let dest = lookup[ihash]?;
    if available(&dest) {
        return Some(dest.index);
    }
    if !fallback {
        return None;
    }
    for offset in 0..lookup.len() {
        let dest = lookup[(ihash + offset) % lookup.len()]?;
        if available(&dest) {
            return Some(dest.index);
        }
    }
    None
}

/// The real servers of a service of `vip`'s family after the configurations of
/// `history`, in the list order of the agent's table: by address (IPVS's list is
/// newest first).
fn mh_dests(vip: &str, history: &[&[u32]]) -> Vec<MhDest> {
    let reals = if vip.contains(':') { REALS6 } else { REALS4 };
    let mut dests: Vec<MhDest> = (0..history[0].len())
        .map(|index| {
            let last_weight = history.iter().rev().map(|weights| weights[index]).find(|&weight| weight > 0);
            let address = SocketAddr::new(reals[index].parse().unwrap(), 80);
            MhDest { index, address, weight: history[history.len() - 1][index], last_weight: last_weight.unwrap_or(0) }
        })
        .collect();
    dests.sort_by_key(|dest| dest.address);
    dests
}

/// An mh service's scheduling words: the service's flow mapping takes the table's size
/// after the scheduler's name.
fn mh(size: u32) -> String {
    format!("mh, mh_table_size: {size}")
}

#[test]
fn mh_chooses_as_the_model_of_ipvs_does_with_weights_quiesced_servers_port_and_fallback() {
    let vips = ["203.0.113.10".to_string(), "2001:db8:100::10".to_string()];
    let mut clients = Clients(0x3a91);
    let cases: [(&[&[u32]], &str, u32); 5] = [
        (&[&[1, 2, 3, 4]], "", 65537),
        (&[&[1, 2, 3, 4], &[1, 0, 3, 4]], "", 4093),
        (&[&[1, 2, 3, 4], &[1, 0, 3, 4]], "mh-fallback", 65537),
        // The third never had a weight: no place.
        (&[&[5, 1, 0, 2]], "mh-port, mh-fallback", 251),
        (&[&[2, 2, 1, 1], &[2, 9, 1, 1], &[2, 0, 1, 0]], "mh-port", 4093),
    ];
    for (history, flags, size) in cases {
        let mut director =
            bed::director(&services(&mh(size), flags, &vips, history[0]), 1 << 16, bed::on_ingress).unwrap();
        for weights in &history[1..] {
            bed::reconfigure(&mut director, &services(&mh(size), flags, &vips, weights), bed::on_ingress).unwrap();
        }
        let lookups = vips.each_ref().map(|vip| mh_reassign(&mh_dests(vip, history), size));
        let case = format!("mh {history:?} [{flags}] {size}");
        check_against_model(&director, &vips, &mut clients, &case, |client, vip| {
            let lookup = &lookups[usize::from(vip.contains(':'))];
            let port = if flags.contains("mh-port") { client.port() } else { 0 };
            mh_schedule(lookup, client.ip(), port, flags.contains("mh-fallback"), &never)
        });
    }
}

#[test]
fn mh_shares_follow_the_weights() {
    const SHARE_FLOWS: u32 = 100_000;
    let weights = [1, 2, 3, 4];
    let total: u32 = weights.iter().sum();
    let mut clients = Clients(0x5ba2e);
    for vip in ["203.0.113.10", "2001:db8:100::10"] {
        let director =
            bed::director(&services("mh", "", &[vip.to_string()], &weights), 1 << 17, bed::on_ingress).unwrap();
        let mut counts = [0u32; 4];
        for _ in 0..SHARE_FLOWS {
            let client = clients.client(vip.contains(':'));
            counts[chosen(&director, client, vip).expect("a real server")] += 1;
        }
        let shares: Vec<f64> = counts.iter().map(|&count| f64::from(count) / f64::from(SHARE_FLOWS)).collect();
        println!("mh shares of {SHARE_FLOWS} flows to {vip}, weights {weights:?}: {shares:.4?}");
        for (share, weight) in shares.iter().zip(weights) {
            let expected = f64::from(weight) / f64::from(total);
            assert!((share - expected).abs() <= 0.01, "{shares:?}: weight {weight} should have {expected}");
        }
    }
}

/// The real server each of `flows` goes to as a new connection from `port_step` ports
/// further on. Without mh-port the client's address alone picks its bucket, and
/// another port makes a new connection (an established one stays where it is).
fn choices(director: &Director, flows: &[(SocketAddr, &str)], port_step: u16) -> Vec<Option<usize>> {
    let again = |client: SocketAddr| SocketAddr::new(client.ip(), client.port() + port_step);
    flows.iter().map(|&(client, vip)| chosen(director, again(client), vip)).collect()
}

#[test]
fn mh_removing_a_real_server_moves_few_other_flows_and_quiescing_moves_none() {
    const REMOVED: usize = 4;
    const QUIESCED: usize = 2;
    let vips = ["203.0.113.10".to_string(), "2001:db8:100::10".to_string()];
    let weights = [1, 1, 1, 1, 1];
    let mut director = bed::director(&services("mh", "", &vips, &weights), 1 << 17, bed::on_ingress).unwrap();
    let mut clients = Clients(0xd15c);
    let flows: Vec<(SocketAddr, &str)> = vips
        .iter()
        .flat_map(|vip| (0..5000).map(|_| (clients.client(vip.contains(':')), vip.as_str())).collect::<Vec<_>>())
        .collect();
    let before = choices(&director, &flows, 0);

    bed::reconfigure(&mut director, &services("mh", "", &vips, &weights[..REMOVED]), bed::on_ingress).unwrap();
    let after = choices(&director, &flows, 1);
    let others: Vec<(&Option<usize>, &Option<usize>)> =
        before.iter().zip(&after).filter(|(old, _)| **old != Some(REMOVED)).collect();
    let moved = others.iter().filter(|(old, new)| old != new).count() as f64 / others.len() as f64;
    println!(
        "mh: removing 1 of 5 real servers moved {:.2}% of the {} flows of the others",
        moved * 100.0,
        others.len()
    );
    assert!(moved <= 0.05, "{moved}");
    assert!(after.iter().all(|real| real.is_some_and(|real| real != REMOVED)));

    let mut quiesced = weights;
    quiesced[QUIESCED] = 0;
    bed::reconfigure(&mut director, &services("mh", "", &vips, &quiesced), bed::on_ingress).unwrap();
    let after = choices(&director, &flows, 2);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(*new, old.filter(|&real| real != QUIESCED), "quiescing moves no other flow");
    }
}

/// An mh service per family, with the real servers of `reals` (their indexes in
/// `REALS4` and `REALS6`, and weights) listed in that order.
fn listed(scheduling: &str, reals: &[(usize, u32)]) -> String {
    let vips = ["203.0.113.10", "2001:db8:100::10"];
    let service = |(i, vip): (usize, &str)| {
        let addresses = if vip.contains(':') { REALS6 } else { REALS4 };
        let reals: Vec<(&str, u32)> = reals.iter().map(|&(index, weight)| (addresses[index], weight)).collect();
        bed::service(&format!("s{i}"), vip, 80, "tcp", scheduling, &reals)
    };
    vips.into_iter().enumerate().map(service).collect()
}

#[test]
fn mh_directors_with_other_histories_choose_the_same_real_servers() {
    // A small table, so the flows reach nearly every bucket.
    let size = mh(251);
    let mut one = bed::director(&listed(&size, &[(0, 1), (1, 2), (2, 3), (3, 4)]), 1 << 16, bed::on_ingress).unwrap();
    bed::reconfigure(&mut one, &listed(&size, &[(0, 1), (1, 0), (2, 3), (3, 4)]), bed::on_ingress).unwrap();
    // Another director gave its first ids to a real server it has lost since, and
    // lists the same real servers the other way round; the quiesced one had the same
    // weight before.
    let mut other = bed::director(&listed(&size, &[(4, 1), (3, 4)]), 1 << 16, bed::on_ingress).unwrap();
    for reals in [[(3, 4), (2, 3), (1, 2), (0, 1)], [(3, 4), (2, 3), (1, 0), (0, 1)]] {
        bed::reconfigure(&mut other, &listed(&size, &reals), bed::on_ingress).unwrap();
    }
    let mut clients = Clients(0x0d17);
    for vip in ["203.0.113.10", "2001:db8:100::10"] {
        for _ in 0..FLOWS {
            let client = clients.client(vip.contains(':'));
            assert_eq!(chosen(&one, client, vip), chosen(&other, client, vip), "{client} -> {vip}");
        }
    }
}

/// A real server as IPVS's dynamic schedulers see it (`struct ip_vs_dest`).
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    weight: u32,
    active: i64,
    inactive: i64,
    u_threshold: u32,
    l_threshold: u32,
    overload: bool,
    /// No longer in the service's list (IPVS's trash; not `IP_VS_DEST_F_AVAILABLE`).
    removed: bool,
}

impl Load {
    /// `ip_vs_dest_conn_overhead`.
    fn conn_overhead(&self) -> i64 {
        (self.active << 8) + self.inactive
    }
}

/// `ip_vs_lc_schedule`.
fn lc_schedule(dests: &[Load]) -> Option<usize> {
    let mut least: Option<(usize, i64)> = None;
    for (i, dest) in dests.iter().enumerate() {
        if dest.overload || dest.weight == 0 {
            continue;
        }
        let doh = dest.conn_overhead();
        if least.is_none_or(|(_, loh)| doh < loh) {
            least = Some((i, doh));
        }
    }
    least.map(|(i, _)| i)
}

/// `ip_vs_wlc_schedule` (`overhead` = `ip_vs_dest_conn_overhead`) and
/// `ip_vs_sed_schedule` (`overhead` = `ip_vs_sed_dest_overhead`, active + 1): the first
/// available real server, then any whose overhead per weight is smaller. A removed one
/// is no longer in the service's list.
fn weighted_least(dests: &[Load], overhead: fn(&Load) -> i64) -> Option<usize> {
    let first = dests.iter().position(|dest| !dest.removed && !dest.overload && dest.weight > 0)?;
    let (mut least, mut loh) = (first, overhead(&dests[first]));
    for (i, dest) in dests.iter().enumerate().skip(first + 1) {
        if dest.removed || dest.overload {
            continue;
        }
        let doh = overhead(dest);
        if loh * i64::from(dest.weight) > doh * i64::from(dests[least].weight) {
            (least, loh) = (i, doh);
        }
    }
    Some(least)
}
/// `ip_vs_nq_schedule`: an idle real server at once, else as sed.
fn nq_schedule(dests: &[Load]) -> Option<usize> {
    let mut least: Option<(usize, i64)> = None;
    for (i, dest) in dests.iter().enumerate() {
        if dest.overload || dest.weight == 0 {
            continue;
        }
        let doh = dest.active + 1;
        if dest.active == 0 {
            return Some(i);
        }
        if least.is_none_or(|(l, loh)| loh * i64::from(dest.weight) > doh * i64::from(dests[l].weight)) {
            least = Some((i, doh));
        }
    }
    least.map(|(i, _)| i)
}

/// `ip_vs_fo_schedule`: the first of the highest weight.
fn fo_schedule(dests: &[Load]) -> Option<usize> {
    let (mut hweight, mut hw) = (None, 0);
    for (i, dest) in dests.iter().enumerate() {
        if !dest.overload && dest.weight > hw {
            (hweight, hw) = (Some(i), dest.weight);
        }
    }
    hweight
}

/// `ip_vs_ovf_schedule`: the first of the highest weight whose active connections are
/// not above it.
fn ovf_schedule(dests: &[Load]) -> Option<usize> {
    let (mut h, mut hw) = (None, 0);
    for (i, dest) in dests.iter().enumerate() {
        let w = dest.weight;
        if dest.overload || dest.active > i64::from(w) || w == 0 {
            continue;
        }
        if h.is_none() || w > hw {
            (h, hw) = (Some(i), w);
        }
    }
    h
}

fn dynamic_schedule(scheduler: &str, dests: &[Load]) -> Option<usize> {
    match scheduler {
        "lc" => lc_schedule(dests),
        "wlc" => weighted_least(dests, Load::conn_overhead),
        "sed" => weighted_least(dests, |dest| dest.active + 1),
        "nq" => nq_schedule(dests),
        "fo" => fo_schedule(dests),
        "ovf" => ovf_schedule(dests),
        other => panic!("no model of {other}"),
    }
}

/// `ip_vs_bind_dest`: a new connection (a TCP SYN opens in SYN_RECV: active), and the
/// upper threshold.
fn bind(dest: &mut Load) {
    dest.active += 1;
    if dest.u_threshold != 0 && dest.active + dest.inactive >= i64::from(dest.u_threshold) {
        dest.overload = true;
    }
}

/// `ip_vs_unbind_dest`: a connection freed, and the lower threshold.
fn unbind(dest: &mut Load, active: bool) {
    if active {
        dest.active -= 1;
    } else {
        dest.inactive -= 1;
    }
    let total = dest.active + dest.inactive;
    if dest.l_threshold != 0 {
        if total < i64::from(dest.l_threshold) {
            dest.overload = false;
        }
    } else if dest.u_threshold != 0 {
        if total * 4 < i64::from(dest.u_threshold) * 3 {
            dest.overload = false;
        }
    } else {
        dest.overload = false;
    }
}

/// A real server's weight and upper and lower thresholds; `None`: not configured.
type Limits = Option<(u32, u32, u32)>;

/// `__ip_vs_update_dest`, as `ipvsadm -e` changes a weight or thresholds (or `-a`
/// brings a removed real server back from the trash); `__ip_vs_del_dest` for `None`.
fn update(dest: &mut Load, limits: Limits) {
    let Some((weight, u_threshold, l_threshold)) = limits else {
        dest.removed = true;
        return;
    };
    if u_threshold == 0 || u_threshold > dest.u_threshold {
        dest.overload = false;
    }
    (dest.weight, dest.u_threshold, dest.l_threshold, dest.removed) = (weight, u_threshold, l_threshold, false);
}

/// A real server of a service's YAML at `address`, with `limits`.
fn real(address: &str, (weight, upper, lower): (u32, u32, u32)) -> String {
    format!("{{ address: \"{address}\", weight: {weight}, upper_threshold: {upper}, lower_threshold: {lower} }}")
}

/// The services of the tests with loads: one per family, each with its four real
/// servers at `limits` (weight, upper, lower).
fn dynamic_services(scheduler: &str, vips: &[&str], limits: &[(u32, u32, u32)]) -> String {
    let mut yaml = String::new();
    for (i, vip) in vips.iter().enumerate() {
        let reals = if vip.contains(':') { REALS6 } else { REALS4 };
        let reals: Vec<String> = reals.iter().zip(limits).map(|(address, &limits)| real(address, limits)).collect();
        yaml += &format!(
            "  - {{ name: d{i}, vip: \"{vip}\", port: 80, protocol: tcp, scheduler: {scheduler}, reals: [{}] }}\n",
            reals.join(", ")
        );
    }
    yaml
}

/// A connection the test holds open: its client and VIP, the list of real servers
/// (`Churn::dests`) its real server is in, and whether it is still active (no FIN yet).
struct Held {
    client: SocketAddr,
    vip: SocketAddr,
    list: usize,
    real: usize,
    active: bool,
}

/// What one [`Churn::turn`] did, or asks of the test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// The test opens a connection now.
    Open,
    /// The ager walked the tables (some connections went first).
    Walked,
    Other,
}

/// Connections opening, closing and going (as if expired) on a test bed's director,
/// and IPVS's view of the real servers they count for: one list per service (or IP
/// version) of the test.
struct Churn {
    clients: Clients,
    /// At most how many connections go at once.
    going: u32,
    expiry: lb_agent::expiry::Expiry,
    dests: Vec<Vec<Load>>,
    held: Vec<Held>,
}

impl Churn {
    fn new(director: &Director, seed: u64, lists: usize, going: u32) -> Self {
        let expiry = lb_agent::expiry::Expiry::new(director.dataplane()).unwrap();
        let dests = vec![vec![Load::default(); 4]; lists];
        Self { clients: Clients(seed), going, expiry, dests, held: Vec::new() }
    }

    /// Every list's real servers take `limits`, as the director was just given them.
    fn update(&mut self, limits: &[Limits]) {
        for dests in &mut self.dests {
            for (dest, &limits) in dests.iter_mut().zip(limits) {
                update(dest, limits);
            }
        }
    }

    /// A turn: the test opens a connection (5 in 8), a held connection's client closes
    /// it (2 in 8), or some connections go and the ager walks.
    fn turn(&mut self, director: &Director) -> Turn {
        match self.clients.next() % 8 {
            0..=4 => Turn::Open,
            5 | 6 if !self.held.is_empty() => {
                self.close_one(director);
                Turn::Other
            }
            _ if self.held.len() > 20 => {
                self.expire_some(director);
                Turn::Walked
            }
            _ => Turn::Other,
        }
    }

    /// A new connection went to `real` (`None`: refused), as `ip_vs_bind_dest` counts it.
    fn opened(&mut self, client: SocketAddr, vip: SocketAddr, list: usize, real: Option<usize>) {
        if let Some(real) = real {
            bind(&mut self.dests[list][real]);
            self.held.push(Held { client, vip, list, real, active: true });
        }
    }

    /// A held connection's client closes it: FIN takes SYN_RECV to TIME_WAIT in the
    /// input-only table, inactive.
    fn close_one(&mut self, director: &Director) {
        let i = self.clients.next() as usize % self.held.len();
        let conn = &mut self.held[i];
        let fin = packet::tcp_frame(conn.client, conn.vip, TCP_FIN | TCP_ACK, b"");
        assert_eq!(bed::run(director.dataplane().program(), &fin).unwrap().verdict, XDP_TX);
        if conn.active {
            conn.active = false;
            let dest = &mut self.dests[conn.list][conn.real];
            (dest.active, dest.inactive) = (dest.active - 1, dest.inactive + 1);
        }
    }

    /// Some held connections go (as if expired); the ager's walk frees them.
    fn expire_some(&mut self, director: &Director) {
        let mut table = director.dataplane().conn_table();
        for _ in 0..(self.clients.next() % self.going).min(self.held.len() as u32) {
            let conn = self.held.swap_remove(self.clients.next() as usize % self.held.len());
            assert!(table.remove(&bed::tcp_flow_key(conn.client, conn.vip)).unwrap());
            unbind(&mut self.dests[conn.list][conn.real], conn.active);
        }
        director.dataplane().clock().unwrap().tick().unwrap();
        self.expiry.expire(&director.ageing()).unwrap();
    }
}

/// The VIPs of the tests with loads: one service per family.
const LOADED_VIPS: [&str; 2] = ["203.0.113.10", "2001:db8:100::10"];

/// Opens, closes and expires connections of the services of `LOADED_VIPS` through the
/// data path and the agent's ager ([`Churn`]), through `phases` of (weight, upper,
/// lower) limits for the four real servers; each new connection must go where `model`
/// sends it, given the service (an index of `LOADED_VIPS`), the client and IPVS's view
/// of the service's real servers. `scheduling` is the scheduler's words of the
/// configuration. Answers how many overloaded real servers the new connections saw.
fn check_with_loads(
    scheduling: &str,
    phases: &[[(u32, u32, u32); 4]],
    mut model: impl FnMut(usize, SocketAddr, &[Load]) -> Option<usize>,
) -> usize {
    const STEPS: u32 = 1500;
    let services = |limits| dynamic_services(scheduling, &LOADED_VIPS, limits);
    let mut director = bed::director(&services(&phases[0]), 1 << 16, bed::on_ingress).unwrap();
    let mut churn = Churn::new(&director, 0xfeed ^ scheduling.len() as u64, LOADED_VIPS.len(), 8);
    let (mut chosen_counts, mut overloaded) = ([0u32; 4], 0);
    for (phase, limits) in phases.iter().enumerate() {
        if phase > 0 {
            bed::reconfigure(&mut director, &services(limits), bed::on_ingress).unwrap();
        }
        churn.update(&limits.map(Some));
        for step in 0..STEPS {
            if churn.turn(&director) != Turn::Open {
                continue;
            }
            // A new connection, to either service.
            let v = (churn.clients.next() % 2) as usize;
            let client = churn.clients.client(v == 1);
            let dests = &churn.dests[v];
            let expected = model(v, client, dests);
            overloaded += dests.iter().filter(|dest| dest.overload).count();
            let got = chosen(&director, client, LOADED_VIPS[v]);
            assert_eq!(got, expected, "{scheduling} phase {phase} step {step}: {dests:?}");
            churn.opened(client, sock(LOADED_VIPS[v]), v, got);
            if let Some(real) = got {
                chosen_counts[real] += 1;
            }
        }
    }
    println!("{scheduling}: {chosen_counts:?} new connections per real server, {overloaded} overloaded seen");
    overloaded
}

#[test]
fn dynamic_schedulers_choose_as_ipvs_does_as_connections_open_close_and_limits_change() {
    let phases: [[(u32, u32, u32); 4]; 3] = [
        [(1, 0, 0), (2, 0, 0), (3, 0, 0), (1, 0, 0)],
        [(3, 40, 30), (0, 0, 0), (2, 25, 0), (1, 0, 0)],
        [(5, 0, 0), (5, 60, 50), (1, 0, 0), (2, 10, 0)],
    ];
    let mut overloaded = 0;
    for scheduler in ["lc", "wlc", "sed", "nq", "fo", "ovf"] {
        overloaded += check_with_loads(scheduler, &phases, |_, _, dests| dynamic_schedule(scheduler, dests));
    }
    assert!(overloaded > 0, "the thresholds were reached");
}

/// IPVS's rr (`ip_vs_rr_schedule`): from the real server after the last one chosen,
/// round once, the first with a weight that is not overloaded.
#[derive(Default)]
struct Rr {
    last: Option<usize>,
}

impl Rr {
    fn schedule(&mut self, dests: &[Load]) -> Option<usize> {
        let from = self.last.map_or(0, |last| last + 1);
        let found =
            (0..dests.len()).map(|k| (from + k) % dests.len()).find(|&i| !dests[i].overload && dests[i].weight > 0)?;
        self.last = Some(found);
        Some(found)
    }
}

/// IPVS's wrr (`ip_vs_wrr_schedule`): the mark (`cl`, `cw`, `mw`, `di`) and its walk
/// and passes as in the kernel, over the configuration's order (the agent's; IPVS's
/// list has the newest real server first).
struct Wrr {
    cl: Option<usize>,
    cw: i64,
    mw: i64,
    di: i64,
}

impl Wrr {
    /// `ip_vs_wrr_init_svc` and `ip_vs_wrr_dest_changed`.
    fn new(weights: &[u32]) -> Self {
        let di = i64::from(weights.iter().copied().fold(0, gcd).max(1));
        let mw = i64::from(*weights.iter().max().unwrap()) - (di - 1);
        Wrr { cl: None, cw: mw, mw, di }
    }

    fn schedule(&mut self, dests: &[Load]) -> Option<usize> {
        if self.mw == 0 {
            return None;
        }
        let last = self.cl;
        let (mut at, mut stop, mut last_pass, mut restarted) = (self.cl, None, false, false);
        loop {
            for (i, dest) in dests.iter().enumerate().skip(at.map_or(0, |at| at + 1)) {
                if !dest.overload && i64::from(dest.weight) >= self.cw {
                    self.cl = Some(i);
                    return Some(i);
                }
                if stop == Some(i) {
                    return None;
                }
            }
            at = None;
            self.cw -= self.di;
            if self.cw <= 0 {
                self.cw = self.mw;
                if last_pass {
                    return None;
                }
                restarted = true;
            }
            last_pass = self.cw <= self.di;
            if last_pass && restarted && last.is_some() {
                stop = last;
            }
        }
    }
}

#[test]
fn static_schedulers_pass_over_overloaded_real_servers_as_ipvs_does() {
    const WEIGHTS: [u32; 4] = [3, 1, 2, 4];
    // Thresholds change; weights do not. (IPVS's wrr goes back to the head of its list
    // at any change of a real server, the agent's sequence keeps its place; and a
    // weight changes the agent's sequence, IPVS's rr keeps its place.) The last real
    // server never overloads, so rr and wrr always find one.
    let phases: [[(u32, u32, u32); 4]; 3] = [
        [(3, 12, 0), (1, 0, 0), (2, 8, 6), (4, 0, 0)],
        [(3, 0, 0), (1, 5, 0), (2, 20, 0), (4, 0, 0)],
        [(3, 6, 2), (1, 3, 0), (2, 4, 3), (4, 0, 0)],
    ];
    // Every scheduler must have met an overloaded real server.
    let overloads = |seen: usize| assert!(seen > 0, "the thresholds were reached");
    let mut rr = [Rr::default(), Rr::default()];
    overloads(check_with_loads("rr", &phases, |v, _, dests| rr[v].schedule(dests)));
    let mut wrr = [Wrr::new(&WEIGHTS), Wrr::new(&WEIGHTS)];
    overloads(check_with_loads("wrr", &phases, |v, _, dests| wrr[v].schedule(dests)));
    let buckets = sh_reassign(&dests(&WEIGHTS));
    for flags in ["", "sh-fallback", "sh-port, sh-fallback"] {
        overloads(check_with_loads(&format!("sh, scheduler_flags: [{flags}]"), &phases, |_, client, loads| {
            let port = if flags.contains("sh-port") { client.port() } else { 0 };
            sh_schedule(&buckets, client.ip(), port, flags.contains("sh-fallback"), &|i| loads[i].overload)
        }));
    }
    let buckets = dh_reassign(&dests(&WEIGHTS));
    overloads(check_with_loads("dh", &phases, |v, _, loads| {
        dh_schedule(&buckets, LOADED_VIPS[v].parse().unwrap(), &|i| loads[i].overload)
    }));
    let lookups = LOADED_VIPS.map(|vip| mh_reassign(&mh_dests(vip, &[&WEIGHTS]), 251));
    for flags in ["", "mh-port, mh-fallback"] {
        let scheduling = format!("{}, scheduler_flags: [{flags}]", mh(251));
        overloads(check_with_loads(&scheduling, &phases, |v, client, loads| {
            let port = if flags.is_empty() { 0 } else { client.port() };
            mh_schedule(&lookups[v], client.ip(), port, !flags.is_empty(), &|i| loads[i].overload)
        }));
    }
}

fn sock(vip: &str) -> SocketAddr {
    SocketAddr::new(vip.parse().unwrap(), 80)
}

/// IPVS's `is_overloaded` (lblc, lblcr): more active connections than its weight,
/// while some real server of the service has fewer than half of its.
fn is_overloaded(dest: &Load, dests: &[Load]) -> bool {
    dest.active > i64::from(dest.weight) && dests.iter().any(|d| !d.removed && d.active * 2 < i64::from(d.weight))
}

/// `ip_vs_dest_set_min`: in the set's list order (the newest member first), the first
/// member not overloaded with a weight that is available, then any available one not
/// overloaded with less overhead per weight.
fn set_min(set: &[usize], dests: &[Load]) -> Option<usize> {
    let mut members = set.iter().copied().filter(|&d| !dests[d].overload);
    let mut least = members.by_ref().find(|&d| dests[d].weight > 0 && !dests[d].removed)?;
    for d in members {
        let (dest, best) = (&dests[d], &dests[least]);
        if best.conn_overhead() * i64::from(dest.weight) > dest.conn_overhead() * i64::from(best.weight)
            && !dest.removed
        {
            least = d;
        }
    }
    Some(least)
}

/// `ip_vs_dest_set_max`: in the set's list order, the first member with a weight, then
/// any with a weight and more overhead per weight.
fn set_max(set: &[usize], dests: &[Load]) -> Option<usize> {
    let mut members = set.iter().copied();
    let mut most = members.by_ref().find(|&d| dests[d].weight > 0)?;
    for d in members {
        let (dest, best) = (&dests[d], &dests[most]);
        if best.conn_overhead() * i64::from(dest.weight) < dest.conn_overhead() * i64::from(best.weight)
            && dest.weight > 0
        {
            most = d;
        }
    }
    Some(most)
}

/// What the model's new connections found, to show what a test went through.
#[derive(Debug, Default)]
struct Seen {
    /// The destination's real server, or a member of its set, took it.
    kept: u32,
    /// lblc: the entry's real server was removed or quiesced.
    invalid: u32,
    /// Overloaded (`is_overloaded`, or lblcr's set without an available member): lblc
    /// took another real server, lblcr one more into the set.
    moved: u32,
    /// A destination without an entry.
    new: u32,
}

/// IPVS's lblc or lblcr table of one service (one IP version's real servers), by
/// destination address: lblc's real server, or lblcr's set with the newest member
/// first, as `list_add_rcu` puts it.
#[derive(Default)]
struct LocalityModel {
    lblcr: bool,
    entries: HashMap<IpAddr, Vec<usize>>,
    seen: Seen,
}

impl LocalityModel {
    fn new(scheduler: &str) -> Self {
        Self { lblcr: scheduler == "lblcr", ..Self::default() }
    }

    fn schedule(&mut self, destination: IpAddr, dests: &[Load]) -> Option<usize> {
        if self.lblcr { self.lblcr(destination, dests) } else { self.lblc(destination, dests) }
    }

    /// `ip_vs_lblc_schedule`, with `__ip_vs_lblc_schedule` (wlc's rule).
    fn lblc(&mut self, destination: IpAddr, dests: &[Load]) -> Option<usize> {
        if let Some(&[cached]) = self.entries.get(&destination).map(Vec::as_slice) {
            let dest = &dests[cached];
            if dest.removed || dest.weight == 0 {
                self.seen.invalid += 1;
            } else if is_overloaded(dest, dests) {
                self.seen.moved += 1;
            } else {
                self.seen.kept += 1;
                return Some(cached);
            }
        } else {
            self.seen.new += 1;
        }
        let dest = weighted_least(dests, Load::conn_overhead)?;
        self.entries.insert(destination, vec![dest]);
        Some(dest)
    }

    /// `ip_vs_lblcr_schedule`, with `__ip_vs_lblcr_schedule` (wlc's rule). Its erase of
    /// a set's most loaded member after `lblcr_expiration` is left to [`Self::erase`].
    fn lblcr(&mut self, destination: IpAddr, dests: &[Load]) -> Option<usize> {
        let Some(set) = self.entries.get_mut(&destination) else {
            self.seen.new += 1;
            let dest = weighted_least(dests, Load::conn_overhead)?;
            self.entries.insert(destination, vec![dest]);
            return Some(dest);
        };
        if let Some(least) = set_min(set, dests)
            && !is_overloaded(&dests[least], dests)
        {
            self.seen.kept += 1;
            return Some(least);
        }
        self.seen.moved += 1;
        let dest = weighted_least(dests, Load::conn_overhead)?;
        if !set.contains(&dest) {
            set.insert(0, dest);
        }
        Some(dest)
    }

    /// lblcr's set of `destination` loses its most loaded member (`ip_vs_dest_set_max`,
    /// `ip_vs_dest_set_erase`), as once it went unchanged for `lblcr_expiration`.
    fn erase(&mut self, destination: IpAddr, dests: &[Load]) -> Option<usize> {
        let set = self.entries.get_mut(&destination)?;
        let most = set_max(set, dests)?;
        set.retain(|&member| member != most);
        Some(most)
    }

    /// What the agent's walk does that IPVS does not: a real server no longer
    /// configured leaves every set (IPVS keeps it, never chosen, until its set goes),
    /// and an entry left without one goes (IPVS would replace it at its next use).
    fn walked(&mut self, dests: &[Load]) {
        for set in self.entries.values_mut() {
            set.retain(|&member| !dests[member].removed);
        }
        self.entries.retain(|_, set| !set.is_empty());
    }
}

/// The destinations of the locality tests, of one IP version: the VIPs of a cache
/// cluster's firewall-mark service.
fn destinations(ipv6: bool) -> Vec<SocketAddr> {
    let address =
        |i: u16| if ipv6 { format!("2001:db8:100::{:x}", 0x100 + i) } else { format!("203.0.113.{}", 100 + i) };
    (0..24).map(|i| sock(&address(i))).collect()
}

/// A firewall-mark service of `scheduler` (with the YAML `options`) over port 80 of
/// every destination of both IP versions, as iptables would mark a cache cluster's
/// traffic, with the first four of `REALS4` and `REALS6` at `limits`.
fn cache(scheduler: &str, options: &str, limits: &[Limits]) -> String {
    let matches: String = [false, true]
        .into_iter()
        .flat_map(destinations)
        .map(|vip| format!("      - {{ vip: \"{}\", protocol: tcp, ports: [80] }}\n", vip.ip()))
        .collect();
    let reals: String = limits
        .iter()
        .enumerate()
        .filter_map(|(i, limits)| limits.map(|limits| (i, limits)))
        .flat_map(|(i, limits)| [REALS4[i], REALS6[i]].map(|address| format!("      - {}\n", real(address, limits))))
        .collect();
    format!(
        "  - name: cache\n    fwmark: 1\n    match:\n{matches}    scheduler: {scheduler}\n{options}    reals:\n{reals}"
    )
}

#[test]
fn lblc_and_lblcr_choose_as_ipvs_does_for_many_destinations_as_loads_weights_and_real_servers_change() {
    const STEPS: u32 = 3000;
    let phases: [[Limits; 4]; 4] = [
        [Some((1, 0, 0)), Some((2, 0, 0)), Some((3, 0, 0)), Some((2, 0, 0))],
        // Thresholds, and a real server quiesced.
        [Some((2, 6, 4)), Some((0, 0, 0)), Some((3, 5, 0)), Some((2, 0, 0))],
        // One removed, the quiesced one back.
        [Some((2, 6, 4)), Some((2, 0, 0)), Some((3, 5, 0)), None],
        // The removed one back, weights and thresholds changed.
        [Some((1, 0, 0)), Some((3, 4, 0)), Some((4, 0, 0)), Some((2, 0, 0))],
    ];
    let destinations = [destinations(false), destinations(true)];
    for scheduler in ["lblc", "lblcr"] {
        let mut director = bed::director(&cache(scheduler, "", &phases[0]), 1 << 16, bed::on_ingress).unwrap();
        // Many connections go at once: some real servers are lightly loaded again.
        let mut churn = Churn::new(&director, 0x10ca1 ^ scheduler.len() as u64, 2, 24);
        let mut models = [LocalityModel::new(scheduler), LocalityModel::new(scheduler)];
        let mut overloaded = 0;
        for (phase, limits) in phases.iter().enumerate() {
            if phase > 0 {
                bed::reconfigure(&mut director, &cache(scheduler, "", limits), bed::on_ingress).unwrap();
            }
            churn.update(limits);
            for step in 0..STEPS {
                match churn.turn(&director) {
                    Turn::Open => {}
                    Turn::Walked => {
                        for (model, dests) in models.iter_mut().zip(&churn.dests) {
                            model.walked(dests);
                        }
                        continue;
                    }
                    Turn::Other => continue,
                }
                // A few destinations are hot, as a cache's are.
                let v = (churn.clients.next() % 2) as usize;
                let hot = churn.clients.next() % 64;
                let vip = destinations[v][(if hot < 32 { hot % 3 } else { hot % 24 }) as usize];
                let client = SocketAddr::new(churn.clients.client(v == 1).ip(), 1024 + step as u16);
                let dests = &churn.dests[v];
                overloaded += dests.iter().filter(|dest| dest.overload).count();
                let expected = models[v].schedule(vip.ip(), dests);
                let got = chosen(&director, client, &vip.ip().to_string());
                assert_eq!(got, expected, "{scheduler} phase {phase} step {step}: {client} -> {vip}: {dests:?}");
                churn.opened(client, vip, v, got);
            }
        }
        let seen: Vec<&Seen> = models.iter().map(|model| &model.seen).collect();
        println!("{scheduler}: {seen:?}, {overloaded} overloaded real servers seen");
        for seen in seen {
            assert!(
                seen.kept > 1000 && seen.moved > 20 && seen.new > 20,
                "{scheduler} went through too little: {seen:?}"
            );
        }
        assert!(overloaded > 0, "the thresholds were reached");
        if scheduler == "lblc" {
            assert!(models.iter().all(|model| model.seen.invalid > 0), "quiesced and removed real servers' entries");
        }
    }
}

/// Longer than an expiration of 3 s by more than the ager's margin (a second early)
/// and a second of either clock's rounding.
const PAST_THREE_SECONDS: Duration = Duration::from_millis(5200);

/// The cache service on a test bed whose ager the test runs, and IPVS's view of its
/// IPv4 half: the real servers' loads and the table.
struct AgedCache {
    bed: AgedBed,
    dests: Vec<Load>,
    model: LocalityModel,
    /// Which of `REALS4` each real-server id the connections recorded is.
    reals: HashMap<u32, usize>,
    port: u16,
}

impl AgedCache {
    fn new(scheduler: &str, options: &str, limits: &[Limits]) -> Self {
        let bed = AgedBed::new("", &cache(scheduler, options, limits));
        let mut dests = vec![Load::default(); limits.len()];
        for (dest, &limits) in dests.iter_mut().zip(limits) {
            update(dest, limits);
        }
        Self { bed, dests, model: LocalityModel::new(scheduler), reals: HashMap::new(), port: 40000 }
    }

    /// A new connection to `destination`, which goes where the model says; answers
    /// where.
    fn open(&mut self, destination: SocketAddr) -> usize {
        self.port += 1;
        let client = SocketAddr::new("198.18.1.1".parse().unwrap(), self.port);
        let expected = self.model.schedule(destination.ip(), &self.dests);
        let got = chosen(&self.bed.director, client, &destination.ip().to_string());
        assert_eq!(got, expected, "{client} -> {destination}: {:?}", self.dests);
        let real = got.expect("a real server");
        bind(&mut self.dests[real]);
        let conns = self.bed.director.dataplane().conn_table();
        let conn = conns.get(&bed::tcp_flow_key(client, destination)).unwrap().expect("its connection");
        self.reals.insert(conn.real, real);
        real
    }

    /// The real servers of `destination`'s entry in the data path's table (oldest
    /// first); `None` without one.
    fn members(&self, destination: SocketAddr) -> Option<Vec<usize>> {
        let (address, _) = address_bytes(destination.ip());
        let mut members = None;
        let table = self.bed.director.dataplane().locality_table().unwrap();
        table
            .walk(|key, entry| {
                if key.destination == address {
                    let ids = entry.reals.iter().filter(|&&id| id != NO_REAL);
                    members = Some(ids.map(|id| self.reals[id]).collect());
                }
            })
            .unwrap();
        members
    }

    /// The model's entry of `destination`, oldest first as the data path's.
    fn modelled(&self, destination: SocketAddr) -> Option<Vec<usize>> {
        self.model.entries.get(&destination.ip()).map(|set| set.iter().rev().copied().collect())
    }
}

#[test]
fn lblc_entries_go_once_unused_for_the_expiration_through_the_agents_ager() {
    let mut cache = AgedCache::new("lblc", "    lblc_expiration: 3\n", &[Some((2, 0, 0)); 4]);
    let [a, b] = [destinations(false)[0], destinations(false)[1]];
    assert_eq!(cache.open(a), 0, "wlc's first of equals");
    assert_eq!(cache.open(b), 1);
    assert_eq!(cache.open(a), 0, "its active connection is not above its weight");
    assert_eq!(cache.bed.expire().localities_expired, 0);
    assert_eq!((cache.members(a), cache.members(b)), (Some(vec![0]), Some(vec![1])));
    sleep(Duration::from_millis(2000));
    assert_eq!(cache.open(a), 0, "a new connection uses the entry again");
    sleep(Duration::from_millis(3400));
    assert_eq!(cache.bed.expire().localities_expired, 1, "b's: unused for 5.4 s; a's for 3.4");
    assert_eq!((cache.members(a), cache.members(b)), (Some(vec![0]), None));
    cache.model.entries.remove(&b.ip());
    assert_eq!(cache.open(b), 2, "scheduled afresh: wlc's least loaded, no longer its old one");
    sleep(PAST_THREE_SECONDS);
    assert_eq!(cache.bed.expire().localities_expired, 2);
}

#[test]
fn lblcr_sets_lose_their_most_loaded_member_after_the_expiration_and_go_once_unused() {
    let limits = [Some((1, 0, 0)), Some((10, 0, 0)), None, None];
    let mut cache = AgedCache::new("lblcr", "    lblcr_expiration: 3\n", &limits);
    let d = destinations(false)[0];
    assert_eq!([cache.open(d), cache.open(d)], [0, 0], "one active connection is not above its weight");
    assert_eq!(cache.open(d), 1, "two are, while 1 has none: 1 joins the set");
    assert_eq!(cache.members(d), Some(vec![0, 1]));
    assert_eq!(cache.open(d), 1, "the set's least loaded");
    assert_eq!(cache.bed.expire().replicas_erased, 0, "the set changed just now");
    sleep(PAST_THREE_SECONDS);
    // Used once the set has gone unchanged for the expiration: IPVS erases its most
    // loaded member at this use; the ager's next walk does.
    assert_eq!(cache.open(d), 1);
    assert_eq!(cache.model.erase(d.ip(), &cache.dests), Some(0), "two active for a weight of 1");
    let sweep = cache.bed.expire();
    assert_eq!((sweep.replicas_erased, sweep.localities_expired), (1, 0));
    assert_eq!(cache.members(d), Some(vec![1]));
    assert_eq!(cache.members(d), cache.modelled(d));
    assert_eq!(cache.open(d), 1);
    assert_eq!(cache.bed.expire().replicas_erased, 0, "a set of one keeps its member");
    sleep(PAST_THREE_SECONDS);
    assert_eq!(cache.bed.expire().localities_expired, 1, "unused for the expiration");
    assert_eq!(cache.members(d), None);
    cache.model.entries.remove(&d.ip());
    assert_eq!(cache.open(d), 1, "scheduled afresh by wlc");
    assert_eq!(cache.members(d), Some(vec![1]));
}
