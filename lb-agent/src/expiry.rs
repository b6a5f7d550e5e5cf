//! Connection ageing, IPVS's timeouts: the agent forgets connections that have been
//! idle for longer than their state's timeout, so a Full-NAT connection's local port
//! (the key of its reply entry) is free again once the connection has ended or gone
//! quiet; and it keeps each real server's active and inactive counts true.
//!
//! The data path stamps an entry with the second it last forwarded a packet of it
//! (`last_seen`) and moves its TCP state; it never removes an entry itself.
//! [`Expiry::expire`] walks the table, pairs the two entries of a NAT or Full-NAT
//! connection, and removes the connections idle for longer than their timeout (by
//! state: `tcp` established, `tcp_fin` in FIN_WAIT, `udp`, ...). As it walks it counts
//! what each real server holds, and corrects the data path's counts by what they missed
//! (connections evicted from a full table, and those it removed).
//!
//! It also expires persistence templates as IPVS does: once the service's timeout has
//! passed since a new connection last used one, and no connection of the table that
//! it could have sent remains (IPVS's `n_control`); and lblc's and lblcr's entries
//! ([`locality`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use aya::Pod;
use lb_common::{
    conn::{Conn, FlowKey},
    locality::{Locality, LocalityKey},
    persist::{Persist, PersistKey},
    real::RealLoad,
    state,
};

use tokio::sync::mpsc;

use crate::{
    config::Timeouts,
    dataplane::{Clock, ConnTable, Dataplane, LocalityTable, RealLoads, Table, TemplateTable},
    sync::refresh,
};

pub mod locality;

pub use locality::Localizing;

/// How often the table is walked, at the least.
const INTERVAL: Duration = Duration::from_secs(2);
/// After a walk that took `d`, the next waits at least `PAUSE_FACTOR × d`: a large table
/// is aged less often rather than taking a whole CPU.
const PAUSE_FACTOR: u32 = 4;

/// The ager: its own handles on the connection table, the persistence templates and
/// lblc's and lblcr's entries, and what it counted.
pub struct Expiry {
    table: ConnTable,
    templates: TemplateTable,
    localities: LocalityTable,
    clock: Clock,
    real_loads: Arc<RealLoads>,
    counts: Arc<Counts>,
    /// Where connections due for a refresh go (the sync daemon), and the time of the
    /// last walk.
    refreshes: Option<mpsc::Sender<Vec<(FlowKey, Conn)>>>,
    last_walk: Option<u32>,
}

/// What the ager counted, for the metrics.
#[derive(Debug, Default)]
pub struct Counts {
    expired: AtomicU64,
    entries: AtomicU64,
}

impl Counts {
    /// Connections removed since the agent started.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// Entries the last walk saw.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
}

/// What one walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Entries seen (both directions of a connection count).
    pub entries: u64,
    /// Connections removed (the two entries of one count once).
    pub expired: u64,
    /// Persistence templates removed.
    pub templates_expired: u64,
    /// lblc's and lblcr's entries removed.
    pub localities_expired: u64,
    /// Members lblcr's sets lost for having gone unchanged for the expiration.
    pub replicas_erased: u64,
}

/// What ageing needs of the running configuration.
#[derive(Clone, Debug, Default)]
pub struct Ageing {
    pub timeouts: Timeouts,
    /// Per persistent service, by index: its templates' timeout and its clients'
    /// prefix lengths.
    pub persistence: HashMap<u32, Persisting>,
    /// Per lblc or lblcr service, by index: its entries' expiration and real servers.
    pub locality: HashMap<u32, Localizing>,
}

/// A persistent service's templates: how long one lives after its last new
/// connection, and the prefix lengths of IPv4 and IPv6 clients' networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persisting {
    pub timeout: u32,
    pub prefixes: (u8, u8),
}

impl Persisting {
    /// The template a client entry at `key` of this service was sent by.
    fn template_of(&self, key: &FlowKey, service: u32) -> PersistKey {
        let prefix = if key.family == lb_common::FAMILY_IPV4 { self.prefixes.0 } else { self.prefixes.1 };
        PersistKey::of(&key.src, key.family, service, prefix)
    }
}

impl Expiry {
    /// The ager of the data path's connections, templates and lblc's and lblcr's
    /// entries, with handles of its own.
    pub fn new(dataplane: &Dataplane) -> Result<Self> {
        Ok(Self {
            table: dataplane.conn_table(),
            templates: dataplane.template_table()?,
            localities: dataplane.locality_table()?,
            clock: dataplane.clock()?,
            real_loads: dataplane.real_loads(),
            counts: Arc::default(),
            refreshes: None,
            last_walk: None,
        })
    }

    /// Has every walk hand the connections due for a refresh to the sync daemon.
    pub fn refresh_to(&mut self, refreshes: mpsc::Sender<Vec<(FlowKey, Conn)>>) {
        self.refreshes = Some(refreshes);
    }

    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// Removes every connection idle for longer than its timeout, the templates no
    /// longer in use, and lblc's and lblcr's entries by IPVS's rules. The client
    /// direction's entry goes first, then the reply's, so a Full-NAT local port is never
    /// free while a client entry still forwards with it.
    pub fn expire(&mut self, ageing: &Ageing) -> Result<Sweep> {
        let timeouts = &ageing.timeouts;
        // Idle times are measured on the clock the entries were stamped by. If it has
        // fallen behind the kernel's (its ticker stalled), entries stamped before it
        // catches up would look older than they are: no walk until it has.
        let clock = self.clock.read()?;
        let kernel = self.clock.expected()?;
        if kernel > clock + 1 {
            log::warn!("the data path's clock is {} s behind; ageing waits for it", kernel - clock);
            return Ok(Sweep::default());
        }
        // `CLOCK` counts whole seconds and is written once a second, so a stamp may be up
        // to two seconds behind its packet, and the clock is not ahead of this walk:
        // taking now a second early, an idle time above the timeout means more than the
        // timeout has passed (never early, at most two seconds late).
        let now = clock.saturating_sub(1);
        // What the data path counted before the walk: the walk's own count replaces it,
        // plus whatever the data path adds while the walk runs.
        let counted = self.real_loads.all();
        let mut held = HashMap::new();
        // An entry idle for no longer than its state's timeout is fresh, and so is its
        // connection: only the others are looked at again.
        let mut candidates = Vec::new();
        let mut controlling = HashSet::new();
        let mut refreshed = Vec::new();
        let last_walk = self.last_walk.replace(now).filter(|_| self.refreshes.is_some());
        let entries = self.table.walk(|key, conn| {
            let stale = idle(now, conn) > timeouts.of(key.protocol, conn.state);
            if let Some(last) = last_walk
                && refresh::due(key, conn, timeouts, last, now)
            {
                refreshed.push((*key, *conn));
            }
            // A connection is counted by its client entry (a reply entry whose client
            // entry is gone carries no more client packets).
            if !conn.is_reply() {
                tally(&mut held, key.protocol, conn, 1);
                if let Some(persisting) = ageing.persistence.get(&conn.service).filter(|_| !stale) {
                    controlling.insert(persisting.template_of(key, conn.service));
                }
            }
            if stale {
                candidates.push(*key);
            }
        })?;
        let mut seen = HashSet::new();
        let mut expired = 0;
        for key in candidates {
            if seen.contains(&key) {
                continue;
            }
            // As they are now: a packet may have passed since the walk read them.
            let Some(conn) = self.table.get(&key)? else { continue };
            let connection = Connection::of(key, conn, |partner| self.table.get(partner))?;
            seen.extend(connection.keys());
            if connection.expired(now, timeouts) && self.remove(&connection)? {
                expired += 1;
                if let Some((key, conn)) = &connection.client {
                    tally(&mut held, key.protocol, conn, -1);
                }
            }
        }
        self.reconcile(&counted, &held);
        if let Some(refreshes) = self.refreshes.as_ref().filter(|_| !refreshed.is_empty()) {
            // A daemon that is behind misses a round; the next period's slot comes.
            let _ = refreshes.try_send(refreshed);
        }
        let templates_expired = self.expire_templates(now, &ageing.persistence, &controlling)?;
        let (localities_expired, replicas_erased) = self.expire_localities(now, &ageing.locality)?;
        self.counts.entries.store(entries, Ordering::Relaxed);
        self.counts.expired.fetch_add(expired, Ordering::Relaxed);
        Ok(Sweep { entries, expired, templates_expired, localities_expired, replicas_erased })
    }

    /// Removes the templates unused for longer than their service's timeout that no
    /// live connection was sent by (`controlling`), and those of services no longer
    /// persistent once unused for a walk's interval (a service that a reload made
    /// persistent during the walk has templates this walk does not know of).
    fn expire_templates(
        &mut self,
        now: u32,
        persistence: &HashMap<u32, Persisting>,
        controlling: &HashSet<PersistKey>,
    ) -> Result<u64> {
        let orphaned = INTERVAL.as_secs() as u32;
        let stale = |key: &PersistKey, template: &Persist| {
            let timeout = persistence.get(&key.service).map_or(orphaned, |persisting| persisting.timeout);
            (now.saturating_sub(template.last_used) > timeout && !controlling.contains(key)).then_some(())
        };
        let mut picked = Vec::new();
        self.templates.walk(|key, template| picked.extend(stale(key, template).map(|()| *key)))?;
        let mut removed = 0;
        revisit(&mut self.templates, picked, stale, |templates, key, ()| {
            removed += u64::from(templates.remove(key)?);
            Ok(())
        })?;
        Ok(removed)
    }

    /// Removes lblc's and lblcr's entries unused for their service's expiration (and
    /// those of services no longer lblc or lblcr), shrinks lblcr's sets, and in a
    /// service's table above IPVS's size removes entries unused for six minutes;
    /// answers how many entries went and how many members sets lost.
    fn expire_localities(&mut self, now: u32, services: &HashMap<u32, Localizing>) -> Result<(u64, u64)> {
        let orphaned = INTERVAL.as_secs() as u32;
        let loads = self.real_loads.all();
        let fate = |key: &LocalityKey, entry: &Locality| locality::fate(now, key, entry, services, &loads, orphaned);
        let mut changing = Vec::new();
        let mut sizes: HashMap<u32, usize> = HashMap::new();
        let mut crowded: HashMap<u32, Vec<LocalityKey>> = HashMap::new();
        self.localities.walk(|key, entry| {
            let fate = fate(key, entry);
            if fate.is_some() {
                changing.push(*key);
            }
            // An entry that only loses a member stays, and counts towards its service's size.
            if !matches!(fate, Some(locality::Fate::Expire)) {
                *sizes.entry(key.service).or_default() += 1;
                if locality::crowded_out(now, entry) {
                    crowded.entry(key.service).or_default().push(*key);
                }
            }
        })?;
        let (mut expired, mut erased) = (0, 0);
        revisit(&mut self.localities, changing, fate, |localities, key, fate| {
            match fate {
                locality::Fate::Expire => expired += u64::from(localities.remove(key)?),
                locality::Fate::Shrink { entry, erased: replica } => {
                    let replaced = localities.replace(key, &entry)?;
                    erased += u64::from(replaced && replica.is_some());
                }
            }
            Ok(())
        })?;
        expired += self.crowd_out(now, crowded, &sizes)?;
        Ok((expired, erased))
    }

    /// In each service whose table is above IPVS's size (`sizes`), removes as many of
    /// its entries unused for six minutes (`crowded`, picked by the walk) as IPVS's
    /// goal asks; answers how many went.
    fn crowd_out(
        &mut self,
        now: u32,
        crowded: HashMap<u32, Vec<LocalityKey>>,
        sizes: &HashMap<u32, usize>,
    ) -> Result<u64> {
        let mut removed = 0;
        let crowded_out = |_: &LocalityKey, entry: &Locality| locality::crowded_out(now, entry).then_some(());
        for (service, keys) in crowded {
            let keys = keys.into_iter().take(locality::over_size_goal(sizes[&service])).collect();
            revisit(&mut self.localities, keys, crowded_out, |localities, key, ()| {
                removed += u64::from(localities.remove(key)?);
                Ok(())
            })?;
        }
        Ok(removed)
    }

    /// Sets each real server's counts to what the table holds (`held`), plus what the
    /// data path changed since `counted` was read; one that held too many may take
    /// new connections again.
    fn reconcile(&self, counted: &[RealLoad], held: &HashMap<u32, Held>) {
        for (id, counted) in (0..).zip(counted) {
            let held = held.get(&id).copied().unwrap_or_default();
            self.real_loads.count(id, held.active - counted.active, held.inactive - counted.inactive);
        }
    }

    /// Removes the connection's entries, client direction first; answers whether any
    /// was still there.
    fn remove(&mut self, connection: &Connection) -> Result<bool> {
        let mut removed = false;
        if let Some((key, _)) = &connection.client {
            removed |= self.table.remove(key)?;
        }
        if let Some((key, reply)) = &connection.reply {
            // A NAT client's packet that came just after its entry went opened the
            // flow again, and its new reply entry took this key: that one stays.
            if self.table.get(key)? == Some(*reply) {
                removed |= self.table.remove(key)?;
            }
        }
        Ok(removed)
    }

    /// Ages the tables for as long as the agent runs, with the timeouts and
    /// persistence `ageing` answers at each walk (so a reload's take effect at the
    /// next).
    pub async fn run(mut self, ageing: impl Fn() -> Ageing) -> Result<()> {
        let mut pause = INTERVAL;
        loop {
            tokio::time::sleep(pause).await;
            let ageing = ageing();
            let started = std::time::Instant::now();
            let (back, swept) = tokio::task::spawn_blocking(move || {
                let swept = self.expire(&ageing);
                (self, swept)
            })
            .await
            .context("the connection ageing panicked")?;
            self = back;
            match swept {
                Ok(sweep)
                    if sweep.expired + sweep.templates_expired + sweep.localities_expired + sweep.replicas_erased
                        > 0 =>
                {
                    log::debug!(
                        "expired {} connections ({} entries in the table), {} persistence templates and {} \
                         lblc/lblcr entries; lblcr sets lost {} members",
                        sweep.expired,
                        sweep.entries,
                        sweep.templates_expired,
                        sweep.localities_expired,
                        sweep.replicas_erased
                    );
                }
                Ok(_) => {}
                Err(err) => log::warn!("ageing the connection table: {err:#}"),
            }
            pause = INTERVAL.max(started.elapsed() * PAUSE_FACTOR);
        }
    }
}

/// A connection as the table holds it: its client direction's entry, its reply
/// direction's (NAT and Full-NAT), or both. An entry whose partner is gone (evicted)
/// stands alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub client: Option<(FlowKey, Conn)>,
    pub reply: Option<(FlowKey, Conn)>,
}

impl Connection {
    /// The connection the entry `conn` at `key` belongs to, its partner read by
    /// `lookup`. A partner that names another entry than this one is not its partner.
    pub fn of(key: FlowKey, conn: Conn, lookup: impl FnOnce(&FlowKey) -> Result<Option<Conn>>) -> Result<Self> {
        let this = Some((key, conn));
        if conn.is_reply() {
            let Some(client_key) = client_key(&key, &conn) else { return Ok(Self { client: None, reply: this }) };
            let client = lookup(&client_key)?
                .filter(|client| !client.is_reply() && reply_key(&client_key, client) == Some(key))
                .map(|client| (client_key, client));
            Ok(Self { client, reply: this })
        } else {
            let Some(reply_key) = reply_key(&key, &conn) else { return Ok(Self { client: this, reply: None }) };
            let reply = lookup(&reply_key)?
                .filter(|reply| reply.is_reply() && client_key(&reply_key, reply) == Some(key))
                .map(|reply| (reply_key, reply));
            Ok(Self { client: this, reply })
        }
    }

    fn entries(&self) -> impl Iterator<Item = &(FlowKey, Conn)> {
        self.client.iter().chain(&self.reply)
    }

    pub fn keys(&self) -> impl Iterator<Item = FlowKey> + '_ {
        self.entries().map(|(key, _)| *key)
    }

    /// Whole seconds since either direction last forwarded a packet.
    pub fn idle(&self, now: u32) -> u32 {
        self.entries().map(|(_, conn)| idle(now, conn)).min().unwrap_or(0)
    }

    /// Idle for longer than its state's timeout, at `now` (which [`Expiry::expire`]
    /// takes a second early, so this is never early). The state is the client entry's
    /// (both hold it).
    pub fn expired(&self, now: u32, timeouts: &Timeouts) -> bool {
        let Some((key, conn)) = self.entries().next() else { return false };
        self.idle(now) > timeouts.of(key.protocol, conn.state)
    }
}

/// A real server's connections as the table holds them.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    active: i64,
    inactive: i64,
}

/// Adds `sign` connections in `conn`'s state to its real server's count in `held`.
fn tally(held: &mut HashMap<u32, Held>, protocol: u8, conn: &Conn, sign: i64) {
    let counts = held.entry(conn.real).or_default();
    if state::is_active(protocol, conn.state) {
        counts.active += sign;
    } else {
        counts.inactive += sign;
    }
}

/// For each of `keys` (picked by a walk of `table`), reads its entry again, as a
/// packet may have used it since the walk read it, and passes it to `act` with what
/// `decide` answers for it now, if anything.
fn revisit<K: Pod, V: Pod, A>(
    table: &mut Table<K, V>,
    keys: Vec<K>,
    decide: impl Fn(&K, &V) -> Option<A>,
    mut act: impl FnMut(&mut Table<K, V>, &K, A) -> Result<()>,
) -> Result<()> {
    for key in keys {
        let Some(value) = table.get(&key)? else { continue };
        if let Some(action) = decide(&key, &value) {
            act(table, &key, action)?;
        }
    }
    Ok(())
}

/// Whole seconds since the entry forwarded a packet; none for a stamp from after
/// `now` (a packet that passed while the table was read).
fn idle(now: u32, conn: &Conn) -> u32 {
    now.saturating_sub(conn.last_seen)
}

pub use lb_common::conn::{client_key, reply_key};

/// Keeps the data path's clock going, the only writer of `CLOCK` once the data path is
/// loaded: a tick a second, for as long as the agent runs.
pub async fn keep_time(mut clock: Clock) -> Result<()> {
    let mut second = tokio::time::interval(Duration::from_secs(1));
    loop {
        second.tick().await;
        clock.tick()?;
    }
}

#[cfg(test)]
mod tests;
