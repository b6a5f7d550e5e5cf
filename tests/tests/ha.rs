//! High availability end to end, with real BIRD, keepalived, XDP and TCP: a director
//! dies (links down, its processes killed) while hundreds of connections pass through
//! it, and every one of them carries on through another director, to the same real
//! server. A backup keeps up with a master opening ten thousand connections a second,
//! and believes no datagram but its master's.

use std::{
    collections::{BTreeMap, HashSet},
    net::{SocketAddr, UdpSocket},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use lb_agent::{
    director::address_bytes,
    sync::wire::{self, Header, Kind, Record},
};
use lb_tests::{
    halab::{HaLab, LOAD_PORT, SYNC_GROUP, SYNC_ID, SYNC_PORT, Sync},
    lab::{HTTP_PORT, KeptAlive, VIP4, wait_until},
    load::{Load, monotonic_ns},
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
/// Sync under load: connections opened a second through the master, for how long, and
/// the share of those established two seconds before that the backup must hold.
const LOAD_RATE: usize = 10_000;
const LOAD_TIME: Duration = Duration::from_secs(4);
const SYNC_BOUND: Duration = Duration::from_secs(2);
const SYNC_SHARE: f64 = 0.99;
/// When, from the load's start, the backup is checked while the load goes on.
const LOAD_CHECKS: [Duration; 2] = [Duration::from_millis(2500), Duration::from_millis(3500)];

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
    lab.start_agents(|lab, i| lab.agent_config(i, "mh", &["mh-port"], Sync::Off))?;
    survives_a_director_crash_behind_ecmp(&mut lab, false)
}

/// `deploy/bird/lb-announce watch` (lb-announce-watch.service) announces a director's
/// VIPs while its agent serves: one that can reach no real server (its health checks
/// fail) is withdrawn and gets no new connection, and comes back once they pass; one
/// whose agent stops is withdrawn too.
#[test]
fn a_director_is_withdrawn_while_it_cannot_serve() -> Result<()> {
    let _one = one_lab();
    let mut lab = HaLab::ecmp(3, 3)?;
    lab.start_agents(|lab, i| lab.agent_config(i, "mh", &["mh-port"], Sync::Off))?;
    lab.announce()?;

    lab.cut_from_reals(0, true)?;
    withdrawn(&lab, 0)?;
    let held = Held::open(&lab, NEW)?;
    let on_d1 = lab.connections(0)?;
    let reached_d1 = held.ports.iter().filter(|port| on_d1.contains(port)).count();
    ensure!(reached_d1 == 0, "{reached_d1} of {NEW} new connections reached d1, which reaches no real server");
    lab.cut_from_reals(0, false)?;
    lab.wait_for_paths(3)?;

    lab.stop_agent(1)?;
    withdrawn(&lab, 1)
}

/// Waits until the router routes the VIP through every director but `i`.
fn withdrawn(lab: &HaLab, i: usize) -> Result<()> {
    lab.wait_for_paths(lab.directors.len() - 1)?;
    let paths = lab.router_paths()?;
    ensure!(!paths.contains(&lab.directors[i].host.ipv4), "d{} is still a path: {paths:?}", i + 1);
    println!("the router withdrew d{}: paths {paths:?}", i + 1);
    Ok(())
}

/// The same with weighted round robin, whose choice no other director could repeat:
/// every director syncs its connections to the others (`role: both`), by unicast to
/// each (`peers:`; the keepalived pair's tests sync over the multicast group).
#[test]
fn ecmp_directors_with_wrr_and_sync_lose_no_connection_when_one_dies() -> Result<()> {
    let _one = one_lab();
    let mut lab = HaLab::ecmp(3, 3)?;
    lab.start_agents(|lab, i| lab.agent_config(i, "wrr", &[], Sync::Peers("both")))?;
    survives_a_director_crash_behind_ecmp(&mut lab, true)
}

/// A keepalived pair with weighted round robin: the master's connections reach the
/// backup by sync; when the master dies VRRP moves the VIP and the backup carries them.
#[test]
fn vrrp_pair_with_wrr_and_sync_loses_no_connection_when_the_master_dies() -> Result<()> {
    let _one = one_lab();
    let mut lab = keepalived_pair_with_wrr()?;
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

/// A keepalived pair under load: connections open through the master at 10 000 a
/// second; two seconds after its handshake, the backup holds each (99% at least) as
/// ESTABLISHED, while the load goes on and once it is over. Before it, garbage and
/// forged datagrams at the backup's sync port are counted, each by its reason, and
/// change nothing.
#[test]
fn a_vrrp_backup_keeps_up_with_10000_connections_a_second_and_ignores_forged_datagrams() -> Result<()> {
    let _one = one_lab();
    let mut lab = keepalived_pair_with_wrr()?;
    lab.listen_for_load()?;
    forgeries_change_nothing(&lab)?;
    keeps_up_under_load(&lab)
}

/// The keepalived lab with weighted round robin, d1 holding the VIP: both agents
/// listen for sync until keepalived's hooks make the holder of the VIP the master.
fn keepalived_pair_with_wrr() -> Result<HaLab> {
    let mut lab = HaLab::vrrp(3)?;
    lab.start_agents(|lab, i| lab.agent_config(i, "wrr", &[], Sync::Group("backup")))?;
    lab.start_keepalived()?;
    ensure!(!lab.holds_vip(1)?, "the backup holds the VIP too:\n{}", lab.keepalived_log(1));
    Ok(lab)
}

/// Captures one of the master's datagrams on the segment, then sends the backup
/// garbage, that datagram altered in every checked field, forged with another key,
/// and replayed from another address: each is dropped and counted by its reason, and
/// the backup's table stays as it was.
fn forgeries_change_nothing(lab: &HaLab) -> Result<()> {
    let client = &lab.client;
    client.netns.run(&["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
    let (listener, sender) = client.netns.within(|| {
        let listener = UdpSocket::bind((SYNC_GROUP, SYNC_PORT))?;
        listener.join_multicast_v4(&SYNC_GROUP, &client.ipv4)?;
        listener.set_read_timeout(Some(SYNC_WAIT))?;
        Ok((listener, UdpSocket::bind((client.ipv4, 0))?))
    })?;
    let held = Held::open(lab, 20)?;
    wait_for_sync(lab, 1, &held.ports)?;
    let mut captured = vec![0; 2048];
    let (length, from) = listener.recv_from(&mut captured).context("no sync datagram seen on the segment")?;
    captured.truncate(length);
    ensure!(from.ip() == lab.directors[0].host.ipv4, "the sync datagram came from {from}, not the master");

    let table = |lab: &HaLab| -> Result<HashSet<String>> {
        let connections = lab.connections_to(1, HTTP_PORT)?;
        Ok(connections
            .iter()
            .map(|c| format!("{} {} {} {}", c.source, c.virtual_address, c.destination, c.state))
            .collect())
    };
    let before = (table(lab)?, lab.metrics(1)?);
    // The master may announce a connection meanwhile (its state moved on): the backup
    // takes that one, and only that kind.
    let sent =
        |samples: &lb_tests::prometheus::Samples| samples.value("lb_sync_datagrams_total", &[("direction", "sent")]);
    let master_before = sent(&lab.metrics(0)?)?;
    let forgeries = forgeries(lab, &captured);
    for (_, datagram) in &forgeries {
        sender.send_to(datagram, (SYNC_GROUP, SYNC_PORT))?;
    }
    let dropped = |samples: &lb_tests::prometheus::Samples, reason: &str| {
        samples.value("lb_sync_dropped_total", &[("reason", reason)])
    };
    let mut expected = BTreeMap::<&str, f64>::new();
    for (reason, _) in &forgeries {
        *expected.entry(reason).or_default() += 1.0;
    }
    let mut counted = BTreeMap::new();
    wait_until(SYNC_WAIT, "the backup to count every forgery", || {
        let now = lab.metrics(1)?;
        counted = expected
            .keys()
            .map(|&reason| Ok((reason, dropped(&now, reason)? - dropped(&before.1, reason)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(counted == expected)
    })
    .with_context(|| format!("dropped, by reason: {counted:?}; sent: {expected:?}"))?;
    println!("forged datagrams dropped by the backup, by reason: {counted:?}");
    let received = |samples: &lb_tests::prometheus::Samples| {
        samples.value("lb_sync_datagrams_total", &[("direction", "received")])
    };
    let genuine = sent(&lab.metrics(0)?)? - master_before;
    let taken = received(&lab.metrics(1)?)? - received(&before.1)? - genuine;
    ensure!(taken <= 0.0, "the backup took {taken} of the forged datagrams");
    let after = table(lab)?;
    ensure!(
        genuine > 0.0 || after == before.0,
        "the backup's table changed: {:?}",
        after.symmetric_difference(&before.0).collect::<Vec<_>>()
    );
    Ok(())
}

/// What is sent at the backup, each with the reason it must be dropped for: built
/// from `captured`, a datagram of the master's that the backup took.
fn forgeries(lab: &HaLab, captured: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let altered = |at: usize, value: u8| {
        let mut datagram = captured.to_vec();
        datagram[at] = value;
        datagram
    };
    // The first record's real server, moved to the next address.
    const REAL_ADDRESS_LAST_BYTE: usize = 32 + 48 + 3;
    let rehomed = altered(REAL_ADDRESS_LAST_BYTE, captured[REAL_ADDRESS_LAST_BYTE].wrapping_add(1));
    let sent_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64);
    let header = Header { syncid: SYNC_ID, sender: 1, sequence: 1, sent_at };
    let invented = Record {
        kind: Kind::Connection,
        protocol: lb_common::IPPROTO_TCP,
        family: lb_common::FAMILY_IPV4,
        state: lb_common::state::ESTABLISHED,
        forwarding: lb_common::real::Forwarding::Dr as u8,
        flags: 0,
        idle: 0,
        client: (address_bytes(lab.client.ipv4.into()).0, 1),
        virtual_service: (address_bytes(VIP4.into()).0, HTTP_PORT),
        real: (address_bytes(lab.reals[0].ipv4.into()).0, HTTP_PORT),
        local: ([0; 16], 0),
    };
    vec![
        ("malformed", Vec::new()),
        ("malformed", b"LBSY and nothing that adds up".to_vec()),
        ("malformed", captured[..captured.len() - 1].to_vec()),
        ("version", altered(4, wire::VERSION + 1)),
        ("syncid", altered(5, SYNC_ID + 1)),
        ("unauthenticated", rehomed),
        ("unauthenticated", wire::encode(&wire::key(&[0x5a; 32]), &header, &[invented])),
        ("replayed", captured.to_vec()),
    ]
}

/// The load, and the backup checked while it goes on and once it is over.
fn keeps_up_under_load(lab: &HaLab) -> Result<()> {
    let start = monotonic_ns();
    let load = Load::start(&lab.client.netns, SocketAddr::from((VIP4, LOAD_PORT)), LOAD_RATE, LOAD_TIME)?;
    let mut checks = Vec::new();
    for at in LOAD_CHECKS {
        sleep_until(start + at.as_nanos() as u64);
        checks.push(backup_check(lab, &load, start)?);
    }
    let opening = load.opened()?;
    let (first, last) = load.established_span().context("no connection was established")?;
    println!(
        "asked for {} connections in {:.2} s ({:.0}/s): {} established, {} failed; handshakes completed at {:.0}/s",
        opening.asked,
        opening.asking_ns as f64 / 1e9,
        opening.rate(),
        opening.established,
        opening.failed,
        opening.established as f64 * 1e9 / (last - first) as f64
    );
    sleep_until(last + SYNC_BOUND.as_nanos() as u64);
    checks.push(backup_check(lab, &load, start)?);
    let on_master = lab.connections_to(0, LOAD_PORT)?.iter().filter(|c| c.state == "ESTABLISHED").count();
    println!("the master holds {on_master} established");
    print_sync_metrics(lab)?;
    ensure!(opening.failed == 0, "{} of {} connections failed to open", opening.failed, opening.asked);
    ensure!(on_master == opening.established, "the master holds {on_master} of {} connections", opening.established);
    for (due, missing) in checks {
        ensure!(
            (due - missing) as f64 >= SYNC_SHARE * due as f64,
            "the backup lacked {missing} of {due} connections established two seconds before or earlier"
        );
    }
    Ok(())
}

/// How many of the load's connections were established `SYNC_BOUND` before now or
/// earlier, and how many of those the backup lacks (or holds in another state).
fn backup_check(lab: &HaLab, load: &Load, start: u64) -> Result<(usize, usize)> {
    let reading = monotonic_ns();
    let held: HashSet<u16> = lab
        .connections_to(1, LOAD_PORT)?
        .iter()
        .filter(|c| c.state == "ESTABLISHED")
        .map(|c| c.source.port())
        .collect();
    // Due: established two seconds before the table was read whole, so none is given
    // more than two seconds.
    let read = monotonic_ns();
    let due = load.established_before(read - SYNC_BOUND.as_nanos() as u64);
    let missing = due.iter().filter(|port| !held.contains(port)).count();
    println!(
        "at {:.1} s: the backup holds {} of the {} connections established 2 s before or earlier ({missing} missing; \
         its table read in {:.2} s)",
        (read - start) as f64 / 1e9,
        due.len() - missing,
        due.len(),
        (read - reading) as f64 / 1e9
    );
    Ok((due.len(), missing))
}

fn sleep_until(moment: u64) {
    std::thread::sleep(Duration::from_nanos(moment.saturating_sub(monotonic_ns())));
}

/// What the pair's sync daemons counted, and the master's ring buffer overflows.
fn print_sync_metrics(lab: &HaLab) -> Result<()> {
    let (master, backup) = (lab.metrics(0)?, lab.metrics(1)?);
    let sent = |name| master.value(name, &[("direction", "sent")]);
    let received = |name| backup.value(name, &[("direction", "received")]);
    println!(
        "sync: the master sent {} connections in {} datagrams; the backup took {} in {}; ring full {} times; lag {:.4} s",
        sent("lb_sync_connections_total")?,
        sent("lb_sync_datagrams_total")?,
        received("lb_sync_connections_total")?,
        received("lb_sync_datagrams_total")?,
        master.get("lb_noted_packets_total", &[("reason", "sync_ring_full")]).unwrap_or(0.0),
        backup.value("lb_sync_lag_seconds", &[])?,
    );
    Ok(())
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
