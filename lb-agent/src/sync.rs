//! Connection synchronisation, IPVS's sync daemon done over authenticated datagrams.
//!
//! A master drains the connections the data path announces (`SYNC_EVENTS`: established,
//! closing, a stateless flow's third packet) and those the ager refreshes before a
//! peer's copy would expire, turns each into a record in the words both directors
//! share (`announce`), and sends them batched (`wire`) to the group or its peers. A
//! backup checks each datagram (`wire`: length, version, syncid, tag; `replay`) and
//! writes the entries the data path would have written (`install`), with its own ids
//! (`directory`); a record naming a service or real server it does not have waits aside
//! until an apply brings it, or its timeout passes.

pub mod announce;
pub mod directory;
pub mod install;
pub mod refresh;
mod replay;
mod socket;
pub mod wire;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use lb_common::{
    conn::{Conn, FlowKey},
    sync::{SyncEvent, SyncSettings},
};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
    time::MissedTickBehavior,
};

pub use self::directory::Directory;
use self::{
    install::Entries,
    replay::Replay,
    socket::Sender,
    wire::{Header, Kind, MAX_RECORDS, Record, Refused},
};
use crate::{
    config::{
        Timeouts,
        sync::{Key, Sync},
    },
    dataplane::{Clock, ConnTable, Dataplane, SyncSwitch, TemplateTable},
};

/// Records kept aside for a service or real server this director does not have yet.
const MAX_PENDING: usize = 65_536;
/// How often records kept aside are aged.
const PENDING_TICK: Duration = Duration::from_secs(1);
/// How often a master drains `SYNC_EVENTS` (the data path wakes no one): a connection
/// waits at most this long to be sent, and a busy master's datagrams go out full.
const DRAIN_PERIOD: Duration = Duration::from_millis(10);

/// What the sync daemon runs by: the running configuration's `sync:`, its timeouts, and
/// the translation of its ids. Published after every apply.
#[derive(Clone, Debug, Default)]
pub struct Orders {
    pub sync: Option<Sync>,
    pub timeouts: Timeouts,
    pub directory: Arc<Directory>,
}

/// What the daemon did, for the metrics.
#[derive(Debug, Default)]
pub struct Counts {
    /// Sent, received.
    pub datagrams: [AtomicU64; 2],
    pub connections: [AtomicU64; 2],
    /// By `Refused`, in `Refused::ALL`'s order.
    pub dropped: [AtomicU64; Refused::ALL.len()],
    /// The receiver's clock less the sender's at the last datagram taken, in ns.
    pub lag_ns: AtomicU64,
    /// Records kept aside.
    pub pending: AtomicU64,
}

pub const SENT: usize = 0;
pub const RECEIVED: usize = 1;

/// The connections the ager refreshes, for a master to announce again.
pub type Refreshes = mpsc::Receiver<Vec<(FlowKey, Conn)>>;

pub struct Daemon {
    events: RingBuf<MapData>,
    switch: SyncSwitch,
    conns: ConnTable,
    templates: TemplateTable,
    clock: Clock,
    counts: Arc<Counts>,
    replay: Replay,
    pending: VecDeque<(Instant, Record)>,
    /// This sender's id, drawn at start, and its next datagram's number.
    sender: u32,
    sequence: u64,
}

/// The sockets of one configuration of the daemon.
struct Running {
    key: ring::hmac::Key,
    syncid: u8,
    sender: Option<Sender>,
    receiver: Option<UdpSocket>,
}

impl Daemon {
    pub fn new(dataplane: &Dataplane) -> Result<Self> {
        let (events, switch) = dataplane.sync_events()?;
        Ok(Self {
            events,
            switch,
            conns: dataplane.conn_table(),
            templates: dataplane.template_table()?,
            clock: dataplane.clock()?,
            counts: Arc::default(),
            replay: Replay::default(),
            pending: VecDeque::new(),
            sender: ring::rand::generate::<[u8; 4]>(&ring::rand::SystemRandom::new())
                .map(|id| u32::from_be_bytes(id.expose()))
                .map_err(|_| anyhow::anyhow!("no random number for the sync sender's id"))?,
            sequence: 0,
        })
    }

    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// Runs as `orders` say, for as long as the agent runs.
    pub async fn run(mut self, mut orders: watch::Receiver<Orders>, mut refreshes: Refreshes) -> Result<()> {
        loop {
            let current = orders.borrow_and_update().clone();
            let running = match current.sync.as_ref().map(open).transpose() {
                Ok(running) => running,
                Err(err) => {
                    log::error!("sync: {err:#}; no connection is synchronised until the configuration changes");
                    None
                }
            };
            let announcing = running.as_ref().is_some_and(|running| running.sender.is_some());
            let quiet = refresh::quiet(&current.timeouts);
            self.switch.set(SyncSettings { announce: u32::from(announcing), quiet })?;
            if let Some(sync) = &current.sync {
                log::info!("sync: running as {} on {} (syncid {})", sync.role, sync.interface, sync.syncid);
            }
            self.serve(running, &current, &mut orders, &mut refreshes).await?;
        }
    }

    /// Serves one configuration until another arrives (with other sockets to open).
    async fn serve(
        &mut self,
        running: Option<Running>,
        current: &Orders,
        orders: &mut watch::Receiver<Orders>,
        refreshes: &mut Refreshes,
    ) -> Result<()> {
        let mut directory = current.directory.clone();
        let mut timeouts = current.timeouts;
        let mut tick = tokio::time::interval(PENDING_TICK);
        let mut drain = tokio::time::interval(DRAIN_PERIOD);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buffer = vec![0; 65_536];
        let sender = running.as_ref().and_then(|running| running.sender.as_ref());
        let receiver = running.as_ref().and_then(|running| running.receiver.as_ref());
        loop {
            tokio::select! {
                changed = orders.changed() => {
                    changed.context("the director stopped publishing")?;
                    let next = orders.borrow().clone();
                    if next.sync != current.sync {
                        return Ok(());
                    }
                    (directory, timeouts) = (next.directory.clone(), next.timeouts);
                    let announce = u32::from(sender.is_some());
                    self.switch.set(SyncSettings { announce, quiet: refresh::quiet(&timeouts) })?;
                    self.bind_pending(&directory, &timeouts);
                }
                _ = drain.tick(), if sender.is_some() => {
                    match self.drain(&directory) {
                        Ok(records) => self.send(running.as_ref(), &records).await,
                        Err(err) => log::warn!("sync: reading the announced connections: {err:#}"),
                    }
                }
                Some(refreshed) = refreshes.recv() => {
                    if sender.is_some() {
                        match self.records_of(&refreshed, &directory) {
                            Ok(records) => self.send(running.as_ref(), &records).await,
                            Err(err) => log::warn!("sync: refreshing connections: {err:#}"),
                        }
                    }
                }
                received = recv(receiver, &mut buffer) => {
                    // A daemon that stops on one bad moment would stop the agent: each
                    // failure is logged, and the next datagram tried.
                    let done = received.map_err(anyhow::Error::from).and_then(|(length, from)| {
                        let running = running.as_ref().context("no socket")?;
                        self.receive(running, &buffer[..length], from, &directory, &timeouts)
                    });
                    if let Err(err) = done {
                        log::warn!("sync: receiving: {err:#}");
                    }
                }
                _ = tick.tick() => self.age_pending(&timeouts),
            }
        }
    }

    /// The records of every connection the data path announced since the last drain.
    fn drain(&mut self, directory: &Directory) -> Result<Vec<Record>> {
        let mut announced = Vec::new();
        while let Some(item) = self.events.next() {
            announced.extend(announce::event(&item).map(|event: SyncEvent| (event.flow, event.conn)));
        }
        self.records_of(&announced, directory)
    }

    /// The records of client entries, with each one's persistence template.
    fn records_of(&self, entries: &[(FlowKey, Conn)], directory: &Directory) -> Result<Vec<Record>> {
        let now = self.clock.read()?;
        let mut records = Vec::with_capacity(entries.len());
        for (flow, conn) in entries {
            records.extend(announce::connection(flow, conn, now, directory));
            let Some(key) = announce::template_key(flow, conn, directory) else { continue };
            if let Some(template) = self.templates.get(&key)? {
                records.extend(announce::template(flow, &key, &template, now, directory));
            }
        }
        Ok(records)
    }

    /// Sends `records` in datagrams of at most `MAX_RECORDS`.
    async fn send(&mut self, running: Option<&Running>, records: &[Record]) {
        let Some((running, sender)) = running.and_then(|running| Some((running, running.sender.as_ref()?))) else {
            return;
        };
        for batch in records.chunks(MAX_RECORDS) {
            let header =
                Header { syncid: running.syncid, sender: self.sender, sequence: self.sequence, sent_at: unix_ns() };
            self.sequence += 1;
            if sender.send(&wire::encode(&running.key, &header, batch)).await > 0 {
                self.counts.datagrams[SENT].fetch_add(1, Relaxed);
                let connections = batch.iter().filter(|record| record.kind == Kind::Connection).count();
                self.counts.connections[SENT].fetch_add(connections as u64, Relaxed);
            }
        }
    }

    /// Checks a datagram and installs what it holds.
    fn receive(
        &mut self,
        running: &Running,
        datagram: &[u8],
        from: SocketAddr,
        directory: &Directory,
        timeouts: &Timeouts,
    ) -> Result<()> {
        let refused = |counts: &Counts, why: Refused| {
            counts.dropped[Refused::ALL.iter().position(|&reason| reason == why).expect("listed")]
                .fetch_add(1, Relaxed);
            log::debug!("sync: dropped a datagram from {from}: {}", why.label());
        };
        let (header, records) = match wire::decode(&running.key, running.syncid, datagram) {
            Ok(decoded) => decoded,
            Err(why) => {
                refused(&self.counts, why);
                return Ok(());
            }
        };
        let now = unix_ns();
        if !self.replay.accept(header.sender, header.sequence, header.sent_at, now) {
            refused(&self.counts, Refused::Replayed);
            return Ok(());
        }
        self.counts.datagrams[RECEIVED].fetch_add(1, Relaxed);
        self.counts.lag_ns.store(now.saturating_sub(header.sent_at), Relaxed);
        let connections = records.iter().filter(|record| record.kind == Kind::Connection).count();
        self.counts.connections[RECEIVED].fetch_add(connections as u64, Relaxed);
        for record in records {
            if !self.install(&record, directory)? {
                self.keep_aside(record, timeouts);
            }
        }
        Ok(())
    }

    /// Writes `record`'s entries; answers false when it names what this director does
    /// not have (yet).
    fn install(&mut self, record: &Record, directory: &Directory) -> Result<bool> {
        let now = self.clock.read()?;
        match install::entries(record, now, directory) {
            Ok(Entries::Connection { client, reply }) => {
                // An entry fresher than the record (this director forwards the
                // connection now, or heard of it later) stays: with `role: both` a
                // peer's refresh may echo what it once learnt from here.
                if self.conns.get(&client.0)?.is_some_and(|held| held.last_seen > client.1.last_seen) {
                    return Ok(true);
                }
                // The reply's entry first, as the data path writes them: a packet
                // never leaves without what its reply needs.
                if let Some((key, entry)) = reply {
                    self.conns.insert(&key, &entry)?;
                }
                self.conns.insert(&client.0, &client.1)?;
            }
            Ok(Entries::Template(key, template)) => self.templates.insert(&key, &template)?,
            Err(unbound) => {
                log::debug!("sync: keeping a record aside until its {unbound:?} is configured: {record:?}");
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn keep_aside(&mut self, record: Record, timeouts: &Timeouts) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((Instant::now(), record));
        self.age_pending(timeouts);
    }

    /// Installs the records kept aside that the configuration now has what for.
    fn bind_pending(&mut self, directory: &Directory, timeouts: &Timeouts) {
        let pending = std::mem::take(&mut self.pending);
        for (since, record) in pending {
            match self.install(&record, directory) {
                Ok(true) => {}
                Ok(false) => self.pending.push_back((since, record)),
                Err(err) => log::warn!("sync: installing a record kept aside: {err:#}"),
            }
        }
        self.age_pending(timeouts);
    }

    /// Forgets the records kept aside for longer than their connections would live.
    fn age_pending(&mut self, timeouts: &Timeouts) {
        let alive = |(since, record): &(Instant, Record)| {
            let left = timeouts.of(record.protocol, record.state).saturating_sub(record.idle);
            since.elapsed() < Duration::from_secs(u64::from(left))
        };
        self.pending.retain(alive);
        self.counts.pending.store(self.pending.len() as u64, Relaxed);
    }
}

/// Opens the sockets `sync` asks for.
fn open(sync: &Sync) -> Result<Running> {
    let key = Key::read(&sync.key_file).map_err(anyhow::Error::msg).context("sync.key_file")?;
    let sender = sync.role.announces().then(|| Sender::open(sync)).transpose().context("opening the sync sender")?;
    let receiver = sync
        .role
        .listens()
        .then(|| socket::listen(sync))
        .transpose()
        .with_context(|| format!("listening for sync datagrams on {} port {}", sync.interface, sync.port))?;
    Ok(Running { key: wire::key(&key.0), syncid: sync.syncid, sender, receiver })
}

/// The next datagram on `receiver`; never, without one.
async fn recv(receiver: Option<&UdpSocket>, buffer: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match receiver {
        Some(socket) => socket.recv_from(buffer).await,
        None => std::future::pending().await,
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}
