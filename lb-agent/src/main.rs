//! `lb-agent`: loads the XDP data path (adopting the maps and links an earlier agent
//! pinned), attaches it, fills its maps from the configuration, follows the real
//! servers' links, serves metrics and the control socket, and reloads on SIGHUP.
//! SIGTERM or SIGINT exits and leaves the data path forwarding, pinned, for the next
//! agent; `lb-agent --detach` takes the director out of service.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use aya_log::EbpfLogger;
use clap::Parser;
use lb_agent::{
    api::{self, ControlSocket},
    config::{self, Config},
    control::{self, Control},
    dataplane::{self, Dataplane, EbpfLogLevel},
    director::{Director, SavedDirector},
    expiry::{self, Expiry},
    health::Down,
    metrics,
    neighbour::{self, Neighbours, Solicit},
    sync, systemd,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    task::JoinSet,
    time::interval,
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
    /// Take the director out of service: detach the program from every interface and
    /// remove the pinned maps (the connection table with them) and the saved state.
    /// Refused while an agent runs on these pins: stop it first.
    #[arg(long, conflicts_with = "check")]
    detach: bool,
    /// With --detach: the pin_path to clear, instead of the configuration's (one the
    /// configuration no longer names, or with no configuration at all).
    #[arg(long, requires = "detach")]
    pin_path: Option<PathBuf>,
}

/// Walks' worth of refreshes the sync daemon may be behind by.
const SYNC_REFRESH_QUEUE: usize = 4;

/// How often the real servers' links are checked and stale ones re-probed, besides
/// the neighbour events that report changes at once.
const RELINK_INTERVAL: Duration = Duration::from_secs(5);

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
    if args.detach {
        let pin_path = match args.pin_path {
            Some(pin_path) => pin_path,
            None => Config::load(&args.config).context("reading pin_path (or name it: --pin-path)")?.pin_path,
        };
        return take_out_of_service(&pin_path);
    }
    let config = Config::load(&args.config)?;
    if args.check {
        println!("{}: ok ({})", args.config.display(), control::summary(&config));
        return Ok(());
    }
    let (mut dataplane, saved) =
        Dataplane::load_pinned::<SavedDirector>(&config.pin_path, config.connection_table_size, args.ebpf_log_level)?;
    let pin_dir = dataplane.pin_dir().map(|dir| dir.display().to_string()).unwrap_or_default();
    let mut tasks = JoinSet::new();
    if args.ebpf_log_level != EbpfLogLevel::Off {
        tasks.spawn(ebpf_log(dataplane.logger(log::logger())?));
    }
    tasks.spawn(expiry::keep_time(dataplane.clock()?));
    let mut expiry = Expiry::new(&dataplane)?;
    let daemon = sync::Daemon::new(&dataplane)?;
    let sync_counts = daemon.counts();
    let (refresh_to, refreshes) = tokio::sync::mpsc::channel(SYNC_REFRESH_QUEUE);
    expiry.refresh_to(refresh_to);
    let (mut director, down) = match saved {
        Some(saved) => Director::adopt(dataplane, saved)?,
        None => (Director::new(dataplane), Down::default()),
    };
    let (orders, sync_orders) = tokio::sync::watch::channel(sync::Orders::default());
    director.tell_sync(orders);
    tasks.spawn(daemon.run(sync_orders, refreshes));
    let control = Arc::new(Control::new(Arc::new(Mutex::new(director)), Neighbours::connect()?, args.config));
    control.health().seed(&down);
    let served = serve(&control, config, signals, tasks, expiry, sync_counts).await;
    systemd::notify("STOPPING=1");
    log::info!(
        "stopping: lb_ingress stays attached and its maps pinned at {pin_dir}, forwarding as they are until an \
         agent adopts them (lb-agent --detach takes the director out of service)"
    );
    served
}

/// `--detach`: removes the links (the program leaves every interface), the pinned maps
/// and the saved state.
fn take_out_of_service(pin_path: &std::path::Path) -> Result<()> {
    let done = dataplane::detach(pin_path)?;
    if done.is_empty() {
        println!("nothing is pinned at {}: the director is out of service", pin_path.display());
    }
    for line in done {
        println!("{line}");
    }
    Ok(())
}

/// Applies the first configuration, then serves until asked to stop.
async fn serve(
    control: &Arc<Control>,
    config: Config,
    mut signals: Signals,
    mut tasks: JoinSet<Result<()>>,
    expiry: Expiry,
    sync_counts: Arc<sync::Counts>,
) -> Result<()> {
    let (metrics_listen, api_socket, api_group) =
        (config.metrics_listen, config.api_socket.clone(), config.api_group.clone());
    let summary = control::summary(&config);
    control.start(config).await?;
    log::info!("running {summary} from {}", control.path().display());
    // Both sockets are bound before systemd hears the agent is ready.
    let metrics_listener = metrics::bind(metrics_listen).await?;
    let socket = Arc::new(ControlSocket::bind(api_socket, &api_group)?);
    tasks.spawn(metrics::serve(
        metrics_listener,
        control.director_handle(),
        expiry.counts(),
        control.health(),
        sync_counts,
    ));
    let running = control.clone();
    tasks.spawn(expiry.run(move || running.director().ageing()));
    tasks.spawn(api::serve(socket, control.clone()));
    let health = control.health();
    let mut neighbour_events = neighbour::watch()?;
    let mut relink_tick = interval(RELINK_INTERVAL);
    systemd::notify("READY=1");
    loop {
        tokio::select! {
            _ = signals.hangup.recv() => control.reload().await,
            Some(address) = neighbour_events.recv() => {
                if control.is_real_server_event(address, &mut neighbour_events).await {
                    control.relink(Solicit::No).await;
                }
            }
            _ = relink_tick.tick() => {
                control.relink(Solicit::Yes).await;
                // Again, in case the last health transition's apply failed.
                control.follow_health().await;
            }
            () = health.changed() => control.follow_health().await,
            Some(done) = tasks.join_next() => done.context("a task panicked")??,
            _ = signals.terminate.recv() => break,
            _ = signals.interrupt.recv() => break,
        }
    }
    Ok(())
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
