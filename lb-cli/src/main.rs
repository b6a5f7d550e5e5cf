//! `lbctl`: the operator's command line. It talks to the agent's control socket only,
//! never to the data path's maps. It speaks ipvsadm (`lbctl -A -t ...`, `lbctl -Ln`),
//! with ipvsadm's layouts, and has readable commands beside (`lbctl service add ...`).

mod ipvsadm;
mod keepalived;
mod list;
mod readable;
mod save;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Control the XDP load balancer, as ipvsadm does IPVS",
    after_help = "ipvsadm's own command lines work too: lbctl -A -t 203.0.113.10:80 -s wrr, lbctl -Ln, lbctl -S -n, \
                  lbctl -R < rules (lbctl -h lists them)."
)]
struct Cli {
    /// The agent's control socket (its `api_socket`).
    #[arg(long, global = true, default_value = lb_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: readable::Command,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, rest) = socket_and_rest(&args);
    // ipvsadm's command lines start with an option (or are empty: `ipvsadm` lists).
    if rest.first().is_none_or(|first| first.starts_with('-')) {
        std::process::exit(ipvsadm::run(&socket, &rest));
    }
    let cli = Cli::parse();
    if let Err(err) = readable::run(&cli.socket, cli.command) {
        eprintln!("lbctl: {err:#}");
        std::process::exit(1);
    }
}

/// `--socket PATH` (or `--socket=PATH`) wherever it is, and the other arguments.
fn socket_and_rest(args: &[String]) -> (PathBuf, Vec<String>) {
    let mut socket = PathBuf::from(lb_api::DEFAULT_SOCKET);
    let mut rest = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.strip_prefix("--socket") {
            Some("") => socket = words.next().map_or(socket, PathBuf::from),
            Some(value) if value.starts_with('=') => socket = PathBuf::from(&value[1..]),
            _ => rest.push(word.clone()),
        }
    }
    (socket, rest)
}
