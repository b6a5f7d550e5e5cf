//! `lbctl`: the operator's command line. It talks to the agent's control socket only,
//! never to the data path's maps, and prints what ipvsadm would.

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
    /// Virtual services and real servers with their counters (as `ipvsadm -Ln --stats`).
    #[command(visible_alias = "ls")]
    List,
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("lbctl: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::List => match lb_api::call(&cli.socket, &Request::List)? {
            Response::Services { services } => print!("{}", list::render(&services)),
            Response::Error { message } => bail!("the agent refused: {message}"),
        },
    }
    Ok(())
}
