//! What changes the running configuration, one change at a time: the file reloaded
//! (SIGHUP), lbctl's changes (written back to the file), the real servers' links, and
//! their health.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use lb_api::Change;
use tokio::time::{Instant, sleep};

use crate::{
    api::Peer,
    config::{self, Config, edit, rewrite},
    dataplane,
    director::Director,
    health::checker::{Checkers, Health},
    neighbour::{Neighbours, Solicit},
    systemd,
};

/// How long an apply waits for new real servers to resolve before it publishes
/// without them (they join when they resolve).
const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// How long neighbour events are gathered before the table is read once for all.
const EVENT_SETTLE: Duration = Duration::from_millis(50);

pub struct Control {
    director: Arc<Mutex<Director>>,
    neighbours: Neighbours,
    /// The configuration file: reloaded from, and written back to.
    path: PathBuf,
    /// Held by each change from the configuration it starts from to the one it leaves,
    /// so two never interleave.
    turn: tokio::sync::Mutex<()>,
    /// The health checks of the running configuration, and what they find.
    checkers: Mutex<Checkers>,
    health: Arc<Health>,
}

impl Control {
    pub fn new(director: Arc<Mutex<Director>>, neighbours: Neighbours, path: PathBuf) -> Self {
        let health = Arc::new(Health::default());
        let checkers = Mutex::new(Checkers::new(health.clone()));
        Self { director, neighbours, path, turn: tokio::sync::Mutex::new(()), checkers, health }
    }

    /// The real servers' health, as their checks find it.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The director, also after a panic elsewhere: its state stays consistent between
    /// writes, so carrying on is safer than stopping the data path.
    pub fn director(&self) -> MutexGuard<'_, Director> {
        lock(&self.director)
    }

    /// A handle of its own on the director, for tasks that only read it.
    pub fn director_handle(&self) -> Arc<Mutex<Director>> {
        self.director.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the first configuration.
    pub async fn start(&self, config: Config) -> Result<()> {
        let _turn = self.turn.lock().await;
        self.apply(config).await
    }

    /// SIGHUP: runs the file as it is now, or keeps the running configuration if the
    /// file is refused.
    pub async fn reload(&self) {
        let _turn = self.turn.lock().await;
        log::info!("SIGHUP: reloading {}", self.path.display());
        systemd::notify("RELOADING=1");
        let config = match Config::load(&self.path) {
            Ok(config) => config,
            Err(err) => {
                log::error!("{err}; keeping the running configuration");
                systemd::notify("READY=1");
                return;
            }
        };
        self.warn_restart_only(&config);
        let summary = summary(&config);
        match self.apply(config).await {
            Ok(()) => log::info!("reloaded: {summary}"),
            Err(err) => log::error!("{err:#}; keeping the running configuration"),
        }
        systemd::notify("READY=1");
    }

    /// lbctl's `changes`: made to the running configuration, run as a whole, and
    /// written back to the file, so a reload or a restart keeps them. A change that is
    /// refused, or whose file cannot be written, leaves everything as it was.
    pub async fn change(&self, changes: &[Change], peer: Peer) -> Result<String> {
        let _turn = self.turn.lock().await;
        let running = self.director().running_config().cloned().context("no configuration is running yet")?;
        let source = std::fs::read_to_string(&self.path).unwrap_or_default();
        // Written from what runs, the file would lose edits made since the last reload.
        if Config::parse(&source, &self.path).ok().as_ref() != Some(&running) {
            bail!(
                "{} is not what runs (edited since the last reload, or unreadable): reload it (systemctl reload \
                 lb-agent) or put it back, then change again",
                self.path.display()
            );
        }
        let changed = edit::apply(&running, changes)?;
        // The agent runs exec checks as root: the group may not choose what.
        if peer != Peer::Root && changed.exec_commands() != running.exec_commands() {
            bail!("exec checks' commands run as root: only root may set or change them (or write them in the file)");
        }
        self.warn_restart_only(&changed);
        let staged = rewrite::Staged::new(&self.path, &rewrite::text(&source, &changed)?)?;
        let summary = summary(&changed);
        self.apply(changed).await?;
        if let Err(err) = staged.commit() {
            self.apply(running).await.context("putting the previous configuration back")?;
            return Err(err.context("the change was undone"));
        }
        log::info!("lbctl: {} change(s) applied and written to {}: {summary}", changes.len(), self.path.display());
        Ok(summary)
    }

    fn warn_restart_only(&self, config: &Config) {
        if let Some(running) = self.director().running_config() {
            for field in running.restart_only_changes(config) {
                log::warn!("{field} changes take effect when the agent restarts");
            }
        }
    }

    /// Re-reads the real servers' links and updates the data path where they changed.
    pub async fn relink(&self, solicit: Solicit) {
        // Links read for one configuration must not land on the next.
        let _turn = self.turn.lock().await;
        let (addresses, interfaces) = {
            let director = self.director();
            let addresses: Vec<IpAddr> = real_addresses(director.running_config()).into_iter().collect();
            (addresses, director.dataplane().attached_ifindexes())
        };
        let links = match self.neighbours.resolve(&addresses, &interfaces, solicit).await {
            Ok(links) => links,
            Err(err) => {
                log::warn!("reading the neighbour table: {err:#}");
                return;
            }
        };
        if let Err(err) = self.director().relink(links) {
            log::error!("updating real servers' links: {err:#}");
        }
    }

    /// Serves the real servers that are healthy now (after a check turned one down or
    /// up).
    pub async fn follow_health(&self) {
        let _turn = self.turn.lock().await;
        let mut director = self.director();
        let Some(config) = director.running_config() else { return };
        let down = self.health.down(config);
        if let Err(err) = director.set_down(down) {
            log::error!("updating the data path for the real servers' health: {err:#}");
        }
    }

    /// Whether `first`, or an event that follows it closely, concerns a real server. A
    /// burst of events (a solicitation, a moved host) makes one look at the table.
    pub async fn is_real_server_event(&self, first: IpAddr, events: &mut tokio::sync::mpsc::Receiver<IpAddr>) -> bool {
        sleep(EVENT_SETTLE).await;
        let reals = real_addresses(self.director().running_config());
        let mut concerned = reals.contains(&first);
        while let Ok(address) = events.try_recv() {
            concerned |= reals.contains(&address);
        }
        concerned
    }

    /// Resolves the real servers on the configured interfaces (waiting a little for new
    /// ones), then applies. An interface that does not exist refuses the configuration
    /// before anything changes.
    async fn apply(&self, config: Config) -> Result<()> {
        for warning in config.warnings() {
            log::warn!("{warning}");
        }
        let interfaces: Vec<u32> =
            config.interfaces.iter().map(|interface| dataplane::ifindex(&interface.name)).collect::<Result<_>>()?;
        let addresses: Vec<IpAddr> = real_addresses(Some(&config)).into_iter().collect();
        let deadline = Instant::now() + RESOLVE_WAIT;
        let links = loop {
            let links = self.neighbours.resolve(&addresses, &interfaces, Solicit::Yes).await?;
            if links.reals.len() == addresses.len() || Instant::now() >= deadline {
                break links;
            }
            sleep(Duration::from_millis(100)).await;
        };
        warn_if_not_forwarding(&config);
        for (address, why) in &links.unresolved {
            log::warn!("real server {address} is not reachable yet: {why}; it takes no connections until it is");
        }
        for (service, real) in config.services.iter().flat_map(|s| s.reals.iter().map(move |r| (s, r))) {
            let Some(link) = links.reals.get(&real.address) else { continue };
            match (service.forwarding_of(real), link.gateway) {
                (config::Forwarding::Dr, Some(gateway)) => log::warn!(
                    "service {}: real server {} is reached through the gateway {gateway}; direct routing needs it on a \
                     link the director is attached to, so it takes no connections",
                    service.name,
                    real.address
                ),
                (config::Forwarding::Tun, _)
                    if link.source.is_none() && config.tunnel_source_for(real.address).is_none() =>
                {
                    log::warn!(
                        "service {}: real server {} has no tunnel source: the director has no address of its IP version \
                         on the route to it, and `tunnel_source:` names none; it takes no connections",
                        service.name,
                        real.address
                    )
                }
                _ => {}
            }
        }
        let down = self.health.down(&config);
        self.director().apply(config.clone(), links, down)?;
        lock(&self.checkers).follow(&config);
        Ok(())
    }
}

/// NAT and Full-NAT replies are routed by the kernel's tables (`bpf_fib_lookup`), which
/// answer only where the director forwards IP (as an LVS-NAT director always did).
fn warn_if_not_forwarding(config: &Config) {
    let rewriting = |service: &config::VirtualService| {
        service
            .reals
            .iter()
            .any(|real| matches!(service.forwarding_of(real), config::Forwarding::Nat | config::Forwarding::Fnat))
    };
    for (family, is_ipv4, sysctl) in
        [("IPv4", true, "net/ipv4/ip_forward"), ("IPv6", false, "net/ipv6/conf/all/forwarding")]
    {
        let serves = |service: &config::VirtualService| {
            let (ipv4, ipv6) = service.families();
            if is_ipv4 { ipv4 } else { ipv6 }
        };
        let wanted = config.services.iter().any(|service| serves(service) && rewriting(service));
        let on = std::fs::read_to_string(format!("/proc/sys/{sysctl}")).is_ok_and(|value| value.trim() == "1");
        if wanted && !on {
            log::warn!(
                "{family} forwarding is off ({}=0): replies of nat and fnat services cannot be routed back to \
                 clients and are dropped (no_route) until it is on",
                sysctl.replace('/', ".")
            );
        }
    }
}

/// The real servers' addresses, the sorry servers' too: they are resolved before they
/// serve.
fn real_addresses(config: Option<&Config>) -> HashSet<IpAddr> {
    let services = config.iter().flat_map(|config| &config.services);
    services.flat_map(|service| service.reals.iter().map(|real| real.address).chain(service.sorry_server)).collect()
}

pub fn summary(config: &Config) -> String {
    let reals: usize = config.services.iter().map(|service| service.reals.len()).sum();
    format!("{} services, {} real servers", config.services.len(), reals)
}

/// `mutex`'s value, also after a panic elsewhere: the values guarded here stay
/// consistent between writes, so carrying on is safer than stopping the data path.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
