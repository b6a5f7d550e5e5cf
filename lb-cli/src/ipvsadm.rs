//! lbctl speaking ipvsadm: `lbctl -A -t 203.0.113.10:80 -s wrr`, `lbctl -Ln`, `lbctl -S -n
//! | lbctl -R`, with ipvsadm's options, defaults, messages and exit statuses (2: a
//! command line refused; 255: the agent refused the change, or the line could not be
//! read; 1: a listing failed), so an operator's scripts keep working.

mod changes;
pub mod parse;

use std::{io::Read, path::Path};

pub use changes::{match_of, netmask};
use lb_api::{Change, Request, Response};
use parse::{Command, Invocation, Refusal, opt};

use crate::{list, save};

/// Runs one ipvsadm command line against the agent at `socket`; the exit status.
pub fn run(socket: &Path, args: &[String]) -> i32 {
    match parse::parse(args).and_then(|invocation| execute(socket, &invocation)) {
        Ok(()) => 0,
        Err(refusal) => {
            eprintln!("{}", refusal.message);
            refusal.status
        }
    }
}

fn execute(socket: &Path, invocation: &Invocation) -> Result<(), Refusal> {
    let command = invocation.command.unwrap_or(Command::List);
    match command {
        Command::Help => print!("{}", usage()),
        Command::Version => println!("lbctl {} (ipvsadm v1.31's command line, IPVS v1.2.1)", env!("CARGO_PKG_VERSION")),
        Command::List => list(socket, invocation)?,
        Command::Save => print!("{}", save::rules(&services(socket, &Request::Configured)?.0)),
        Command::Zero => {
            let service = invocation.service.as_ref().map(changes::service_ref);
            done(socket, &Request::Zero { service })?;
        }
        Command::Restore => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).map_err(|err| refused(2, format!("reading rules: {err}")))?;
            done(socket, &Request::Change { changes: restore(&input)? })?;
        }
        Command::StartDaemon | Command::StopDaemon => {
            done(socket, &Request::Change { changes: vec![changes::daemon(invocation)?] })?;
        }
        _ => done(socket, &Request::Change { changes: vec![changes::change(invocation)?] })?,
    }
    Ok(())
}

/// `-R`: ipvsadm commands, one a line (`ipvsadm` words dropped, `#` comment lines and
/// blank lines skipped), made changes applied as one: every line or none, where
/// ipvsadm would stop half-way.
pub fn restore(input: &str) -> Result<Vec<Change>, Refusal> {
    let mut changes = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let words: Vec<String> = line.split_whitespace().filter(|word| *word != "ipvsadm").map(str::to_owned).collect();
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        let at_line = |refusal: Refusal| refused(refusal.status, format!("line {}: {}", number + 1, refusal.message));
        let invocation = parse::parse(&words).map_err(at_line)?;
        changes.push(changes::change(&invocation).map_err(at_line)?);
    }
    Ok(changes)
}

fn list(socket: &Path, invocation: &Invocation) -> Result<(), Refusal> {
    if invocation.has(opt::CONNECTION) {
        match call(socket, &Request::Connections, 1)? {
            Response::Connections { connections } => print!("{}", list::render_connections(&connections)),
            other => return Err(unexpected(other, 1)),
        }
        return Ok(());
    }
    if invocation.has(opt::TIMEOUT) {
        match call(socket, &Request::Timeouts, 1)? {
            Response::Timeouts { tcp, tcp_fin, udp } => println!("Timeout (tcp tcpfin udp): {tcp} {tcp_fin} {udp}"),
            other => return Err(unexpected(other, 1)),
        }
        return Ok(());
    }
    if invocation.has(opt::DAEMON) {
        let yaml = match call(socket, &Request::Config, 1)? {
            Response::Config { yaml } => yaml,
            other => return Err(unexpected(other, 1)),
        };
        print!("{}", list::daemons(&yaml).map_err(|err| refused(1, err))?);
        return Ok(());
    }
    changes::refuse_unsupported(invocation)?;
    let (mut services, table_size) = services(socket, &Request::List)?;
    if let Some(wanted) = &invocation.service {
        let wanted = changes::service_ref(wanted);
        services.retain(|s| wanted.names(&s.name, s.fwmark, Some((&s.protocol, s.vip, s.port))));
        if services.is_empty() {
            return Err(refused(1, "No such service"));
        }
    }
    let layout = list::Layout {
        stats: invocation.has(opt::STATS),
        thresholds: invocation.has(opt::THRESHOLDS),
        exact: invocation.has(opt::EXACT),
        nosort: invocation.has(opt::NOSORT),
        one: invocation.service.is_some(),
        table_size,
    };
    print!("{}", list::render(&services, layout));
    Ok(())
}

/// The services as served (`Request::List`) or as configured (`Request::Configured`),
/// and the size of the connection table.
fn services(socket: &Path, request: &Request) -> Result<(Vec<lb_api::ServiceStatus>, u32), Refusal> {
    match call(socket, request, 1)? {
        Response::Services { services, table_size } => Ok((services, table_size)),
        other => Err(unexpected(other, 1)),
    }
}

/// A request that changes something: the agent's refusal is ipvsadm's kernel error.
fn done(socket: &Path, request: &Request) -> Result<(), Refusal> {
    match call(socket, request, 255)? {
        Response::Done { .. } => Ok(()),
        other => Err(unexpected(other, 255)),
    }
}

fn call(socket: &Path, request: &Request, status: i32) -> Result<Response, Refusal> {
    lb_api::call(socket, request).map_err(|err| refused(2, err.to_string())).and_then(|response| match response {
        Response::Error { message } => Err(refused(status, message)),
        response => Ok(response),
    })
}

fn unexpected(response: Response, status: i32) -> Refusal {
    refused(status, format!("the agent answered something else: {response:?}"))
}

fn refused(status: i32, message: impl Into<String>) -> Refusal {
    Refusal { status, message: message.into() }
}

fn usage() -> String {
    format!(
        "lbctl {} (ipvsadm v1.31's command line)\n\
Usage:\n  \
  lbctl -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [-b sched-flags] [--match PROTO:VIP[:PORTS]]\n  \
  lbctl -D virtual-service\n  \
  lbctl -C\n  \
  lbctl -R\n  \
  lbctl -S [-n]\n  \
  lbctl -a|e virtual-service -r server-address [-g|-i|-m|--fullnat] [-w weight] [-x upper] [-y lower]\n  \
  lbctl -d virtual-service -r server-address\n  \
  lbctl -L|l [virtual-service] [-n] [-c] [--stats] [--thresholds] [--exact] [--nosort] [--timeout]\n  \
  lbctl -Z [virtual-service]\n  \
  lbctl --set tcp tcpfin udp\n  \
  lbctl -h\n\
virtual-service: -t|-u host[:port] (IPv6: [address]:port), or -f fwmark [-6]\n\
Readable commands: lbctl help (service, real, list, save, restore, import)\n",
        env!("CARGO_PKG_VERSION")
    )
}
