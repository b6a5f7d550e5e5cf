//! `lbctl`: the operator's command line. It talks to the agent's control socket only,
//! never to the data path's maps, and prints what ipvsadm would.

mod keepalived;
mod list;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use lb_api::{Request, Response};

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Control the XDP load balancer, as ipvsadm does IPVS")]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, default_value = lb_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Virtual services and real servers with their connections (as `ipvsadm -Ln`).
    #[command(visible_alias = "ls")]
    List {
        /// Their traffic counters instead (as `ipvsadm -Ln --stats`).
        #[arg(long, conflicts_with = "connections")]
        stats: bool,
        /// The connection entries (as `ipvsadm -Lnc`).
        #[arg(short = 'c', long)]
        connections: bool,
        /// Numeric output, as always (accepted for ipvsadm's habit).
        #[arg(short = 'n', long)]
        numeric: bool,
    },
    /// Print our configuration for another tool's.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// The virtual servers of a keepalived.conf (and the files it includes) as our YAML,
    /// on standard output; what cannot be carried over is said on standard error.
    Keepalived { file: PathBuf },
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("lbctl: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::List { connections: true, .. } => match lb_api::call(&cli.socket, &Request::Connections)? {
            Response::Connections { connections } => print!("{}", list::render_connections(&connections)),
            other => refused(other)?,
        },
        Command::List { stats, .. } => match lb_api::call(&cli.socket, &Request::List)? {
            Response::Services { services } if stats => print!("{}", list::render_stats(&services)),
            Response::Services { services } => print!("{}", list::render(&services)),
            other => refused(other)?,
        },
        Command::Import { source: ImportSource::Keepalived { file } } => {
            let import = keepalived::import(&file)?;
            print!("{}", import.yaml);
            for warning in import.warnings {
                eprintln!("{warning}");
            }
        }
    }
    Ok(())
}

/// An answer that is not the one asked for: the agent's error, or a mismatch.
fn refused(response: Response) -> Result<()> {
    match response {
        Response::Error { message } => bail!("the agent refused: {message}"),
        other => bail!("the agent answered something else: {other:?}"),
    }
}
