//! High availability end to end, with real BIRD, keepalived, XDP and TCP: a director
//! dies (links down, its processes killed) while hundreds of connections pass through
//! it, and every one of them carries on through another director, to the same real
//! server.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use lb_tests::{
    halab::HaLab,
    lab::{KeptAlive, wait_until},
};

/// One lab at a time: they would only compete for the two CPUs.
static ONE_LAB: Mutex<()> = Mutex::new(());

/// Connections held across the failure.
const HELD: usize = 300;
/// New connections asked for once it is over.
const NEW: usize = 60;
/// The ECMP director that dies (any would do).
const VICTIM: usize = 2;
/// How long sync may take to copy the connections to the other directors.
const SYNC_WAIT: Duration = Duration::from_secs(10);

fn one_lab() -> MutexGuard<'static, ()> {
    ONE_LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Three directors behind the BIRD/ECMP router with Maglev hashing (of the client's
/// address and port, so one client's connections spread): every director picks the
/// same real server for a connection, so a connection whose director died keeps
/// its real server on whichever director the router now sends it to, with no state
/// shared.
#[test]
fn ecmp_directors_with_mh_lose_no_connection_when_one_dies() -> Result<()> {
    let _one = one_lab();
    let mut lab = HaLab::ecmp(3, 3)?;
    lab.start_agents(|lab, i| lab.agent_config(i, "mh", &["mh-port"], None))?;
    survives_a_director_crash_behind_ecmp(&mut lab, false)
}

/// `deploy/bird/lb-announce down` (what systemd runs when a director's agent stops)
/// withdraws the director: the router sends it no new connection; `up` brings it back.
#[test]
fn a_director_that_stops_announcing_gets_no_new_connections() -> Result<()> {
    let _one = one_lab();
    let mut lab = HaLab::ecmp(3, 3)?;
    lab.start_agents(|lab, i| lab.agent_config(i, "mh", &["mh-port"], None))?;
    lab.announce()?;
    let withdrawn = lab.lb_announce(0, "down")?;
    lab.wait_for_paths(2)?;
    println!("d1: {withdrawn}");
    let held = Held::open(&lab, NEW)?;
    let on_d1 = lab.connections(0)?;
    let reached_d1 = held.ports.iter().filter(|port| on_d1.contains(port)).count();
    ensure!(reached_d1 == 0, "{reached_d1} of {NEW} new connections reached the withdrawn d1");
    lab.lb_announce(0, "up")?;
    lab.wait_for_paths(3)
}

/// The same with weighted round robin, whose choice no other director could repeat:
/// every director syncs its connections to the others (`role: both`).
#[test]
fn ecmp_directors_with_wrr_and_sync_lose_no_connection_when_one_dies() -> Result<()> {
    let _one = one_lab();
    let mut lab = HaLab::ecmp(3, 3)?;
    lab.start_agents(|lab, i| lab.agent_config(i, "wrr", &[], Some("both")))?;
    survives_a_director_crash_behind_ecmp(&mut lab, true)
}

/// A keepalived pair with weighted round robin: the master's connections reach the
/// backup by sync; when the master dies VRRP moves the VIP and the backup carries them.
#[test]
fn vrrp_pair_with_wrr_and_sync_loses_no_connection_when_the_master_dies() -> Result<()> {
    let _one = one_lab();
    let mut lab = HaLab::vrrp(3)?;
    // Both listen until keepalived's hooks make the holder of the VIP the sync master.
    lab.start_agents(|lab, i| lab.agent_config(i, "wrr", &[], Some("backup")))?;
    lab.start_keepalived()?;
    ensure!(!lab.holds_vip(1)?, "the backup holds the VIP too:\n{}", lab.keepalived_log(1));

    let mut held = Held::open(&lab, HELD)?;
    let on_master = lab.connections(0)?;
    ensure!(held.ports.iter().all(|port| on_master.contains(port)), "the master carries every connection");
    wait_for_sync(&lab, 1, &held.ports)?;

    lab.crash(0)?;
    lab.wait_for_vip(1)?;
    println!("d2 took the VIP over:\n{}", last_lines(&lab.keepalived_log(1), 8));

    let new = serve_new(&lab)?;
    println!("new connections after the failover, by real server: {new:?}");
    none_lost(&held.ask_again(), HELD, &[on_master])
}

/// What every ECMP test does once its agents run: announce, hold connections across
/// the crash of one director, then check them and new ones. With `synced`, first waits
/// until every director holds every connection.
fn survives_a_director_crash_behind_ecmp(lab: &mut HaLab, synced: bool) -> Result<()> {
    lab.announce()?;
    let mut held = Held::open(lab, HELD)?;
    // Which director the router sent each connection to: the one that scheduled it
    // (sync copies connections, but only their director counts them as its own).
    let spread: Vec<f64> = (0..lab.directors.len())
        .map(|i| lab.metrics(i)?.value("lb_service_connections_total", &[("service", "web")]))
        .collect::<Result<_>>()?;
    println!("held connections by the director that scheduled them: {spread:?}");
    ensure!(spread.iter().sum::<f64>() == HELD as f64, "each held connection was scheduled once: {spread:?}");
    ensure!(spread[VICTIM] > 0.0, "the router sent nothing to d{}: the crash would prove nothing", VICTIM + 1);
    // Without sync, a director's table holds only its own connections.
    let before: Vec<HashSet<u16>> = if synced {
        for i in 0..lab.directors.len() {
            wait_for_sync(lab, i, &held.ports)?;
        }
        Vec::new()
    } else {
        (0..lab.directors.len()).map(|i| lab.connections(i)).collect::<Result<_>>()?
    };

    lab.crash(VICTIM)?;
    lab.wait_for_paths(lab.directors.len() - 1)?;
    println!("the router withdrew d{}: paths {:?}", VICTIM + 1, lab.router_paths()?);

    let lost = held.ask_again();
    if !synced {
        report_moves(lab, &held, &before)?;
    }
    none_lost(&lost, HELD, &before)?;
    let new = serve_new(lab)?;
    println!("new connections after the failover, by real server: {new:?}");
    Ok(())
}

/// Connections held open by the client, each with its port and the real server that
/// answered it first.
struct Held {
    connections: Vec<KeptAlive>,
    ports: Vec<u16>,
    reals: Vec<String>,
}

impl Held {
    /// Opens `count` connections to the VIP and asks each which real server it reaches.
    fn open(lab: &HaLab, count: usize) -> Result<Self> {
        let mut connections = lab.hold(count)?;
        let ports = connections.iter().map(KeptAlive::local_port).collect::<Result<Vec<_>>>()?;
        let reals = connections.iter_mut().map(KeptAlive::get).collect::<Result<Vec<_>>>()?;
        let mut by_real = BTreeMap::<&str, usize>::new();
        for real in &reals {
            *by_real.entry(real).or_default() += 1;
        }
        println!("{count} held connections by real server: {by_real:?}");
        Ok(Self { connections, ports, reals })
    }

    /// Asks every connection again: each must answer, from the real server it had.
    /// Returns those that did not: their ports, and what went wrong.
    /// All at once, each on a thread of its own: one by one, a connection that hangs
    /// until the read timeout would leave the ones after it idle long enough for
    /// nginx to close them (keepalive_timeout, 75 s).
    fn ask_again(&mut self) -> Vec<(u16, String)> {
        let answers: Vec<Result<String>> = std::thread::scope(|scope| {
            let asking: Vec<_> =
                self.connections.iter_mut().map(|connection| scope.spawn(move || connection.get())).collect();
            asking.into_iter().map(|thread| thread.join().expect("a GET panicked")).collect()
        });
        let mut lost = Vec::new();
        for ((answer, &port), real) in answers.into_iter().zip(&self.ports).zip(&self.reals) {
            match answer {
                Ok(now) if &now == real => {}
                Ok(now) => lost.push((port, format!("{real} before, {now} now"))),
                Err(err) => lost.push((port, format!("on {real}: {err:#}"))),
            }
        }
        lost
    }
}

/// Fails unless `lost` is empty; says which director each lost connection was on
/// (`before`: the client ports each director held) and why it failed.
fn none_lost(lost: &[(u16, String)], held: usize, before: &[HashSet<u16>]) -> Result<()> {
    println!("held connections lost: {} of {held}", lost.len());
    if lost.is_empty() {
        return Ok(());
    }
    let mut by_director = BTreeMap::<String, usize>::new();
    let mut by_reason = BTreeMap::<&str, usize>::new();
    for (port, why) in lost {
        let director = before.iter().position(|ports| ports.contains(port));
        *by_director.entry(director.map_or("none".into(), |i| format!("d{}", i + 1))).or_default() += 1;
        *by_reason.entry(why.split_once(": ").map_or(why.as_str(), |(_, reason)| reason)).or_default() += 1;
    }
    let examples: Vec<String> = lost.iter().take(10).map(|(port, why)| format!("port {port}: {why}")).collect();
    bail!(
        "{} of {held} held connections were lost or moved to another real server; by the director they were on: \
         {by_director:?}; by what went wrong: {by_reason:?}; the first:\n{}",
        lost.len(),
        examples.join("\n")
    )
}

/// Waits until director `i` holds every connection of `ports` (sync copied them).
fn wait_for_sync(lab: &HaLab, i: usize, ports: &[u16]) -> Result<()> {
    let mut missing = ports.len();
    wait_until(SYNC_WAIT, &format!("d{} to hold every held connection (sync)", i + 1), || {
        let holds = lab.connections(i)?;
        missing = ports.iter().filter(|port| !holds.contains(port)).count();
        Ok(missing == 0)
    })
    .with_context(|| format!("d{} lacks {missing} of {} connections", i + 1, ports.len()))
}

/// Prints how many held connections moved to another director: those of the dead one,
/// and those the router's new hash sent elsewhere (Linux's multipath routes spread by
/// hash ranges, which shift when a path goes).
fn report_moves(lab: &HaLab, held: &Held, before: &[HashSet<u16>]) -> Result<()> {
    let mut moved = 0;
    let mut rehashed = 0;
    for (i, had) in before.iter().enumerate().filter(|(i, _)| *i != VICTIM) {
        let now = lab.connections(i)?;
        for port in held.ports.iter().filter(|port| now.contains(port) && !had.contains(port)) {
            if before[VICTIM].contains(port) { moved += 1 } else { rehashed += 1 }
        }
    }
    println!(
        "moved to another director: {moved} of d{}'s {}, and {rehashed} of the survivors' own",
        VICTIM + 1,
        held.ports.iter().filter(|port| before[VICTIM].contains(port)).count()
    );
    // What a survivor did with a moved connection's packets that it did not take on.
    for i in (0..lab.directors.len()).filter(|&i| i != VICTIM) {
        let dropped = lab.metrics(i)?.value("lb_dropped_packets_total", &[("reason", "no_connection")])?;
        println!("d{}: {dropped} packets dropped as no_connection", i + 1);
    }
    Ok(())
}

/// `NEW` new connections through the VIP, one GET each: all answered. The number
/// answered per real server.
fn serve_new(lab: &HaLab) -> Result<BTreeMap<String, usize>> {
    let mut answered = BTreeMap::new();
    for mut connection in lab.hold(NEW)? {
        *answered.entry(connection.get().context("a new connection after the failover")?).or_default() += 1;
    }
    Ok(answered)
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
