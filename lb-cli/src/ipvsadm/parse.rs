//! ipvsadm's command line (1.31, man ipvsadm), read as ipvsadm reads it: the first
//! option is the command; short options cluster (`-Ln`); `-p` takes the next word only
//! when it does not start with `-`; each command allows, needs or refuses each option
//! (ipvsadm's `commands_v_options`), checked in ipvsadm's order so the same mistake
//! gets the same message.

use std::net::IpAddr;

/// What went wrong, with ipvsadm's exit status: 2 for a command line it refuses, 255
/// for one it cannot even start reading.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: i32,
    pub message: String,
}

fn fail(message: impl Into<String>) -> Refusal {
    Refusal { status: 2, message: message.into() }
}

pub const TRY_HELP: &str = "Try `lbctl -h' or 'lbctl --help' for more information.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    AddService,
    EditService,
    DeleteService,
    Clear,
    List,
    Zero,
    AddServer,
    EditServer,
    DeleteServer,
    SetTimeouts,
    StartDaemon,
    StopDaemon,
    Restore,
    Save,
    Help,
    Version,
}

impl Command {
    /// ipvsadm's name of the command, in its messages.
    fn name(self) -> &'static str {
        match self {
            Self::AddService => "add-service",
            Self::EditService => "edit-service",
            Self::DeleteService => "delete-service",
            Self::Clear => "flush",
            Self::List => "list",
            Self::Zero => "zero",
            Self::AddServer => "add-server",
            Self::EditServer => "edit-server",
            Self::DeleteServer => "delete-server",
            Self::SetTimeouts => "set",
            Self::StartDaemon => "start-daemon",
            Self::StopDaemon => "stop-daemon",
            Self::Restore => "restore",
            Self::Save => "save",
            Self::Help | Self::Version => "help",
        }
    }

    /// The command's row of ipvsadm's `commands_v_options`, one character per option
    /// of [`OPTIONS`]: `+` needed, `x` refused, `1` at most one of them, `.` allowed.
    /// The last column is lbctl's own `--match`.
    fn row(self) -> &'static str {
        match self {
            Self::AddService | Self::EditService => "xx+...xxxxxxxxxxxxxxx...xxxxxxxxxx.",
            Self::DeleteService => "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            Self::List => ".11xxxxxxxxx11.......xxxxxxx.xxxxxx",
            Self::AddServer | Self::EditServer => "xx+xxx+....xxxxxxxxxxxxxxxxxx.....x",
            Self::DeleteServer => "xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            Self::Save => ".xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            Self::Zero => "xx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            Self::StartDaemon => "xxxxxxxxxxx.xxxxxxx.xxxx....xxxxxxx",
            Self::StopDaemon => "xxxxxxxxxxxxxxxxxxx.xxxxxxxxxxxxxxx",
            Self::Clear | Self::SetTimeouts | Self::Restore | Self::Help | Self::Version => {
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
            }
        }
    }
}

/// ipvsadm's options in its order (the columns of [`Command::row`]), and lbctl's
/// `--match` last.
const OPTIONS: [&str; 35] = [
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "mcast-interface",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "syncid",
    "exact",
    "ops",
    "pe",
    "sched-flags",
    "mcast-group",
    "mcast-port",
    "mcast-ttl",
    "sync-maxlen",
    "tun-info",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
    "match",
];

/// Option indexes, as [`OPTIONS`] lists them.
pub mod opt {
    pub const NUMERIC: usize = 0;
    pub const CONNECTION: usize = 1;
    pub const SERVICE: usize = 2;
    pub const SCHEDULER: usize = 3;
    pub const PERSISTENT: usize = 4;
    pub const NETMASK: usize = 5;
    pub const REAL: usize = 6;
    pub const FORWARDING: usize = 7;
    pub const WEIGHT: usize = 8;
    pub const UPPER: usize = 9;
    pub const LOWER: usize = 10;
    pub const MCAST_INTERFACE: usize = 11;
    pub const TIMEOUT: usize = 12;
    pub const DAEMON: usize = 13;
    pub const STATS: usize = 14;
    pub const RATE: usize = 15;
    pub const THRESHOLDS: usize = 16;
    pub const PERSISTENT_CONN: usize = 17;
    pub const NOSORT: usize = 18;
    pub const SYNCID: usize = 19;
    pub const EXACT: usize = 20;
    pub const OPS: usize = 21;
    pub const PE: usize = 22;
    pub const SCHED_FLAGS: usize = 23;
    pub const MCAST_GROUP: usize = 24;
    pub const MCAST_PORT: usize = 25;
    pub const MCAST_TTL: usize = 26;
    pub const SYNC_MAXLEN: usize = 27;
    pub const TUN_INFO: usize = 28;
    pub const TUN_TYPE: usize = 29;
    pub const TUN_PORT: usize = 30;
    pub const TUN_NOCSUM: usize = 31;
    pub const TUN_CSUM: usize = 32;
    pub const TUN_REMCSUM: usize = 33;
    pub const MATCH: usize = 34;
}

/// A virtual service as ipvsadm names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    /// `-t` / `-u`: protocol (`tcp`, `udp`), address, port (0 when left out).
    Address { protocol: &'static str, vip: IpAddr, port: u16 },
    /// `-f`, with `-6` for its IPv6 half.
    Fwmark { mark: u32, ipv6: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Dr,
    Tun,
    Nat,
    Fnat,
}

impl Forwarding {
    /// Our configuration's word.
    pub fn word(self) -> &'static str {
        match self {
            Self::Dr => "dr",
            Self::Tun => "tun",
            Self::Nat => "nat",
            Self::Fnat => "fnat",
        }
    }
}

/// One ipvsadm command line, read.
#[derive(Debug, Default)]
pub struct Invocation {
    pub command: Option<Command>,
    /// Which of [`OPTIONS`] were given, a bit each.
    pub given: u64,
    pub service: Option<Service>,
    pub scheduler: Option<String>,
    /// `-p`: the timeout, 360 when none was written (ipvsadm's).
    pub persistent: Option<u32>,
    pub netmask: Option<String>,
    /// `-r`: address and port (when written).
    pub real: Option<(IpAddr, Option<u16>)>,
    pub forwarding: Option<Forwarding>,
    pub weight: Option<u32>,
    pub upper: Option<u32>,
    pub lower: Option<u32>,
    pub sched_flags: Option<String>,
    pub matches: Vec<String>,
    pub tunnel_type: Option<String>,
    /// `--set`'s three timeouts, `--start-daemon`'s role.
    pub values: Vec<String>,
    /// `--start-daemon`'s settings: (the `sync:` block's key, the value written).
    pub daemon: Vec<(&'static str, String)>,
}

impl Invocation {
    pub fn has(&self, option: usize) -> bool {
        self.given & (1 << option) != 0
    }
}

/// ipvsadm's default persistence timeout (`IPVS_SVC_PERSISTENT_TIMEOUT`).
pub const DEFAULT_PERSISTENCE: u32 = 360;
/// `MAX_TIMEOUT`: 31 days.
const MAX_TIMEOUT: u32 = 86400 * 31;

/// Reads `args` (without the program's name). No arguments at all is `-L`, as ipvsadm.
pub fn parse(args: &[String]) -> Result<Invocation, Refusal> {
    let mut invocation = Invocation::default();
    if args.is_empty() {
        invocation.command = Some(Command::List);
        return Ok(invocation);
    }
    let mut words = Words { args, next: 0, cluster: None, inline: None, positional: Vec::new() };
    while let Some(option) = words.next_option()? {
        if invocation.command.is_none() {
            invocation.command = Some(command_of(&option).ok_or(Refusal { status: 255, message: TRY_HELP.into() })?);
            if matches!(invocation.command, Some(Command::StartDaemon | Command::StopDaemon)) {
                invocation.values.push(words.argument(&option)?);
            }
            continue;
        }
        read_option(&mut invocation, &option, &mut words)?;
    }
    let command = invocation.command.ok_or(Refusal { status: 255, message: TRY_HELP.into() })?;
    check(&mut invocation, command, words.positional)?;
    Ok(invocation)
}

/// The words of the command line as options: `-Ln` gives `-L` then `-n`; a word that
/// is not an option is kept aside (popt lets them come anywhere).
struct Words<'a> {
    args: &'a [String],
    next: usize,
    /// The rest of a short-option cluster being read.
    cluster: Option<String>,
    /// The value of a `--name=value`.
    inline: Option<String>,
    positional: Vec<String>,
}

impl Words<'_> {
    fn next_option(&mut self) -> Result<Option<String>, Refusal> {
        if let Some(rest) = self.cluster.take() {
            return Ok(Some(self.short(&rest)));
        }
        while let Some(word) = self.args.get(self.next) {
            self.next += 1;
            if word == "--" {
                self.positional.extend(self.args[self.next..].iter().cloned());
                self.next = self.args.len();
                break;
            }
            if let Some(long) = word.strip_prefix("--") {
                return Ok(Some(match long.split_once('=') {
                    Some((name, value)) => {
                        self.inline = Some(value.to_owned());
                        format!("--{name}")
                    }
                    None => word.clone(),
                }));
            }
            match word.strip_prefix('-') {
                Some(cluster) if !cluster.is_empty() => return Ok(Some(self.short(cluster))),
                _ => self.positional.push(word.clone()),
            }
        }
        Ok(None)
    }

    /// The first option of a cluster; the rest waits.
    fn short(&mut self, cluster: &str) -> String {
        let mut chars = cluster.chars();
        let first = chars.next().unwrap_or('-');
        let rest: String = chars.collect();
        self.cluster = (!rest.is_empty()).then_some(rest);
        format!("-{first}")
    }

    /// An option's argument: the rest of its cluster, its `=value`, or the next word
    /// whatever it is.
    fn argument(&mut self, option: &str) -> Result<String, Refusal> {
        if let Some(value) = self.cluster.take().or_else(|| self.inline.take()) {
            return Ok(value);
        }
        let word =
            self.args.get(self.next).ok_or(Refusal { status: 255, message: format!("{option}: missing argument") })?;
        self.next += 1;
        Ok(word.clone())
    }

    /// `-p`'s optional argument: the next word only if it is not an option.
    fn optional_argument(&mut self) -> Option<String> {
        if let Some(value) = self.cluster.take().or_else(|| self.inline.take()) {
            return Some(value);
        }
        let word = self.args.get(self.next).filter(|word| !word.starts_with('-'))?;
        self.next += 1;
        Some(word.clone())
    }
}

fn command_of(option: &str) -> Option<Command> {
    Some(match option {
        "-A" | "--add-service" => Command::AddService,
        "-E" | "--edit-service" => Command::EditService,
        "-D" | "--delete-service" => Command::DeleteService,
        "-C" | "--clear" => Command::Clear,
        "-L" | "-l" | "--list" => Command::List,
        "-Z" | "--zero" => Command::Zero,
        "-a" | "--add-server" => Command::AddServer,
        "-e" | "--edit-server" => Command::EditServer,
        "-d" | "--delete-server" => Command::DeleteServer,
        "--set" => Command::SetTimeouts,
        "--start-daemon" => Command::StartDaemon,
        "--stop-daemon" => Command::StopDaemon,
        "-R" | "--restore" => Command::Restore,
        "-S" | "--save" => Command::Save,
        "-h" | "--help" => Command::Help,
        "-v" | "--version" => Command::Version,
        _ => return None,
    })
}

/// Options that are only flags, by their names.
fn flag_of(option: &str) -> Option<usize> {
    Some(match option {
        "-n" | "--numeric" => opt::NUMERIC,
        "-c" | "--connection" => opt::CONNECTION,
        "--timeout" => opt::TIMEOUT,
        "--daemon" => opt::DAEMON,
        "--stats" => opt::STATS,
        "--rate" => opt::RATE,
        "--thresholds" => opt::THRESHOLDS,
        "--persistent-conn" => opt::PERSISTENT_CONN,
        "--nosort" => opt::NOSORT,
        "-X" | "--exact" => opt::EXACT,
        "-o" | "--ops" => opt::OPS,
        "--tun-info" => opt::TUN_INFO,
        "--tun-nocsum" => opt::TUN_NOCSUM,
        "--tun-csum" => opt::TUN_CSUM,
        "--tun-remcsum" => opt::TUN_REMCSUM,
        _ => return None,
    })
}

/// Options whose argument is kept as written (checked where it is used, or refused).
fn valued_of(option: &str) -> Option<usize> {
    Some(match option {
        "-s" | "--scheduler" => opt::SCHEDULER,
        "-M" | "--netmask" => opt::NETMASK,
        "-b" | "--sched-flags" => opt::SCHED_FLAGS,
        "--pe" => opt::PE,
        "--tun-type" => opt::TUN_TYPE,
        "--tun-port" => opt::TUN_PORT,
        "--mcast-interface" => opt::MCAST_INTERFACE,
        "--syncid" => opt::SYNCID,
        "--mcast-group" => opt::MCAST_GROUP,
        "--mcast-port" => opt::MCAST_PORT,
        "--mcast-ttl" => opt::MCAST_TTL,
        "--sync-maxlen" => opt::SYNC_MAXLEN,
        "--match" => opt::MATCH,
        _ => return None,
    })
}

fn read_option(invocation: &mut Invocation, option: &str, words: &mut Words) -> Result<(), Refusal> {
    if option == "--sort" {
        return Ok(());
    }
    if option == "-6" || option == "--ipv6" {
        return match &mut invocation.service {
            Some(Service::Fwmark { ipv6, .. }) => {
                *ipv6 = true;
                Ok(())
            }
            _ => Err(fail("-6 used before -f")),
        };
    }
    if let Some(index) = flag_of(option) {
        return mark(invocation, index);
    }
    if let Some(index) = valued_of(option) {
        let value = words.argument(option)?;
        mark(invocation, index)?;
        match index {
            opt::SCHEDULER => invocation.scheduler = Some(value),
            opt::NETMASK => invocation.netmask = Some(value),
            opt::SCHED_FLAGS => invocation.sched_flags = Some(value),
            opt::TUN_TYPE => invocation.tunnel_type = Some(value),
            opt::MATCH => invocation.matches.push(value),
            opt::MCAST_INTERFACE => invocation.daemon.push(("interface", value)),
            opt::SYNCID => invocation.daemon.push(("syncid", value)),
            opt::MCAST_GROUP => invocation.daemon.push(("group", value)),
            opt::MCAST_PORT => invocation.daemon.push(("port", value)),
            _ => {}
        }
        return Ok(());
    }
    match option {
        "-t" | "--tcp-service" | "-u" | "--udp-service" => {
            let protocol = if matches!(option, "-t" | "--tcp-service") { "tcp" } else { "udp" };
            let text = words.argument(option)?;
            mark(invocation, opt::SERVICE)?;
            let (vip, port) =
                address(&text, protocol).ok_or_else(|| fail("illegal virtual server address[:port] specified"))?;
            invocation.service = Some(Service::Address { protocol, vip, port: port.unwrap_or(0) });
        }
        "--sctp-service" => return Err(fail("SCTP services are not supported by this load balancer")),
        "-f" | "--fwmark-service" => {
            let text = words.argument(option)?;
            mark(invocation, opt::SERVICE)?;
            let mark = text.parse::<u32>().ok().filter(|&mark| mark > 0);
            let mark = mark.ok_or_else(|| fail(format!("invalid fwmark value `{text}' specified")))?;
            invocation.service = Some(Service::Fwmark { mark, ipv6: false });
        }
        "-p" | "--persistent" => {
            let value = words.optional_argument();
            mark(invocation, opt::PERSISTENT)?;
            invocation.persistent = Some(match value {
                None => DEFAULT_PERSISTENCE,
                Some(text) => number(&text, 1, MAX_TIMEOUT)
                    .ok_or_else(|| fail(format!("invalid timeout value `{text}' specified")))?,
            });
        }
        "-r" | "--real-server" => {
            let text = words.argument(option)?;
            mark(invocation, opt::REAL)?;
            let protocol = match &invocation.service {
                Some(Service::Address { protocol, .. }) => protocol,
                _ => "tcp",
            };
            let real = address(&text, protocol).ok_or_else(|| fail("illegal real server address[:port] specified"))?;
            invocation.real = Some(real);
        }
        "-g" | "--gatewaying" | "-i" | "--ipip" | "-m" | "--masquerading" | "--fullnat" => {
            mark(invocation, opt::FORWARDING)?;
            invocation.forwarding = Some(match option {
                "-g" | "--gatewaying" => Forwarding::Dr,
                "-i" | "--ipip" => Forwarding::Tun,
                "-m" | "--masquerading" => Forwarding::Nat,
                _ => Forwarding::Fnat,
            });
        }
        "-w" | "--weight" => {
            let text = words.argument(option)?;
            mark(invocation, opt::WEIGHT)?;
            invocation.weight = Some(number(&text, 0, 65535).ok_or_else(|| fail("illegal weight specified"))?);
        }
        "-x" | "--u-threshold" | "-y" | "--l-threshold" => {
            let upper = matches!(option, "-x" | "--u-threshold");
            let text = words.argument(option)?;
            mark(invocation, if upper { opt::UPPER } else { opt::LOWER })?;
            let which = if upper { "u_threshold" } else { "l_threshold" };
            let value = number(&text, 0, i32::MAX as u32).ok_or_else(|| fail(format!("illegal {which} specified")))?;
            *(if upper { &mut invocation.upper } else { &mut invocation.lower }) = Some(value);
        }
        other if command_of(other).is_some() => return Err(fail(format!("invalid option `{other}'"))),
        other => return Err(Refusal { status: 255, message: format!("{other}: unknown option") }),
    }
    Ok(())
}

fn mark(invocation: &mut Invocation, index: usize) -> Result<(), Refusal> {
    if invocation.has(index) && index != opt::MATCH {
        return Err(fail(format!("multiple '{}' options specified", OPTIONS[index])));
    }
    invocation.given |= 1 << index;
    Ok(())
}

/// ipvsadm's `string_to_number`: all of `text` a number within `min..=max`.
fn number(text: &str, min: u32, max: u32) -> Option<u32> {
    text.trim_start().trim_start_matches('+').parse::<u32>().ok().filter(|n| (min..=max).contains(n))
}

/// ipvsadm's `parse_service`: `host[:port]`, `[ipv6]:port`, a bare IPv6 address
/// (no port). A port may be a number or a name of /etc/services.
pub fn address(text: &str, protocol: &str) -> Option<(IpAddr, Option<u16>)> {
    if text.is_empty() || text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(bracketed) = text.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']')?;
        let port = rest.strip_prefix(':')?;
        return Some((host.parse::<std::net::Ipv6Addr>().ok()?.into(), Some(port_number(port, protocol)?)));
    }
    if let Ok(v6) = text.parse::<std::net::Ipv6Addr>() {
        return Some((v6.into(), None));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port_number(port, protocol)?)),
        None => (text, None),
    };
    Some((host_address(host)?, port))
}

fn host_address(host: &str) -> Option<IpAddr> {
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        return Some(v4.into());
    }
    use std::net::ToSocketAddrs;
    (host, 0).to_socket_addrs().ok()?.map(|socket| socket.ip()).find(IpAddr::is_ipv4)
}

fn port_number(text: &str, protocol: &str) -> Option<u16> {
    if let Ok(port) = text.parse::<u16>() {
        return Some(port);
    }
    let services = std::fs::read_to_string("/etc/services").ok()?;
    services.lines().find_map(|line| {
        let mut fields = line.split('#').next()?.split_whitespace();
        let name = fields.next()?;
        let (port, proto) = fields.next()?.split_once('/')?;
        let named = name == text || fields.any(|alias| alias == text);
        (named && proto == protocol).then(|| port.parse().ok()).flatten()
    })
}

/// What ipvsadm checks once every option is read, in its order.
fn check(invocation: &mut Invocation, command: Command, positional: Vec<String>) -> Result<(), Refusal> {
    let mut positional = positional.into_iter();
    if command == Command::SetTimeouts {
        let values: Vec<String> = positional.by_ref().take(3).collect();
        if values.len() < 3 {
            return Err(fail("--set option requires 3 timeout values"));
        }
        for value in &values {
            number(value, 0, MAX_TIMEOUT).ok_or_else(|| fail(format!("invalid timeout value `{value}' specified")))?;
        }
        invocation.values = values;
    }
    if let Some(extra) = positional.next() {
        return Err(fail(format!("unexpected argument {extra}")));
    }
    if let Some(flags) = invocation.sched_flags.take() {
        let scheduler = invocation.scheduler.as_deref().unwrap_or("wlc");
        invocation.sched_flags = Some(sched_flags(&flags, scheduler)?.join(","));
    }
    options_allowed(invocation, command)?;
    match command {
        Command::AddService | Command::EditService => {
            let zero_port = matches!(invocation.service, Some(Service::Address { port: 0, .. }));
            if zero_port && invocation.persistent.is_none() {
                return Err(fail("Zero port specified for non-persistent service"));
            }
            check_netmask(invocation)?;
        }
        Command::AddServer | Command::EditServer => check_server(invocation)?,
        Command::List => {
            let listing =
                invocation.has(opt::CONNECTION) || invocation.has(opt::TIMEOUT) || invocation.has(opt::DAEMON);
            let counting = invocation.has(opt::STATS) || invocation.has(opt::RATE) || invocation.has(opt::THRESHOLDS);
            let elsewhere =
                (invocation.has(opt::TIMEOUT) || invocation.has(opt::DAEMON)) && invocation.has(opt::PERSISTENT_CONN);
            if (listing && counting) || elsewhere {
                return Err(fail("options conflicts in the list command"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// ipvsadm's `generic_opt_check`: option by option in its order, the first problem.
fn options_allowed(invocation: &Invocation, command: Command) -> Result<(), Refusal> {
    let mut exclusive: Option<usize> = None;
    for (index, rule) in command.row().bytes().enumerate() {
        let given = invocation.has(index);
        match rule {
            b'x' if given => {
                return Err(fail(format!("Illegal '{}' option with the '{}' command", OPTIONS[index], command.name())));
            }
            b'+' if !given => {
                return Err(fail(format!(
                    "You need to supply the '{}' option for the '{}' command",
                    OPTIONS[index],
                    command.name()
                )));
            }
            b'1' if given => {
                if let Some(earlier) = exclusive {
                    return Err(fail(format!(
                        "The option '{}' conflicts with the '{}' option in the '{}' command",
                        OPTIONS[index],
                        OPTIONS[earlier],
                        command.name()
                    )));
                }
                exclusive = Some(index);
            }
            _ => {}
        }
    }
    Ok(())
}

/// `-b`: ipvsadm's names, made the scheduler's own (`flag-2` of sh is `sh-port`).
fn sched_flags(text: &str, scheduler: &str) -> Result<Vec<String>, Refusal> {
    let mut flags = Vec::new();
    for flag in text.split(',').filter(|flag| !flag.is_empty()) {
        let (bit, owner) = match flag {
            "flag-1" => (1, None),
            "flag-2" => (2, None),
            "flag-3" => (3, None),
            "sh-fallback" => (1, Some("sh")),
            "sh-port" => (2, Some("sh")),
            "mh-fallback" => (1, Some("mh")),
            "mh-port" => (2, Some("mh")),
            _ => return Err(fail(format!("invalid scheduler flag `{flag}'"))),
        };
        if owner.is_some_and(|owner| owner != scheduler) {
            return Err(fail(format!("incompatible scheduler flag `{flag}'")));
        }
        let name = match (scheduler, bit) {
            ("sh" | "mh", 1) => format!("{scheduler}-fallback"),
            ("sh" | "mh", 2) => format!("{scheduler}-port"),
            _ => return Err(fail(format!("scheduler flag `{flag}' has no meaning for {scheduler} here"))),
        };
        flags.push(name);
    }
    Ok(flags)
}

/// `-M`: a dotted mask for an IPv4 service, a prefix length for an IPv6 one.
fn check_netmask(invocation: &Invocation) -> Result<(), Refusal> {
    let Some(mask) = &invocation.netmask else { return Ok(()) };
    let ipv6 = match &invocation.service {
        Some(Service::Address { vip, .. }) => vip.is_ipv6(),
        Some(Service::Fwmark { ipv6, .. }) => *ipv6,
        None => false,
    };
    if ipv6 {
        number(mask, 1, 128).map(|_| ()).ok_or_else(|| fail("illegal ipv6 netmask specified"))
    } else {
        mask.parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| fail("illegal virtual server persistent mask specified"))
    }
}

fn check_server(invocation: &Invocation) -> Result<(), Refusal> {
    let tunnel = invocation.forwarding == Some(Forwarding::Tun);
    let tunnel_options = [opt::TUN_TYPE, opt::TUN_PORT, opt::TUN_NOCSUM, opt::TUN_CSUM, opt::TUN_REMCSUM];
    if !tunnel && tunnel_options.iter().any(|&option| invocation.has(option)) {
        return Err(fail("Tunnel options conflict with forward method"));
    }
    if let (Some(Service::Address { vip, .. }), Some((real, _))) = (&invocation.service, &invocation.real)
        && vip.is_ipv4() != real.is_ipv4()
        && !tunnel
    {
        return Err(fail("Different address family is allowed only for tunneling servers"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
