//! lbctl's readable commands: `lbctl service add web --vip ... --port 80`, `lbctl real
//! drain web 198.18.1.11 --wait`, `lbctl save`, `lbctl restore FILE`. Settings are the
//! configuration file's keys (`--set KEY=VALUE` reaches any of them); every change goes
//! to the agent, which applies it whole or refuses it whole and writes it to its file.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use lb_api::{Change, Map, RealRef, Request, Response, ServiceRef, ServiceStatus, Value};
use serde_json::json;

use crate::{ipvsadm, keepalived, list, save};

#[derive(Subcommand)]
pub enum Command {
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
    /// Add, change, remove or name the virtual services.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Add, change, remove or drain a service's real servers.
    Real {
        #[command(subcommand)]
        action: RealAction,
    },
    /// The running configuration: as the configuration file (yaml), or as ipvsadm rules
    /// (`ipvsadm -S -n`).
    Save {
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
    },
    /// Runs a saved configuration instead of the running one: a configuration file, or
    /// ipvsadm rules (`-A`, `-a`, ... lines) added to the running services. `-` reads
    /// standard input.
    Restore { file: PathBuf },
    /// Print our configuration for another tool's.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
}

#[derive(Subcommand)]
pub enum ImportSource {
    /// The virtual servers of a keepalived.conf (and the files it includes) as our YAML,
    /// on standard output; what cannot be carried over is said on standard error.
    Keepalived { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Yaml,
    Ipvsadm,
}

#[derive(Subcommand)]
pub enum ServiceAction {
    /// Each service's name, address and scheduler.
    #[command(visible_alias = "ls")]
    List,
    /// A new service: `--vip`, `--port` and `--protocol`, or `--fwmark` and `--match`.
    Add {
        name: String,
        #[command(flatten)]
        settings: ServiceSettings,
    },
    /// Changes the settings given; the others stay.
    Edit {
        /// The service's name (`lbctl service list`).
        name: String,
        #[command(flatten)]
        settings: ServiceSettings,
    },
    /// Removes a service (its connections finish on their real servers).
    #[command(visible_alias = "delete")]
    Del { name: String },
}

#[derive(Args)]
pub struct ServiceSettings {
    #[arg(long)]
    vip: Option<IpAddr>,
    #[arg(long)]
    port: Option<u16>,
    /// tcp or udp.
    #[arg(long)]
    protocol: Option<String>,
    /// A firewall-mark service (ipvsadm -f).
    #[arg(long)]
    fwmark: Option<u32>,
    /// What a firewall-mark service serves: PROTOCOL:VIP[:PORT,...], e.g.
    /// tcp:203.0.113.10:80,443 (repeat for more).
    #[arg(long = "match")]
    matches: Vec<String>,
    /// rr wrr lc wlc sed nq lblc lblcr dh sh mh fo ovf.
    #[arg(long)]
    scheduler: Option<String>,
    /// sh-port, sh-fallback, mh-port, mh-fallback (comma-separated).
    #[arg(long, value_delimiter = ',')]
    flags: Option<Vec<String>>,
    /// Persistence, in seconds (ipvsadm -p).
    #[arg(long)]
    persistence: Option<u32>,
    /// The persistence netmask (ipvsadm -M): 255.255.255.0, or a prefix length.
    #[arg(long, requires = "persistence")]
    netmask: Option<String>,
    /// Persistence off.
    #[arg(long, conflicts_with = "persistence")]
    no_persistence: bool,
    /// The real servers' forwarding method: dr, tun, nat, fnat.
    #[arg(long)]
    forwarding: Option<String>,
    /// Any key of a service in the configuration file: KEY=VALUE, the value in YAML
    /// (e.g. expire_nodest_conn=true, local_addresses=[198.18.1.100]); KEY= removes it.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
pub enum RealAction {
    /// A new real server of SERVICE.
    Add {
        service: String,
        /// ADDRESS, or ADDRESS:PORT ([IPv6]:PORT).
        real: String,
        #[command(flatten)]
        settings: RealSettings,
    },
    /// Changes the settings given; the others stay.
    Edit {
        service: String,
        real: String,
        #[command(flatten)]
        settings: RealSettings,
    },
    /// Removes a real server (its connections finish on it).
    #[command(visible_alias = "delete")]
    Del { service: String, real: String },
    /// Weight 0: no new connections; reports the active connections left. With
    /// `--wait`, returns once none are (or fails after SECONDS).
    Drain {
        service: String,
        real: String,
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "0")]
        wait: Option<u64>,
    },
}

#[derive(Args)]
pub struct RealSettings {
    #[arg(long)]
    weight: Option<u32>,
    /// dr, tun, nat or fnat.
    #[arg(long)]
    forwarding: Option<String>,
    /// ipvsadm -x: no new connections above this many.
    #[arg(long)]
    upper_threshold: Option<u32>,
    /// ipvsadm -y: new connections again below this many.
    #[arg(long)]
    lower_threshold: Option<u32>,
    /// Any key of a real server in the configuration file: KEY=VALUE (YAML); KEY= removes it.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(socket: &Path, command: Command) -> Result<()> {
    match command {
        Command::List { connections: true, .. } => match call(socket, &Request::Connections)? {
            Response::Connections { connections } => print!("{}", list::render_connections(&connections)),
            other => bail!("the agent answered something else: {other:?}"),
        },
        Command::List { stats, .. } => {
            let (services, table_size) = services(socket, &Request::List)?;
            print!("{}", list::render(&services, list::Layout { stats, table_size, ..Default::default() }))
        }
        Command::Service { action } => service(socket, action)?,
        Command::Real { action } => real(socket, action)?,
        Command::Save { format: Format::Ipvsadm } => {
            print!("{}", save::rules(&services(socket, &Request::Configured)?.0))
        }
        Command::Save { format: Format::Yaml } => match call(socket, &Request::Config)? {
            Response::Config { yaml } => print!("{yaml}"),
            other => bail!("the agent answered something else: {other:?}"),
        },
        Command::Restore { file } => restore(socket, &file)?,
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

fn service(socket: &Path, action: ServiceAction) -> Result<()> {
    let change = match action {
        ServiceAction::List => {
            for service in list::ordered(&services(socket, &Request::Configured)?.0, true) {
                println!("{:<24} {:<32} {}", service.name, address(service), service.scheduler);
            }
            return Ok(());
        }
        ServiceAction::Add { name, settings } => {
            let mut fields = settings.fields()?;
            fields.insert("name".into(), json!(name));
            fields.retain(|_, value| !value.is_null());
            Change::AddService { service: fields }
        }
        ServiceAction::Edit { name, mut settings } => {
            // A new timeout alone keeps the netmask, as an edit keeps every key it does
            // not name.
            if settings.persistence.is_some() && settings.netmask.is_none() {
                let (configured, _) = services(socket, &Request::Configured)?;
                settings.netmask = configured.into_iter().find(|service| service.name == name).and_then(|s| s.netmask);
            }
            Change::EditService { service: ServiceRef::Name(name), set: settings.fields()? }
        }
        ServiceAction::Del { name } => Change::DeleteService { service: ServiceRef::Name(name) },
    };
    change_one(socket, change)
}

fn address(service: &ServiceStatus) -> String {
    match service.fwmark {
        Some(mark) => format!("fwmark {mark}"),
        None => format!("{} {}", service.protocol, list::endpoint(service.vip, service.port)),
    }
}

impl ServiceSettings {
    fn fields(self) -> Result<Map<String, Value>> {
        let mut fields = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                fields.insert(key.into(), value);
            }
        };
        put("vip", self.vip.map(|vip| json!(vip)));
        put("port", self.port.map(|port| json!(port)));
        put("protocol", self.protocol.map(|protocol| json!(protocol)));
        put("fwmark", self.fwmark.map(|mark| json!(mark)));
        put("scheduler", self.scheduler.map(|scheduler| json!(scheduler)));
        put("scheduler_flags", self.flags.map(|flags| json!(flags)));
        put("forwarding", self.forwarding.map(|forwarding| json!(forwarding)));
        let persistence = self.persistence.map(|timeout| match &self.netmask {
            Some(mask) => {
                json!({ "timeout": timeout, "netmask": ipvsadm::netmask(mask) })
            }
            None => json!({ "timeout": timeout }),
        });
        put("persistence", persistence.or(self.no_persistence.then_some(Value::Null)));
        if !self.matches.is_empty() {
            let matches: Option<Vec<Value>> = self.matches.iter().map(|text| ipvsadm::match_of(text)).collect();
            put("match", Some(Value::Array(matches.context("--match: expected PROTOCOL:VIP[:PORT,...]")?)));
        }
        extend(&mut fields, &self.set)?;
        Ok(fields)
    }
}

fn real(socket: &Path, action: RealAction) -> Result<()> {
    let change = match action {
        RealAction::Add { service, real, settings } => {
            let (address, port) = real_address(&real)?;
            let mut fields = settings.fields()?;
            fields.insert("address".into(), json!(address));
            if let Some(port) = port {
                fields.insert("port".into(), json!(port));
            }
            fields.retain(|_, value| !value.is_null());
            Change::AddReal { service: ServiceRef::Name(service), real: fields }
        }
        RealAction::Edit { service, real, settings } => {
            Change::EditReal { service: ServiceRef::Name(service), real: real_ref(&real)?, set: settings.fields()? }
        }
        RealAction::Del { service, real } => {
            Change::DeleteReal { service: ServiceRef::Name(service), real: real_ref(&real)? }
        }
        RealAction::Drain { service, real, wait } => return drain(socket, &service, &real, wait),
    };
    change_one(socket, change)
}

impl RealSettings {
    fn fields(self) -> Result<Map<String, Value>> {
        let mut fields = Map::new();
        for (key, value) in [
            ("weight", self.weight.map(|weight| json!(weight))),
            ("forwarding", self.forwarding.map(|forwarding| json!(forwarding))),
            ("upper_threshold", self.upper_threshold.map(|upper| json!(upper))),
            ("lower_threshold", self.lower_threshold.map(|lower| json!(lower))),
        ] {
            if let Some(value) = value {
                fields.insert(key.into(), value);
            }
        }
        extend(&mut fields, &self.set)?;
        Ok(fields)
    }
}

/// `--set KEY=VALUE`: the value read as YAML; `KEY=` takes the key out.
fn extend(fields: &mut Map<String, Value>, pairs: &[String]) -> Result<()> {
    for pair in pairs {
        let (key, value) = pair.split_once('=').with_context(|| format!("--set {pair}: expected KEY=VALUE"))?;
        let value: Value = if value.is_empty() {
            Value::Null
        } else {
            serde_yaml::from_str(value).with_context(|| format!("--set {pair}: the value is not YAML"))?
        };
        fields.insert(key.to_owned(), value);
    }
    Ok(())
}

fn real_address(text: &str) -> Result<(IpAddr, Option<u16>)> {
    ipvsadm::parse::address(text, "tcp")
        .ok_or_else(|| anyhow!("{text}: expected a real server's ADDRESS or ADDRESS:PORT ([IPv6]:PORT)"))
}

fn real_ref(text: &str) -> Result<RealRef> {
    let (address, port) = real_address(text)?;
    Ok(RealRef { address, port })
}

/// Quiesces the real server, then reports (or, with `wait`, awaits the end of) its
/// active connections.
fn drain(socket: &Path, service: &str, real: &str, wait: Option<u64>) -> Result<()> {
    let target = real_ref(real)?;
    let weight = Map::from_iter([("weight".to_owned(), json!(0))]);
    let edit = Change::EditReal { service: ServiceRef::Name(service.into()), real: target, set: weight };
    change_one(socket, edit)?;
    let started = Instant::now();
    loop {
        let active = active_connections(socket, service, &target)?;
        let waited = started.elapsed();
        match wait {
            _ if active == 0 => {
                println!("{service} {target}: drained, no active connections");
                return Ok(());
            }
            None => {
                println!("{service} {target}: weight 0; {active} active connections left");
                return Ok(());
            }
            Some(limit) if limit != 0 && waited >= Duration::from_secs(limit) => {
                bail!("{service} {target}: {active} active connections left after {limit} s")
            }
            Some(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn active_connections(socket: &Path, service: &str, target: &RealRef) -> Result<u64> {
    // A real server being drained may have failed its check too: it still counts.
    let (services, _) = services(socket, &Request::Configured)?;
    let service = services.iter().find(|s| s.name == service).with_context(|| format!("no service {service}"))?;
    let real = service
        .reals
        .iter()
        .find(|real| real.address == target.address && target.port.is_none_or(|port| port == real.port))
        .with_context(|| format!("service {}: no real server {target}", service.name))?;
    Ok(real.active_conns)
}

/// A configuration file replaces the running configuration; ipvsadm rules are made
/// changes to it. Either way, all or nothing.
fn restore(socket: &Path, file: &Path) -> Result<()> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let rules = text.lines().map(str::trim_start).find(|line| !line.is_empty() && !line.starts_with('#'));
    let changes = if rules.is_some_and(|line| line.starts_with('-') || line.starts_with("ipvsadm")) {
        ipvsadm::restore(&text).map_err(|refusal| anyhow!("{}: {}", file.display(), refusal.message))?
    } else {
        vec![Change::Replace { yaml: text }]
    };
    match call(socket, &Request::Change { changes })? {
        Response::Done { message } => println!("{message}"),
        other => bail!("the agent answered something else: {other:?}"),
    }
    Ok(())
}

fn change_one(socket: &Path, change: Change) -> Result<()> {
    match call(socket, &Request::Change { changes: vec![change] })? {
        Response::Done { message } => println!("{message}"),
        other => bail!("the agent answered something else: {other:?}"),
    }
    Ok(())
}

/// The services as served (`Request::List`) or as configured (`Request::Configured`),
/// and the size of the connection table.
fn services(socket: &Path, request: &Request) -> Result<(Vec<ServiceStatus>, u32)> {
    match call(socket, request)? {
        Response::Services { services, table_size } => Ok((services, table_size)),
        other => bail!("the agent answered something else: {other:?}"),
    }
}

fn call(socket: &Path, request: &Request) -> Result<Response> {
    match lb_api::call(socket, request)? {
        Response::Error { message } => bail!("the agent refused: {message}"),
        response => Ok(response),
    }
}
