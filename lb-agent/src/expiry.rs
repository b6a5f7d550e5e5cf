//! Connection ageing, IPVS's timeouts: the agent forgets connections that have been
//! idle for longer than their timeout, so a Full-NAT connection's local port (the key
//! of its reply entry) is free again once the connection has ended or gone quiet.
//!
//! The data path stamps an entry with the second it last forwarded a packet of it
//! (`last_seen`) and marks it closing when a FIN or RST passes; it never removes an
//! entry itself. [`Expiry::expire`] walks the table, pairs the two entries of a NAT or
//! Full-NAT connection, and removes the connections idle for longer than their
//! timeout: `tcp`, `tcp_fin` once closing, `udp`.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use lb_common::{
    IPPROTO_TCP,
    conn::{CONN_CLOSING, Conn, FlowKey},
};

use crate::{
    config::Timeouts,
    dataplane::{Clock, ConnTable, kernel_seconds},
};

/// How often the table is walked, at the least.
const INTERVAL: Duration = Duration::from_secs(2);
/// After a walk that took `d`, the next waits at least `PAUSE_FACTOR × d`: a large table
/// is aged less often rather than taking a whole CPU.
const PAUSE_FACTOR: u32 = 4;

/// The ager: its own handle on the connection table, and what it counted.
pub struct Expiry {
    table: ConnTable,
    clock: Clock,
    counts: Arc<Counts>,
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
}

impl Expiry {
    /// The ager of `table`, whose entries are stamped by `clock`.
    pub fn new(table: ConnTable, clock: Clock) -> Self {
        Self { table, clock, counts: Arc::default() }
    }

    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// Removes every connection idle for longer than its timeout. The client
    /// direction's entry goes first, then the reply's, so a Full-NAT local port is
    /// never free while a client entry still forwards with it.
    pub fn expire(&mut self, timeouts: &Timeouts) -> Result<Sweep> {
        // Idle times are measured on the clock the entries were stamped by. If it has
        // fallen behind the kernel's (its ticker stalled), entries stamped before it
        // catches up would look older than they are: no walk until it has.
        let clock = self.clock.read()?;
        let kernel = kernel_seconds()?;
        if kernel > clock + 1 {
            log::warn!("the data path's clock is {} s behind; ageing waits for it", kernel - clock);
            return Ok(Sweep::default());
        }
        // `CLOCK` counts whole seconds and is written once a second, so a stamp may be up
        // to two seconds behind its packet, and the clock is not ahead of this walk:
        // taking now a second early, an idle time above the timeout means more than the
        // timeout has passed (never early, at most two seconds late).
        let now = clock.saturating_sub(1);
        // An entry idle for no longer than the shortest timeout of its protocol is
        // fresh, and so is its connection: only the others are looked at again.
        let mut candidates = Vec::new();
        let entries = self.table.walk(|key, conn| {
            let shortest = timeout(key.protocol, false, timeouts).min(timeout(key.protocol, true, timeouts));
            if idle(now, conn) > shortest {
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
            }
        }
        self.counts.entries.store(entries, Ordering::Relaxed);
        self.counts.expired.fetch_add(expired, Ordering::Relaxed);
        Ok(Sweep { entries, expired })
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

    /// Ages the table for as long as the agent runs, with the timeouts `timeouts`
    /// answers at each walk (so a reload's take effect at the next).
    pub async fn run(mut self, timeouts: impl Fn() -> Timeouts) -> Result<()> {
        let mut pause = INTERVAL;
        loop {
            tokio::time::sleep(pause).await;
            let timeouts = timeouts();
            let started = std::time::Instant::now();
            let (back, swept) = tokio::task::spawn_blocking(move || {
                let swept = self.expire(&timeouts);
                (self, swept)
            })
            .await
            .context("the connection ageing panicked")?;
            self = back;
            match swept {
                Ok(sweep) if sweep.expired > 0 => {
                    log::debug!("expired {} connections ({} entries in the table)", sweep.expired, sweep.entries);
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

    /// A FIN or RST passed, either way.
    pub fn closing(&self) -> bool {
        self.entries().any(|(_, conn)| conn.flags & CONN_CLOSING != 0)
    }

    /// Idle for longer than its timeout, at `now` (which [`Expiry::expire`] takes a
    /// second early, so this is never early).
    pub fn expired(&self, now: u32, timeouts: &Timeouts) -> bool {
        let Some((key, _)) = self.entries().next() else { return false };
        self.idle(now) > timeout(key.protocol, self.closing(), timeouts)
    }
}

/// The timeout of a connection of `protocol`: IPVS's `tcp` for a TCP connection,
/// `tcp_fin` once it is `closing`, `udp` for the rest (the data path carries only TCP
/// and UDP).
pub fn timeout(protocol: u8, closing: bool, timeouts: &Timeouts) -> u32 {
    match protocol {
        IPPROTO_TCP if closing => timeouts.tcp_fin,
        IPPROTO_TCP => timeouts.tcp,
        _ => timeouts.udp,
    }
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
