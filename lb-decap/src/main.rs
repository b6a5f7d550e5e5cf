//! `lb-decap`: runs `lb_decap` on a real server behind a tunnelling director until
//! SIGTERM or SIGINT; `lb-decap status` prints what a running one counted.
//!
//!   lb-decap [--interface IF ...] [--xdp-mode native|generic|auto] [--pin-dir DIR]
//!            [--pid-file FILE] VIP [VIP ...]
//!   lb-decap status [--pin-dir DIR]

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lb_agent::config::XdpMode;
use lb_decap::{
    addresses::{self, Netlink},
    decapsulator::{self, Decapsulator},
    status,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{interval, sleep},
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
    /// Print the VIPs, local addresses and counters of the lb-decap running in this
    /// network namespace (Prometheus' text format).
    Status {
        /// Where that lb-decap pinned its maps.
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
    },
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
    /// Where to pin the maps for `lb-decap status`. Default: /sys/fs/bpf/lb-decap-net<N>,
    /// N naming this network namespace (bpffs is shared by all of them).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
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

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter = env_logger::Env::default().default_filter_or("info,netlink_packet_route=error");
    env_logger::Builder::from_env(filter).init();
    let outcome = match cli.command {
        Some(Command::Status { pin_dir }) => print_status(pin_dir),
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

fn print_status(pin_dir: Option<PathBuf>) -> Result<()> {
    let dir = pin_dir.map_or_else(default_pin_dir, Ok)?;
    print!("{}", status::text(&decapsulator::read_pinned(&dir)?));
    Ok(())
}

async fn run(args: Run) -> Result<()> {
    // Handled from the start: a stop that comes while attaching still detaches.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
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
    let pin_dir = args.pin_dir.map_or_else(default_pin_dir, Ok)?;
    decap.pin(&pin_dir)?;
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file)?;
    }
    let vips: Vec<String> = args.vips.iter().map(IpAddr::to_string).collect();
    log::info!(
        "decapsulating for {} on {}; counters: lb-decap status --pin-dir {}",
        vips.join(" "),
        interfaces.join(" "),
        pin_dir.display()
    );
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
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    log::info!("stopping: detaching from every interface");
    let detached = decap.detach_all();
    decap.unpin();
    if let Some(pid_file) = &args.pid_file {
        remove_pid_file(pid_file);
    }
    detached
}

/// Reads the host's addresses into `DECAP_LOCAL`.
async fn refresh(decap: &mut Decapsulator, netlink: &Netlink) -> Result<()> {
    let change = decap.set_local(netlink.addresses().await?)?;
    for address in change.added {
        log::info!("local address {address}: tunnels to it are decapsulated");
    }
    for address in change.removed {
        log::info!("local address {address} is gone");
    }
    Ok(())
}

/// [`refresh`] once running: a failure is logged, and the next event or tick retries.
async fn keep_refreshing(decap: &mut Decapsulator, netlink: &Netlink) {
    if let Err(err) = refresh(decap, netlink).await {
        log::error!("refreshing the local addresses: {err:#}");
    }
}

/// `/sys/fs/bpf/lb-decap-net<inode of this network namespace>`: every namespace's
/// instance has its own, in the one bpffs they all share.
fn default_pin_dir() -> Result<PathBuf> {
    let netns = fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(PathBuf::from(format!("/sys/fs/bpf/lb-decap-net{}", netns.ino())))
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
