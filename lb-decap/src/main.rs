//! `lb-decap`: runs `lb_decap` on a real server behind a tunnelling director until
//! SIGTERM or SIGINT; `lb-decap status` prints what a running one counted.
//!
//!   lb-decap [--interface IF ...] [--xdp-mode native|generic|auto] [--pid-file FILE]
//!            VIP [VIP ...]
//!   lb-decap status

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lb_agent::config::XdpMode;
use lb_decap::{
    addresses::{self, Netlink},
    decapsulator::Decapsulator,
    status,
};
use tokio::{
    io::AsyncWriteExt,
    net::UnixStream,
    signal::unix::{SignalKind, signal},
    time::{interval, sleep, timeout},
};

#[derive(Parser)]
#[command(
    version,
    about = "Decapsulates a tunnelling (LVS-TUN) director's packets for the VIPs of this real server",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Run,
}

#[derive(Subcommand)]
enum Command {
    /// Print the interfaces, VIPs, local addresses and counters of the lb-decap running
    /// in this network namespace (Prometheus' text format).
    Status,
}

#[derive(Args)]
struct Run {
    /// An interface to attach to; repeat for more. Default: every interface that is up,
    /// not the loopback, and has an Ethernet address.
    #[arg(long = "interface", short, value_name = "IF")]
    interfaces: Vec<String>,
    /// native (in the driver), generic (the kernel's skb path), or auto (native where
    /// the driver has it).
    #[arg(long, value_enum, default_value_t)]
    xdp_mode: XdpMode,
    /// Write the process id to FILE once attached (and remove it on exit), so that a
    /// script can wait until decapsulation runs.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// The VIPs this real server serves (it has them on its loopback): only tunnel
    /// packets whose inner destination is one of them are decapsulated.
    #[arg(value_name = "VIP", required = true, value_parser = parse_vip)]
    vips: Vec<IpAddr>,
}

/// How often the host's addresses are read again, besides the netlink events that
/// report changes at once (events can be lost when the socket's buffer overflows).
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// How long address events are gathered before the addresses are read once for all.
const EVENT_SETTLE: Duration = Duration::from_millis(20);
/// How long a status client may take to read what it asked for.
const STATUS_WRITE_WAIT: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter = env_logger::Env::default().default_filter_or("info,netlink_packet_route=error");
    env_logger::Builder::from_env(filter).init();
    let outcome = match cli.command {
        Some(Command::Status) => status::fetch().map(|text| print!("{text}")),
        None => run(cli.run).await,
    };
    if let Err(err) = outcome {
        log::error!("{err:#}");
        std::process::exit(1);
    }
}

fn parse_vip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| "expected a VIP: an IPv4 or IPv6 address such as 203.0.113.10 or 2001:db8::10".to_owned())
}

async fn run(args: Run) -> Result<()> {
    // Handled from the start: a stop that comes while attaching still detaches.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Bound first: it also tells a second lb-decap in this namespace that it is one.
    let status_socket = status::bind()?;
    let netlink = Netlink::connect()?;
    let interfaces = if args.interfaces.is_empty() { netlink.default_interfaces().await? } else { args.interfaces };
    if interfaces.is_empty() {
        bail!("no interface to attach to: none is up with an Ethernet address; name one with --interface");
    }
    // Subscribed before the first read, so no change falls between the two.
    let mut address_events = addresses::watch()?;
    let mut decap = Decapsulator::load()?;
    decap.set_vips(args.vips.iter().copied().collect())?;
    refresh(&mut decap, &netlink).await?;
    for interface in &interfaces {
        decap.attach(interface, args.xdp_mode)?;
    }
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file)?;
    }
    let vips: Vec<String> = args.vips.iter().map(IpAddr::to_string).collect();
    log::info!("decapsulating for VIPs {} on {}; counters: lb-decap status", vips.join(" "), interfaces.join(" "));
    let mut tick = interval(REFRESH_INTERVAL);
    loop {
        tokio::select! {
            Some(()) = address_events.recv() => {
                sleep(EVENT_SETTLE).await;
                while address_events.try_recv().is_ok() {}
                keep_refreshing(&mut decap, &netlink).await;
            }
            _ = tick.tick() => keep_refreshing(&mut decap, &netlink).await,
            _ = hangup.recv() => keep_refreshing(&mut decap, &netlink).await,
            Ok((client, _)) = status_socket.accept() => answer_status(&decap, client).await,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    log::info!("stopping: detaching from every interface");
    let detached = decap.detach_all();
    if let Some(pid_file) = &args.pid_file {
        remove_pid_file(pid_file);
    }
    detached
}

/// Reads the host's addresses into `DECAP_LOCAL`.
async fn refresh(decap: &mut Decapsulator, netlink: &Netlink) -> Result<()> {
    let change = decap.set_local(netlink.addresses().await?)?;
    let list = |addresses: &[IpAddr]| addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(" ");
    if !change.added.is_empty() {
        log::info!("tunnels to these local addresses are decapsulated: {}", list(&change.added));
    }
    if !change.removed.is_empty() {
        log::info!("local addresses gone: {}", list(&change.removed));
    }
    Ok(())
}

/// [`refresh`] once running: a failure is logged, and the next event or tick retries.
async fn keep_refreshing(decap: &mut Decapsulator, netlink: &Netlink) {
    if let Err(err) = refresh(decap, netlink).await {
        log::error!("refreshing the local addresses: {err:#}");
    }
}

/// Writes the status to a client of the status socket, and hangs up.
async fn answer_status(decap: &Decapsulator, mut client: UnixStream) {
    let text = match decap.snapshot() {
        Ok(snapshot) => status::text(&snapshot),
        Err(err) => format!("# lb-decap: reading the counters failed: {err:#}\n"),
    };
    // A client that does not read is not waited for long.
    if let Err(err) =
        timeout(STATUS_WRITE_WAIT, client.write_all(text.as_bytes())).await.map_err(io::Error::from).and_then(|r| r)
    {
        log::warn!("answering a status request: {err}");
    }
}

/// Written whole (a reader never sees half a number) once attached.
fn write_pid_file(path: &Path) -> Result<()> {
    let partial = path.with_extension("partial");
    fs::write(&partial, format!("{}\n", std::process::id()))
        .and_then(|()| fs::rename(&partial, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Removes the pid file if it still names this process.
fn remove_pid_file(path: &Path) {
    let ours = fs::read_to_string(path).is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    if ours && let Err(err) = fs::remove_file(path) {
        log::warn!("removing {}: {err}", path.display());
    }
}
