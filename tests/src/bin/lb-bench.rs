//! `cargo xtask bench`: ns per packet of `lb_ingress`, beside `xdp_baseline` (parse
//! Ethernet and IP, swap the MACs, `XDP_TX`) measured the same way in the same run.
//!
//! Each sample is one `BPF_PROG_TEST_RUN` of one frame (a run with `repeat > 1` would
//! feed the program its own output), issued back to back from this warm process; the
//! kernel times the program's run. The median of many samples is printed. A benchmark
//! measures and prints; it asserts nothing.
//!
//! The connection table has the agent's default size. The table-size rows come last,
//! each size in a table of its own filled through the program: new flows, and packets
//! of many established flows in turn (cold in the cache, as on a busy director).
//!
//! For profiling (e.g. under `perf record`), `LB_BENCH_ONLY` keeps the rows whose name
//! contains it and `LB_BENCH_ROUNDS` sets the rounds (20 by default).
//!
//! To weigh a change to the eBPF code, `LB_BENCH_VARIANT` names another build of the
//! object (with the same maps). Each object is loaded twice, and each row runs the four
//! and the baseline round by round, printing the difference of the objects' ratios
//! within each round (the VM's memory latency drifts between runs by more than most
//! changes weigh). The table-size rows are left out then.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, ensure};
use aya::{Ebpf, programs::Xdp};
use lb_agent::{
    dataplane::{Dataplane, EbpfLogLevel},
    director::Director,
};
use lb_tests::{
    bed::{self, Routes, XDP_REDIRECT, XDP_TX},
    packet::{self, TCP_ACK, TCP_SYN},
};

const SAMPLES: usize = 20_000;
/// Connections in the table before the table-size rows: from empty to (about) the
/// million the agent's default table holds.
const TABLE_FILLS: [usize; 4] = [0, 10_000, 100_000, 1_000_000];
/// The samples are taken in rounds, the two programs in turn.
const ROUNDS: usize = 20;
const PER_ROUND: usize = SAMPLES / ROUNDS;
const WARMUP: usize = 100;
/// Runs of one program over a case: each new-flow case needs as many new 5-tuples.
const RUNS: usize = ROUNDS * (PER_ROUND + WARMUP);
const REALS4: [(&str, u32); 3] = [("198.18.1.11", 1), ("198.18.1.12", 2), ("198.18.1.13", 3)];
const REALS6: [(&str, u32); 3] = [("2001:db8:1::11", 1), ("2001:db8:1::12", 2), ("2001:db8:1::13", 3)];
/// Each method's VIPs: (method, IPv4 VIP, IPv6 VIP). `toa` is Full-NAT with TOA. All
/// use wrr; [`SCHEDULERS`] adds the other schedulers, by direct routing.
const METHODS: [(&str, &str, &str); 5] = [
    ("dr", "203.0.113.10", "2001:db8:100::10"),
    ("tun", "203.0.113.13", "2001:db8:100::13"),
    ("nat", "203.0.113.11", "2001:db8:100::11"),
    ("fnat", "203.0.113.12", "2001:db8:100::12"),
    ("toa", "203.0.113.14", "2001:db8:100::14"),
];

/// The schedulers besides wrr: (scheduler, its flags, IPv4 VIP), direct routing.
const SCHEDULERS: [(&str, &str, &str); 14] = [
    ("rr", "", "203.0.113.20"),
    ("sh", "", "203.0.113.21"),
    ("sh", "sh-port, sh-fallback", "203.0.113.22"),
    ("mh", "", "203.0.113.30"),
    ("mh", "mh-port, mh-fallback", "203.0.113.31"),
    ("dh", "", "203.0.113.23"),
    ("lc", "", "203.0.113.24"),
    ("wlc", "", "203.0.113.25"),
    ("sed", "", "203.0.113.26"),
    ("nq", "", "203.0.113.27"),
    ("fo", "", "203.0.113.28"),
    ("ovf", "", "203.0.113.29"),
    ("lblc", "", "203.0.113.32"),
    ("lblcr", "", "203.0.113.33"),
];

struct Case {
    name: String,
    /// The frames, one per sample (cycled); new-flow cases need a new 5-tuple each.
    frames: Vec<Vec<u8>>,
    /// A frame lb_ingress sees first, untimed: the SYN that establishes the flow.
    opening: Option<Vec<u8>>,
    /// What lb_ingress answers: `XDP_TX` towards a real server, `XDP_REDIRECT` for a
    /// reply routed back to the client.
    verdict: u32,
}

fn main() -> Result<()> {
    // Replies find their way back by the routing tables of the namespace the runs are
    // issued in.
    let routes = Routes::new()?;
    routes.within(bench)
}

fn bench() -> Result<()> {
    let mut services = String::new();
    for (method, vip4, vip6) in METHODS {
        for (family, vip, reals) in [("4", vip4, &REALS4), ("6", vip6, &REALS6)] {
            let reals: Vec<String> = reals
                .iter()
                .map(|(address, weight)| format!("{{ address: \"{address}\", weight: {weight} }}"))
                .collect();
            let forwarding = if method == "toa" { "fnat, toa: true" } else { method };
            services += &format!(
                "  - {{ name: {method}{family}, vip: \"{vip}\", port: 80, protocol: tcp, scheduler: wrr, \
                 forwarding: {forwarding}, local_addresses: [198.18.1.100, \"2001:db8:1::100\"], reals: [{}] }}\n",
                reals.join(", ")
            );
        }
    }
    for (i, (scheduler, flags, vip)) in SCHEDULERS.iter().enumerate() {
        // ovf sends nothing to a real server with more active connections than its
        // weight, and every new flow of the bench stays active: the largest weights.
        let weight_of = |weight: u32| if *scheduler == "ovf" { 65535 - 3 + weight } else { weight };
        let reals: Vec<String> = REALS4
            .iter()
            .map(|(address, weight)| format!("{{ address: \"{address}\", weight: {} }}", weight_of(*weight)))
            .collect();
        services += &format!(
            "  - {{ name: sched{i}, vip: \"{vip}\", port: 80, protocol: tcp, scheduler: {scheduler}, \
             scheduler_flags: [{flags}], reals: [{}] }}\n",
            reals.join(", ")
        );
    }
    // The table the agent configures by default; it has room for every new flow of
    // every case (two entries for NAT and Full-NAT), so no insert has to evict.
    let director = bed::director(&services, lb_common::CONN_TABLE_SIZE, bed::on_ingress)?;
    let lb = director.dataplane().program();
    let mut testbed = Ebpf::load(lb_agent::dataplane::TESTBED_OBJECT).context("loading the test bed object")?;
    let baseline: &mut Xdp = testbed.program_mut("xdp_baseline").context("no xdp_baseline")?.try_into()?;
    baseline.load()?;

    // Compared, each object is loaded twice, in the order this, variant, variant, this:
    // the same object measured up to 1x cheaper per new flow in a director loaded
    // later (its table's memory), and the two places of each cancel that out.
    let compared = match std::env::var_os("LB_BENCH_VARIANT") {
        Some(path) => Some([
            variant_director(&path, &services)?,
            variant_director(&path, &services)?,
            bed::director(&services, lb_common::CONN_TABLE_SIZE, bed::on_ingress)?,
        ]),
        None => None,
    };
    let compared = compared.as_ref().map(|[first, second, again]| {
        ([lb, again.dataplane().program()], [first.dataplane().program(), second.dataplane().program()])
    });
    let cases = cases();
    for case in &cases {
        if let Some(syn) = &case.opening {
            let others = compared.iter().flat_map(|(ours, theirs)| [ours[1], theirs[0], theirs[1]]);
            for program in [lb].into_iter().chain(others) {
                ensure!(bed::run(program, syn)?.verdict == XDP_TX, "{}: the opening SYN was not forwarded", case.name);
            }
        }
    }
    let base_frames: Vec<Vec<u8>> = cases[0].frames.clone();

    println!(
        "ns per packet: {ROUNDS} rounds of {PER_ROUND} single BPF_PROG_TEST_RUN runs of each program in turn (after \
         {WARMUP} warm-up runs); the medians of the rounds' medians, and of their ratios"
    );
    println!("kernel {}, {} CPUs", kernel(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    let verified = lb.info()?.verified_instruction_count().unwrap_or(0);
    println!("lb_ingress: {verified} instructions walked by the verifier (its limit: 1000000)");
    // lb_toa, tail-called for TOA, is checked on its own: the one this process loaded.
    let toa = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| program.name_as_str() == Some(lb_common::names::TOA_PROGRAM))
        .max_by_key(|program| program.id());
    let verified = toa.and_then(|program| program.verified_instruction_count()).unwrap_or(0);
    println!("lb_toa: {verified} instructions walked by the verifier\n");
    println!("{:<48} {:>11} {:>13} {:>7}", "packet", "lb_ingress", "xdp_baseline", "ratio");
    let only = std::env::var("LB_BENCH_ONLY").unwrap_or_default();
    let rounds = match std::env::var("LB_BENCH_ROUNDS") {
        Ok(rounds) => rounds.parse().context("LB_BENCH_ROUNDS: expected a number of rounds")?,
        Err(_) => ROUNDS,
    };
    if let Some((ours, theirs)) = compared {
        println!("\n{:<48} {:>11} {:>13} {:>10}", "packet", "this", "variant", "this-variant");
        for case in cases.iter().filter(|case| case.name.contains(&only)) {
            print_comparison(ours, theirs, baseline, case, &base_frames, rounds)?;
        }
        return Ok(());
    }
    for case in cases.iter().filter(|case| case.name.contains(&only)) {
        print_row(lb, baseline, case, &base_frames, rounds)?;
    }
    drop(director);
    for fill in TABLE_FILLS {
        let cases = table_cases(fill);
        if !cases.iter().any(|case| case.name.contains(&only)) {
            continue;
        }
        // A table of its own for each size: from empty, `fill` connections opened
        // through the program, as a director that has been serving a while.
        let director = bed::director(&services, lb_common::CONN_TABLE_SIZE, bed::on_ingress)?;
        let lb = director.dataplane().program();
        for i in 0..fill {
            let verdict = bed::run(lb, &new_flow("198.18.5.OCTET", METHODS[0].1, i, TCP_SYN))?.verdict;
            ensure!(verdict == XDP_TX, "filling the table: connection {i} was not opened (verdict {verdict})");
        }
        let [syn, established] = &cases;
        print_row(lb, baseline, syn, &base_frames, rounds)?;
        // Every flow the established row sends on is open, whatever the rounds, and
        // established: its first ACK changes the connection's state, the rest do not.
        for frame in syn.frames.iter().chain(&established.frames) {
            bed::run(lb, frame)?;
        }
        print_row(lb, baseline, established, &base_frames, rounds)?;
    }
    Ok(())
}

/// One row: `case` and the baseline, round by round, each program's median beside the
/// other's: the VM's speed drifts, and a ratio taken within a round does not see the
/// drift.
fn print_row(lb: &Xdp, baseline: &Xdp, case: &Case, base_frames: &[Vec<u8>], rounds: usize) -> Result<()> {
    let (mut lb_ns, mut base_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut lb_frames = case.frames.iter().cycle();
    let mut base_cycle = base_frames.iter().cycle();
    for _ in 0..rounds {
        let lb_round = median(lb, &mut lb_frames, case.verdict)?;
        let base_round = median(baseline, &mut base_cycle, XDP_TX)?;
        lb_ns.push(lb_round);
        base_ns.push(base_round);
        ratios.push(lb_round / base_round);
    }
    let (lb_ns, base_ns, ratio) = (middle(lb_ns), middle(base_ns), middle(ratios));
    println!("{:<48} {:>11.1} {:>13.1} {:>6.2}x", case.name, lb_ns, base_ns, ratio);
    Ok(())
}

/// The director of `LB_BENCH_VARIANT`'s object, holding `services` as the built-in one does.
fn variant_director(path: &std::ffi::OsStr, services: &str) -> Result<Director> {
    let object = std::fs::read(path).with_context(|| format!("LB_BENCH_VARIANT: reading {}", path.display()))?;
    let dataplane =
        Dataplane::load_object(&object, lb_common::CONN_TABLE_SIZE, EbpfLogLevel::Off).with_context(|| {
            format!("LB_BENCH_VARIANT: loading {} (an lb-ebpf object with these maps?)", path.display())
        })?;
    bed::director_on(dataplane, services, bed::on_ingress)
}

/// One row for both objects, each loaded twice: the four and the baseline round by
/// round, in the order `ours[0]`, `theirs[0]`, baseline, `theirs[1]`, `ours[1]` and
/// back again in the next round; the ratios' medians (each object's two copies
/// averaged), and the median of their difference within a round.
fn print_comparison(
    ours: [&Xdp; 2],
    theirs: [&Xdp; 2],
    baseline: &Xdp,
    case: &Case,
    base_frames: &[Vec<u8>],
    rounds: usize,
) -> Result<()> {
    let (mut our_ratios, mut their_ratios, mut differences) = (Vec::new(), Vec::new(), Vec::new());
    // Each copy opens its own new flows: the four tables see the same ones.
    let mut frames: [_; 4] = std::array::from_fn(|_| case.frames.iter().cycle());
    let mut base_cycle = base_frames.iter().cycle();
    let programs = [ours[0], theirs[0], theirs[1], ours[1]];
    // The baseline (`None`) in the middle.
    let forth = [Some(0), Some(1), None, Some(2), Some(3)];
    for round in 0..rounds {
        let (mut ns, mut base) = ([0.0; 4], 0.0);
        let mut order = forth;
        if round % 2 == 1 {
            order.reverse();
        }
        for at in order {
            match at {
                Some(at) => ns[at] = median(programs[at], &mut frames[at], case.verdict)?,
                None => base = median(baseline, &mut base_cycle, XDP_TX)?,
            }
        }
        let (this, other) = ((ns[0] + ns[3]) / 2.0, (ns[1] + ns[2]) / 2.0);
        our_ratios.push(this / base);
        their_ratios.push(other / base);
        differences.push((this - other) / base);
    }
    let (ours, theirs, difference) = (middle(our_ratios), middle(their_ratios), middle(differences));
    println!("{:<48} {:>10.2}x {:>12.2}x {:>+9.2}x", case.name, ours, theirs, difference);
    Ok(())
}

/// The table-size rows of a table holding `fill` connections: `RUNS` new flows, then
/// packets of those flows in turn (spread over the table, as a busy director's are,
/// where the other rows' established flow is one flow, always in the cache).
fn table_cases(fill: usize) -> [Case; 2] {
    let vip = METHODS[0].1;
    let flows = |flags| (0..RUNS).map(|i| new_flow("198.18.6.OCTET", vip, i, flags)).collect();
    [
        Case {
            name: format!("IPv4 TCP dr, new flow (SYN), {fill} in the table"),
            frames: flows(TCP_SYN),
            opening: None,
            verdict: XDP_TX,
        },
        Case {
            name: format!("IPv4 TCP dr, {RUNS} flows in turn, {fill} in the table"),
            frames: flows(TCP_ACK),
            opening: None,
            verdict: XDP_TX,
        },
    ]
}

fn middle(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn cases() -> Vec<Case> {
    let new_flows = |client: &str, vip: &str| (0..RUNS).map(|i| new_flow(client, vip, i, TCP_SYN)).collect();
    let mut cases = Vec::new();
    for (method, vip4, vip6) in METHODS {
        let families = [
            ("IPv4", "198.18.1.1", vip4.to_owned(), "198.18.2.OCTET", REALS4[1].0),
            ("IPv6", "[2001:db8:1::1]", format!("[{vip6}]"), "[2001:db8:2::OCTET]", REALS6[1].0),
        ];
        for (family, client, vip, new_clients, _) in &families {
            if method == "toa" {
                // A pure ACK never ends a connection's wait for the option: each run
                // inserts it (through the tail call to lb_toa).
                cases.push(Case {
                    name: format!("{family} TCP fnat, ACK that gets TOA"),
                    frames: vec![flow(client, vip, 40000, TCP_ACK)],
                    opening: Some(flow(client, vip, 40000, TCP_SYN)),
                    verdict: XDP_TX,
                });
                continue;
            }
            cases.push(Case {
                name: format!("{family} TCP {method}, established flow"),
                frames: vec![flow(client, vip, 40000, TCP_ACK)],
                opening: Some(flow(client, vip, 40000, TCP_SYN)),
                verdict: XDP_TX,
            });
            cases.push(Case {
                name: format!("{family} TCP {method}, new flow (SYN)"),
                frames: new_flows(new_clients, vip),
                opening: None,
                verdict: XDP_TX,
            });
        }
        if method == "dr" {
            for (scheduler, flags, vip) in SCHEDULERS {
                let flags: String =
                    flags.split(", ").filter(|f| !f.is_empty()).map(|f| format!(" +{}", &f[3..])).collect();
                cases.push(Case {
                    name: format!("IPv4 TCP dr, new flow (SYN), {scheduler}{flags}"),
                    frames: new_flows("198.18.3.OCTET", vip),
                    opening: None,
                    verdict: XDP_TX,
                });
            }
        }
        if method == "nat" {
            // Its opening SYN is the service's second (after the established case's):
            // wrr's 1:2:3 cycle sends it to the second real server.
            for (family, client, vip, _, real) in &families {
                let real = if real.contains(':') { format!("[{real}]") } else { real.to_string() };
                let reply_from: SocketAddr = format!("{real}:80").parse().unwrap();
                let to: SocketAddr = format!("{client}:41000").parse().unwrap();
                cases.push(Case {
                    name: format!("{family} TCP nat, reply to the client"),
                    frames: vec![packet::tcp_frame(reply_from, to, TCP_ACK, b"")],
                    opening: Some(flow(client, vip, 41000, TCP_SYN)),
                    verdict: XDP_REDIRECT,
                });
            }
        }
    }
    cases
}

/// A frame from `client:port` to `vip:80`.
fn flow(client: &str, vip: &str, port: u16, flags: u8) -> Vec<u8> {
    let client: SocketAddr = format!("{client}:{port}").parse().unwrap();
    let vip: SocketAddr = format!("{vip}:80").parse().unwrap();
    packet::tcp_frame(client, vip, flags, b"")
}

/// The `i`th of many flows from the clients of `client`, whose last part (`OCTET`) the
/// flow's number sets, with a port each: more flows than ports.
fn new_flow(client: &str, vip: &str, i: usize, flags: u8) -> Vec<u8> {
    let octet = i / 60000;
    let client = client.replace("OCTET", &(octet + 1).to_string());
    flow(&client, vip, 1024 + (i % 60000) as u16, flags)
}

/// The median duration of a round of single runs over the next `frames`, after a
/// warm-up.
fn median<'a>(program: &Xdp, frames: &mut impl Iterator<Item = &'a Vec<u8>>, verdict: u32) -> Result<f64> {
    for _ in 0..WARMUP {
        bed::run(program, frames.next().expect("cycled"))?;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(PER_ROUND);
    for _ in 0..PER_ROUND {
        let run = bed::run(program, frames.next().expect("cycled"))?;
        ensure!(run.verdict == verdict, "a benchmark frame was not forwarded (verdict {})", run.verdict);
        samples.push(run.duration);
    }
    samples.sort();
    Ok(samples[PER_ROUND / 2].as_nanos() as f64)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |release| release.trim().to_owned())
}
