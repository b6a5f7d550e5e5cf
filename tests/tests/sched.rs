//! The hashing schedulers (sh, dh) through `BPF_PROG_TEST_RUN`: for thousands of new
//! flows, the real server the data path chooses is the one a model of IPVS's own code
//! (`ip_vs_sh.c`, `ip_vs_dh.c`, written again here from it, list walks and all) chooses,
//! with weights, quiesced real servers, `sh-port` and `sh-fallback`.

use std::net::{IpAddr, SocketAddr};

use lb_agent::director::Director;
use lb_tests::{
    bed::{self, XDP_DROP, XDP_TX, real_mac},
    packet::{self, TCP_SYN},
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
