//! `lb-agent`: loads the XDP data path, attaches it, fills its maps from the
//! configuration, follows the real servers' links, serves metrics and the control
//! socket, and reloads on SIGHUP. SIGTERM or SIGINT detaches and exits.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result};
use aya_log::EbpfLogger;
use clap::Parser;
use lb_agent::{
    api::{self, ControlSocket},
    config::{self, Config},
    dataplane::{self, Dataplane, EbpfLogLevel},
    director::Director,
    expiry::{self, Expiry},
    metrics,
    neighbour::{self, Neighbours, Solicit},
    systemd,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    task::JoinSet,
    time::{Instant, interval, sleep},
};

#[derive(Parser)]
#[command(version, about = "The XDP load balancer's agent")]
struct Args {
    /// The configuration file.
    #[arg(long, short, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// How much the XDP program logs: `debug` traces every scheduling decision. Off by
    /// default, to keep the packet path lean.
    #[arg(long, value_enum, default_value_t)]
    ebpf_log_level: EbpfLogLevel,
    /// Check the configuration file and exit: 0 when it is valid, 1 with the line and
    /// field at fault when not (as `nginx -t` or `keepalived -t`).
    #[arg(long)]
    check: bool,
}

/// How often the real servers' links are checked and stale ones re-probed, besides
/// the neighbour events that report changes at once.
const RELINK_INTERVAL: Duration = Duration::from_secs(5);
/// How long an apply waits for new real servers to resolve before it publishes
/// without them (they join when they resolve).
const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// How long neighbour events are gathered before the table is read once for all.
const EVENT_SETTLE: Duration = Duration::from_millis(50);

/// The signals the agent acts on, set up before anything else: until a handler exists,
/// a SIGHUP (an early `systemctl reload`) would end the process.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // netlink-packet-route warns about every attribute a newer kernel extends.
    let filter = env_logger::Env::default().default_filter_or("info,netlink_packet_route=error");
    let mut logger = env_logger::Builder::from_env(filter);
    // The XDP program's records come under its crate's name, as asked on the command line.
    if let Some(level) = args.ebpf_log_level.filter() {
        logger.filter_module("lb_ebpf", level);
    }
    logger.init();
    if let Err(err) = run(args).await {
        log::error!("{err:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let signals = Signals {
        hangup: signal(SignalKind::hangup())?,
        terminate: signal(SignalKind::terminate())?,
        interrupt: signal(SignalKind::interrupt())?,
    };
    let config = Config::load(&args.config)?;
    if args.check {
        println!("{}: ok ({})", args.config.display(), summary(&config));
        return Ok(());
    }
    let mut dataplane = Dataplane::load(config.connection_table_size, args.ebpf_log_level)?;
    let mut tasks = JoinSet::new();
    if args.ebpf_log_level != EbpfLogLevel::Off {
        tasks.spawn(ebpf_log(dataplane.logger(log::logger())?));
    }
    tasks.spawn(expiry::keep_time(dataplane.clock()?));
    let expiry = Expiry::new(&dataplane)?;
    let director = Arc::new(Mutex::new(Director::new(dataplane)));
    let neighbours = Neighbours::connect()?;
    let served = serve(&director, &neighbours, &args.config, config, signals, tasks, expiry).await;
    systemd::notify("STOPPING=1");
    log::info!("stopping: detaching from every interface");
    let detached = lock(&director).detach_all();
    served.and(detached)
}

/// Applies the first configuration, then serves until asked to stop.
async fn serve(
    director: &Arc<Mutex<Director>>,
    neighbours: &Neighbours,
    path: &Path,
    config: Config,
    mut signals: Signals,
    mut tasks: JoinSet<Result<()>>,
    expiry: Expiry,
) -> Result<()> {
    apply(director, neighbours, config.clone()).await?;
    log::info!("running {} from {}", summary(&config), path.display());
    // Both sockets are bound before systemd hears the agent is ready.
    let metrics_listener = metrics::bind(config.metrics_listen).await?;
    let control = Arc::new(ControlSocket::bind(config.api_socket.clone())?);
    tasks.spawn(metrics::serve(metrics_listener, director.clone(), expiry.counts()));
    let running = director.clone();
    tasks.spawn(expiry.run(move || lock(&running).ageing()));
    tasks.spawn(api::serve(control.clone(), director.clone()));
    let mut neighbour_events = neighbour::watch()?;
    let mut relink_tick = interval(RELINK_INTERVAL);
    systemd::notify("READY=1");
    loop {
        tokio::select! {
            _ = signals.hangup.recv() => reload(director, neighbours, path).await,
            Some(address) = neighbour_events.recv() => {
                if is_real_server_event(director, address, &mut neighbour_events).await {
                    relink(director, neighbours, Solicit::No).await;
                }
            }
            _ = relink_tick.tick() => relink(director, neighbours, Solicit::Yes).await,
            Some(done) = tasks.join_next() => done.context("a task panicked")??,
            _ = signals.terminate.recv() => break,
            _ = signals.interrupt.recv() => break,
        }
    }
    Ok(())
}

/// Whether `first`, or an event that follows it closely, concerns a real server. A
/// burst of events (a solicitation, a moved host) makes one look at the table.
async fn is_real_server_event(
    director: &Mutex<Director>,
    first: IpAddr,
    events: &mut tokio::sync::mpsc::Receiver<IpAddr>,
) -> bool {
    sleep(EVENT_SETTLE).await;
    let reals = real_addresses(lock(director).running_config());
    let mut concerned = reals.contains(&first);
    while let Ok(address) = events.try_recv() {
        concerned |= reals.contains(&address);
    }
    concerned
}

async fn reload(director: &Arc<Mutex<Director>>, neighbours: &Neighbours, path: &Path) {
    log::info!("SIGHUP: reloading {}", path.display());
    systemd::notify("RELOADING=1");
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            log::error!("{err}; keeping the running configuration");
            systemd::notify("READY=1");
            return;
        }
    };
    if let Some(running) = lock(director).running_config() {
        for field in running.restart_only_changes(&config) {
            log::warn!("{field} changes take effect when the agent restarts");
        }
    }
    let summary = summary(&config);
    match apply(director, neighbours, config).await {
        Ok(()) => log::info!("reloaded: {summary}"),
        Err(err) => log::error!("{err:#}; keeping the running configuration"),
    }
    systemd::notify("READY=1");
}

/// Resolves the real servers on the configured interfaces (waiting a little for new
/// ones), then applies. An interface that does not exist refuses the configuration
/// before anything changes.
async fn apply(director: &Arc<Mutex<Director>>, neighbours: &Neighbours, config: Config) -> Result<()> {
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    let interfaces: Vec<u32> =
        config.interfaces.iter().map(|interface| dataplane::ifindex(&interface.name)).collect::<Result<_>>()?;
    let addresses: Vec<IpAddr> = real_addresses(Some(&config)).into_iter().collect();
    let deadline = Instant::now() + RESOLVE_WAIT;
    let links = loop {
        let links = neighbours.resolve(&addresses, &interfaces, Solicit::Yes).await?;
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
    lock(director).apply(config, links)
}

async fn relink(director: &Arc<Mutex<Director>>, neighbours: &Neighbours, solicit: Solicit) {
    let (addresses, interfaces) = {
        let director = lock(director);
        let addresses: Vec<IpAddr> = real_addresses(director.running_config()).into_iter().collect();
        (addresses, director.dataplane().attached_ifindexes())
    };
    let links = match neighbours.resolve(&addresses, &interfaces, solicit).await {
        Ok(links) => links,
        Err(err) => {
            log::warn!("reading the neighbour table: {err:#}");
            return;
        }
    };
    if let Err(err) = lock(director).relink(links) {
        log::error!("updating real servers' links: {err:#}");
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

/// Passes the XDP program's log records on to the agent's log as they arrive.
async fn ebpf_log(logger: EbpfLogger<&'static dyn log::Log>) -> Result<()> {
    // SAFETY: the logger owns its ring buffer's file descriptor and keeps it open, the
    // same one, for as long as it lives, and the AsyncFd owns the logger.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("watching the eBPF log")?;
    loop {
        let mut ready = logger.readable_mut().await.context("waiting for the eBPF log")?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

fn real_addresses(config: Option<&Config>) -> HashSet<IpAddr> {
    config
        .iter()
        .flat_map(|config| &config.services)
        .flat_map(|service| &service.reals)
        .map(|real| real.address)
        .collect()
}

fn summary(config: &Config) -> String {
    let reals: usize = config.services.iter().map(|service| service.reals.len()).sum();
    format!("{} services, {} real servers", config.services.len(), reals)
}

/// The director, also after a panic elsewhere: its state stays consistent between
/// writes, so carrying on is safer than stopping the data path.
fn lock(director: &Mutex<Director>) -> MutexGuard<'_, Director> {
    director.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
