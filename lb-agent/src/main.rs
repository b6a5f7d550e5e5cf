//! `lb-agent`: loads the XDP data path, attaches it, fills its maps from the
//! configuration, follows the real servers' links, serves metrics and the control
//! socket, and reloads on SIGHUP. SIGTERM or SIGINT detaches and exits.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result};
use aya_log::EbpfLogger;
use clap::Parser;
use lb_agent::{
    api,
    config::{self, Config},
    dataplane::{Dataplane, EbpfLogLevel},
    director::Director,
    metrics,
    neighbour::{self, Link, Neighbours},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
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
    let config = Config::load(&args.config)?;
    if args.check {
        println!("{}: ok ({})", args.config.display(), summary(&config));
        return Ok(());
    }
    let mut dataplane = Dataplane::load(config.connection_table_size, args.ebpf_log_level)?;
    let mut tasks = tokio::task::JoinSet::new();
    if args.ebpf_log_level != EbpfLogLevel::Off {
        tasks.spawn(ebpf_log(dataplane.logger(log::logger())?));
    }
    let director = Arc::new(Mutex::new(Director::new(dataplane)));
    let neighbours = Neighbours::connect()?;
    apply(&director, &neighbours, config.clone()).await?;
    log::info!("running {} from {}", summary(&config), args.config.display());

    tasks.spawn(metrics::serve(config.metrics_listen, director.clone()));
    tasks.spawn(api::serve(config.api_socket.clone(), director.clone()));
    let mut neighbour_events = neighbour::watch()?;
    let mut relink_tick = interval(RELINK_INTERVAL);
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&director, &neighbours, &args.config).await,
            _ = neighbour_events.recv() => relink(&director, &neighbours).await,
            _ = relink_tick.tick() => relink(&director, &neighbours).await,
            Some(done) = tasks.join_next() => {
                done.context("a task panicked")??;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    log::info!("stopping: detaching from every interface");
    let _ = std::fs::remove_file(&config.api_socket);
    // Dropping the director drops the data path: its XDP links detach with it.
    drop(lock(&director));
    Ok(())
}

async fn reload(director: &Arc<Mutex<Director>>, neighbours: &Neighbours, path: &Path) {
    log::info!("SIGHUP: reloading {}", path.display());
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            log::error!("{err}; keeping the running configuration");
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
}

/// Attaches, resolves the real servers (waiting a little for new ones), and applies.
async fn apply(director: &Arc<Mutex<Director>>, neighbours: &Neighbours, config: Config) -> Result<()> {
    let interfaces = lock(director).attach(&config)?;
    let addresses = real_addresses(&config);
    let deadline = Instant::now() + RESOLVE_WAIT;
    let links = loop {
        let links = neighbours.resolve(&addresses, &interfaces).await?;
        if links.len() == addresses.len() || Instant::now() >= deadline {
            break links;
        }
        sleep(Duration::from_millis(100)).await;
    };
    for address in addresses.iter().filter(|address| !links.contains_key(address)) {
        log::warn!(
            "real server {address} is not resolved on an attached interface yet; it takes no connections until it is"
        );
    }
    lock(director).apply(config, links)
}

async fn relink(director: &Arc<Mutex<Director>>, neighbours: &Neighbours) {
    let (addresses, interfaces) = {
        let director = lock(director);
        let Some(config) = director.running_config() else { return };
        (real_addresses(config), director.dataplane().attached_ifindexes())
    };
    let links: HashMap<IpAddr, Link> = match neighbours.resolve(&addresses, &interfaces).await {
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

fn real_addresses(config: &Config) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> =
        config.services.iter().flat_map(|service| service.reals.iter().map(|real| real.address)).collect();
    addresses.sort();
    addresses.dedup();
    addresses
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
