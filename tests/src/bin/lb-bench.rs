//! `cargo xtask bench`: ns per packet of `lb_ingress`, beside `xdp_baseline` (parse
//! Ethernet and IP, swap the MACs, `XDP_TX`) measured the same way in the same run.
//!
//! Each sample is one `BPF_PROG_TEST_RUN` of one frame (a run with `repeat > 1` would
//! feed the program its own output), issued back to back from this warm process; the
//! kernel times the program's run. The median of many samples is printed. A benchmark
//! measures and prints; it asserts nothing.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, ensure};
use aya::{Ebpf, programs::Xdp};
use lb_tests::{
    bed::{self, service},
    packet::{self, TCP_ACK, TCP_SYN},
};

const SAMPLES: usize = 20_000;
const WARMUP: usize = 2_000;
const XDP_TX: u32 = 3;
const REALS4: [(&str, u32); 3] = [("198.18.1.11", 1), ("198.18.1.12", 2), ("198.18.1.13", 3)];
const REALS6: [(&str, u32); 3] = [("2001:db8:1::11", 1), ("2001:db8:1::12", 2), ("2001:db8:1::13", 3)];

struct Case {
    name: &'static str,
    /// The frames, one per sample (cycled); new-flow cases need a new 5-tuple each.
    frames: Vec<Vec<u8>>,
    /// A frame lb_ingress sees first, untimed: the SYN that establishes the flow.
    opening: Option<Vec<u8>>,
}

fn main() -> Result<()> {
    let services = service("web4", "203.0.113.10", 80, "tcp", "wrr", &REALS4)
        + &service("web6", "2001:db8:100::10", 80, "tcp", "wrr", &REALS6);
    // Room for every new flow of every case, so no insert has to evict.
    let table = (4 * (SAMPLES + WARMUP)) as u32;
    let director = bed::director(&services, table, bed::on_ingress)?;
    let lb = director.dataplane().program();
    let mut testbed = Ebpf::load(lb_agent::dataplane::TESTBED_OBJECT).context("loading the test bed object")?;
    let baseline: &mut Xdp = testbed.program_mut("xdp_baseline").context("no xdp_baseline")?.try_into()?;
    baseline.load()?;

    let cases = cases();
    for case in &cases {
        if let Some(syn) = &case.opening {
            ensure!(bed::run(lb, syn)?.verdict == XDP_TX, "{}: the opening SYN was not forwarded", case.name);
        }
    }

    println!("ns per packet, median of {SAMPLES} single BPF_PROG_TEST_RUN runs each (after {WARMUP} warm-up runs)");
    println!("kernel {}, {} CPUs\n", kernel(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("{:<34} {:>11} {:>13} {:>7}", "packet", "lb_ingress", "xdp_baseline", "ratio");
    for case in &cases {
        let lb_ns = median(lb, &case.frames)?;
        let base_ns = median(baseline, &case.frames)?;
        println!("{:<34} {:>11.1} {:>13.1} {:>6.2}x", case.name, lb_ns, base_ns, lb_ns / base_ns);
    }
    Ok(())
}

fn cases() -> Vec<Case> {
    let flow = |client: &str, vip: &str, port: u16, flags: u8| {
        let client: SocketAddr = format!("{client}:{port}").parse().unwrap();
        let vip: SocketAddr = format!("{vip}:80").parse().unwrap();
        packet::tcp_frame(client, vip, flags, b"")
    };
    let new_flows = |client: &str, vip: &str, first_port: u16| {
        // Distinct (address, port) pairs: more flows than ports.
        (0..SAMPLES + WARMUP)
            .map(|i| {
                let octet = i / 60000;
                let client = client.replace("OCTET", &(octet + 1).to_string());
                flow(&client, vip, first_port.wrapping_add((i % 60000) as u16), TCP_SYN)
            })
            .collect()
    };
    let established = |name, client, vip| Case {
        name,
        frames: vec![flow(client, vip, 40000, TCP_ACK)],
        opening: Some(flow(client, vip, 40000, TCP_SYN)),
    };
    vec![
        established("IPv4 TCP, established flow", "198.18.1.1", "203.0.113.10"),
        Case {
            name: "IPv4 TCP, new flow (SYN)",
            frames: new_flows("198.18.2.OCTET", "203.0.113.10", 1024),
            opening: None,
        },
        established("IPv6 TCP, established flow", "[2001:db8:1::1]", "[2001:db8:100::10]"),
        Case {
            name: "IPv6 TCP, new flow (SYN)",
            frames: new_flows("[2001:db8:2::OCTET]", "[2001:db8:100::10]", 1024),
            opening: None,
        },
    ]
}

/// The median duration of single runs over `frames`, after a warm-up.
fn median(program: &Xdp, frames: &[Vec<u8>]) -> Result<f64> {
    let mut frames = frames.iter().cycle();
    for _ in 0..WARMUP {
        bed::run(program, frames.next().expect("cycled"))?;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let run = bed::run(program, frames.next().expect("cycled"))?;
        ensure!(run.verdict == XDP_TX, "a benchmark frame was not forwarded (verdict {})", run.verdict);
        samples.push(run.duration);
    }
    samples.sort();
    Ok(samples[SAMPLES / 2].as_nanos() as f64)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |release| release.trim().to_owned())
}
