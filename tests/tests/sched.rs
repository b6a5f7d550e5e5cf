//! The schedulers through `BPF_PROG_TEST_RUN`: for thousands of new flows, the real
//! server the data path chooses is the one a model of IPVS's own code chooses (written
//! again here from it, list walks and all): the hashing ones (`ip_vs_sh.c`,
//! `ip_vs_dh.c`) with weights, quiesced real servers, `sh-port` and `sh-fallback`; the
//! dynamic ones (`ip_vs_lc.c`, `ip_vs_wlc.c`, `ip_vs_sed.c`, `ip_vs_nq.c`, `ip_vs_fo.c`,
//! `ip_vs_ovf.c`) as connections open, close and go, and weights and thresholds change
//! (`ip_vs_bind_dest`, `ip_vs_unbind_dest`, `__ip_vs_update_dest`).

use std::net::{IpAddr, SocketAddr};

use lb_agent::director::Director;
use lb_tests::{
    bed::{self, XDP_DROP, XDP_TX, real_mac},
    packet::{self, TCP_ACK, TCP_FIN, TCP_SYN},
};

const REALS4: [&str; 4] = ["198.18.1.11", "198.18.1.12", "198.18.1.13", "198.18.1.14"];
const REALS6: [&str; 4] = ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13", "2001:db8:1::14"];
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

fn is_unavailable(dest: &Dest) -> bool {
    dest.weight == 0
}

/// `ip_vs_sh_get` and `ip_vs_sh_get_fallback`.
fn sh_schedule(buckets: &[Option<Dest>], address: IpAddr, port: u16, fallback: bool) -> Option<usize> {
    let ihash = sh_hashkey(address, port, 0);
    let dest = buckets[ihash]?;
    if !is_unavailable(&dest) {
        return Some(dest.index);
    }
    if !fallback {
        return None;
    }
    for offset in 0..TAB_SIZE {
        let roffset = (offset + ihash) % TAB_SIZE;
        let dest = buckets[sh_hashkey(address, port, roffset)]?;
        if !is_unavailable(&dest) {
            return Some(dest.index);
        }
    }
    None
}

/// `ip_vs_dh_schedule`.
fn dh_schedule(buckets: &[Option<Dest>], address: IpAddr) -> Option<usize> {
    buckets[hash_32(fold(address))].filter(|dest| !is_unavailable(dest)).map(|dest| dest.index)
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
        let (mut dropped, mut counts) = (0, [0u32; 4]);
        for vip in &vips {
            for _ in 0..FLOWS {
                let client = clients.client(vip.contains(':'));
                let port = if flags.contains("sh-port") { client.port() } else { 0 };
                let expected = sh_schedule(&buckets, client.ip(), port, flags.contains("sh-fallback"));
                let got = chosen(&director, client, vip);
                assert_eq!(got, expected, "{weights:?} [{flags}] {client} -> {vip}");
                match got {
                    Some(index) => counts[index] += 1,
                    None => dropped += 1,
                }
            }
        }
        println!("sh {weights:?} [{flags}]: {counts:?} per real server, {dropped} without one");
    }
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
            let expected = dh_schedule(&buckets, vip.parse().unwrap());
            for _ in 0..20 {
                let client = clients.client(false);
                assert_eq!(chosen(&director, client, vip), expected, "{weights:?} {client} -> {vip}");
            }
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
/// available real server, then any whose overhead per weight is smaller.
fn weighted_least(dests: &[Load], overhead: fn(&Load) -> i64) -> Option<usize> {
    let first = dests.iter().position(|dest| !dest.overload && dest.weight > 0)?;
    let (mut least, mut loh) = (first, overhead(&dests[first]));
    for (i, dest) in dests.iter().enumerate().skip(first + 1) {
        if dest.overload {
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

/// `__ip_vs_update_dest`, as `ipvsadm -e` changes a weight or thresholds.
fn update(dest: &mut Load, weight: u32, u_threshold: u32, l_threshold: u32) {
    if u_threshold == 0 || u_threshold > dest.u_threshold {
        dest.overload = false;
    }
    (dest.weight, dest.u_threshold, dest.l_threshold) = (weight, u_threshold, l_threshold);
}

/// The services of the dynamic test: one per family, each with its four real servers
/// at `limits` (weight, upper, lower).
fn dynamic_services(scheduler: &str, vips: &[&str], limits: &[(u32, u32, u32)]) -> String {
    let mut yaml = String::new();
    for (i, vip) in vips.iter().enumerate() {
        let reals = if vip.contains(':') { REALS6 } else { REALS4 };
        let reals: Vec<String> = reals
            .iter()
            .zip(limits)
            .map(|(real, (weight, upper, lower))| {
                format!(
                    "{{ address: \"{real}\", weight: {weight}, upper_threshold: {upper}, lower_threshold: {lower} }}"
                )
            })
            .collect();
        yaml += &format!(
            "  - {{ name: d{i}, vip: \"{vip}\", port: 80, protocol: tcp, scheduler: {scheduler}, reals: [{}] }}\n",
            reals.join(", ")
        );
    }
    yaml
}

/// A connection the test holds open: its client, its service's VIP, its real server,
/// and whether it is still active (no FIN yet).
struct Held {
    client: SocketAddr,
    vip: &'static str,
    real: usize,
    active: bool,
}

#[test]
fn dynamic_schedulers_choose_as_ipvs_does_as_connections_open_close_and_limits_change() {
    const VIPS: [&str; 2] = ["203.0.113.10", "2001:db8:100::10"];
    const STEPS: u32 = 1500;
    let phases: [[(u32, u32, u32); 4]; 3] = [
        [(1, 0, 0), (2, 0, 0), (3, 0, 0), (1, 0, 0)],
        [(3, 40, 30), (0, 0, 0), (2, 25, 0), (1, 0, 0)],
        [(5, 0, 0), (5, 60, 50), (1, 0, 0), (2, 10, 0)],
    ];
    let mut overloaded_in_all = 0;
    for scheduler in ["lc", "wlc", "sed", "nq", "fo", "ovf"] {
        let mut clients = Clients(0xfeed ^ scheduler.len() as u64);
        let mut director =
            bed::director(&dynamic_services(scheduler, &VIPS, &phases[0]), 1 << 16, bed::on_ingress).unwrap();
        let dataplane = director.dataplane();
        let mut expiry = lb_agent::expiry::Expiry::new(dataplane).unwrap();
        let mut models: Vec<Vec<Load>> = VIPS.iter().map(|_| vec![Load::default(); 4]).collect();
        let mut held: Vec<Held> = Vec::new();
        let (mut chosen_counts, mut overloaded) = ([0u32; 4], 0);
        for (phase, limits) in phases.iter().enumerate() {
            if phase > 0 {
                bed::reconfigure(&mut director, &dynamic_services(scheduler, &VIPS, limits), bed::on_ingress).unwrap();
            }
            for model in &mut models {
                for (dest, &(weight, upper, lower)) in model.iter_mut().zip(limits) {
                    update(dest, weight, upper, lower);
                }
            }
            for step in 0..STEPS {
                match clients.next() % 8 {
                    // A new connection, to either service.
                    0..=4 => {
                        let v = (clients.next() % 2) as usize;
                        let client = clients.client(v == 1);
                        let expected = dynamic_schedule(scheduler, &models[v]);
                        overloaded += models[v].iter().filter(|dest| dest.overload).count();
                        let got = chosen(&director, client, VIPS[v]);
                        assert_eq!(got, expected, "{scheduler} phase {phase} step {step}: {:?}", models[v]);
                        if let Some(real) = got {
                            bind(&mut models[v][real]);
                            held.push(Held { client, vip: VIPS[v], real, active: true });
                            chosen_counts[real] += 1;
                        }
                    }
                    // The client of a held connection closes it: FIN takes SYN_RECV to
                    // TIME_WAIT in the input-only table, inactive.
                    5 | 6 if !held.is_empty() => {
                        let i = clients.next() as usize % held.len();
                        let conn = &mut held[i];
                        let fin = packet::tcp_frame(conn.client, sock(conn.vip), TCP_FIN | TCP_ACK, b"");
                        assert_eq!(bed::run(director.dataplane().program(), &fin).unwrap().verdict, XDP_TX);
                        if conn.active {
                            conn.active = false;
                            let dest = &mut models[VIPS.iter().position(|v| *v == conn.vip).unwrap()][conn.real];
                            (dest.active, dest.inactive) = (dest.active - 1, dest.inactive + 1);
                        }
                    }
                    // Some connections go (as if expired); the ager's next walk frees them.
                    _ if held.len() > 20 => {
                        let mut table = director.dataplane().conn_table().unwrap();
                        for _ in 0..clients.next() % 8 {
                            let conn = held.swap_remove(clients.next() as usize % held.len());
                            assert!(table.remove(&bed::tcp_flow_key(conn.client, sock(conn.vip))).unwrap());
                            let v = VIPS.iter().position(|v| *v == conn.vip).unwrap();
                            unbind(&mut models[v][conn.real], conn.active);
                        }
                        director.dataplane().clock().unwrap().tick().unwrap();
                        expiry.expire(&director.ageing()).unwrap();
                    }
                    _ => {}
                }
            }
        }
        println!("{scheduler}: {chosen_counts:?} new connections per real server, {overloaded} overloaded seen");
        overloaded_in_all += overloaded;
    }
    assert!(overloaded_in_all > 0, "the thresholds were reached");
}

fn sock(vip: &str) -> SocketAddr {
    SocketAddr::new(vip.parse().unwrap(), 80)
}
