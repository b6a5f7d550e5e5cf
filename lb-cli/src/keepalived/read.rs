//! keepalived.conf's virtual servers in keepalived's own terms (`check_parser.c` and the
//! checkers' parsers): what each block says, before any default applies. A keyword
//! that has no place here is said at once, with why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    Notes, Place,
    parse::Node,
    yaml::{CheckType, Duration, Forwarding, Protocol, Timeouts},
};

pub struct Keepalived {
    pub groups: Vec<Group>,
    pub virtual_servers: Vec<VirtualServer>,
    /// The VRRP instances' interfaces: where the VIPs live, so where clients come in.
    pub interfaces: Vec<String>,
    /// `global_defs { lvs_timeouts ... }`.
    pub timeouts: Timeouts,
}

/// A value and where it was written, for the notes that speak of it.
#[derive(Clone)]
pub struct At<T> {
    pub value: T,
    pub place: Place,
}

impl<T> At<T> {
    fn of(node: &Node, value: T) -> Self {
        Self { value, place: node.place.clone() }
    }
}

pub struct Group {
    pub name: String,
    pub entries: Vec<GroupEntry>,
}

pub enum GroupEntry {
    /// `10.0.0.1 80`, or a range `10.0.0.1-10 80`: one IPVS service per address.
    Addresses { addresses: Vec<IpAddr>, port: u16 },
    /// `fwmark 1 [inet|inet6]`.
    Fwmark { mark: u32, family: Option<String> },
}

pub enum Address {
    Ip { vip: IpAddr, port: u16 },
    Fwmark(u32),
    Group(String),
}

pub struct VirtualServer {
    pub place: Place,
    /// `virtual_server 10.0.0.1 80`, as written.
    pub heading: String,
    pub address: Address,
    pub scheduler: Option<At<String>>,
    /// `sh-port`, `flag-1`, ...: their meaning depends on the scheduler.
    pub flags: Vec<At<String>>,
    pub forwarding: Option<Forwarding>,
    pub persistence_timeout: Option<u32>,
    pub granularity: Option<At<String>>,
    pub protocol: Option<At<Protocol>>,
    /// `ip_family`: a firewall-mark service's.
    pub family: Option<String>,
    pub sorry_server: Option<At<SorryServer>>,
    pub quorum: Option<At<u32>>,
    pub inhibit: Option<bool>,
    /// The default weight of its real servers.
    pub weight: Option<u32>,
    /// `snmp_name`: the operator's name for it.
    pub name: Option<String>,
    pub timing: Timing,
    pub reals: Vec<RealServer>,
}

pub struct SorryServer {
    pub address: IpAddr,
    pub port: Option<u16>,
}

pub struct RealServer {
    pub place: Place,
    pub address: IpAddr,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub forwarding: Option<Forwarding>,
    pub upper_threshold: Option<u32>,
    pub lower_threshold: Option<u32>,
    pub inhibit: Option<At<bool>>,
    pub timing: Timing,
    pub checkers: Vec<Checker>,
}

/// The checkers' settings a virtual server passes to its real servers, and a real server
/// to its checkers.
#[derive(Default)]
pub struct Timing {
    pub delay_loop: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub retry: Option<u32>,
    pub delay_before_retry: Option<At<Duration>>,
}

pub struct Checker {
    pub place: Place,
    /// `HTTP_GET`, `TCP_CHECK`, ...
    pub keyword: String,
    pub kind: CheckType,
    pub timing: Timing,
    pub connect_port: Option<u16>,
    pub urls: Vec<Url>,
    /// MISC_CHECK's `misc_path`.
    pub command: Option<At<String>>,
    pub misc_timeout: Option<Duration>,
    /// UDP_CHECK's `require_reply`, where it is text.
    pub reply: Option<String>,
}

pub struct Url {
    pub place: Place,
    pub path: Option<String>,
    /// Inclusive ranges; none written means keepalived's 200-299.
    pub status: Vec<(u16, u16)>,
    pub status_place: Option<Place>,
    pub regex: Option<At<String>>,
}

/// Keywords keepalived has and our configuration has not, with why.
const NOT_HERE: &[(&str, &str)] = &[
    ("alpha", "no alpha mode: the agent decides a real server's first state itself"),
    ("omega", "no omega mode: nothing runs when the agent stops"),
    ("notify_up", "no notify scripts: the agent logs every transition and exports lb_real_up"),
    ("notify_down", "no notify scripts: the agent logs every transition and exports lb_real_up"),
    ("quorum_up", "no notify scripts: the agent logs every transition and exports lb_real_up"),
    ("quorum_down", "no notify scripts: the agent logs every transition and exports lb_real_up"),
    ("smtp_alert", "no e-mail alerts: alert on lb_real_up with Prometheus"),
    ("ha_suspend", "checks run whether or not the director holds the VIP"),
    ("hysteresis", "our quorum has no hysteresis"),
    ("warmup", "checks start without a random delay"),
    ("virtualhost", "our http check sends no Host header of choice"),
    ("ops", "no one-packet scheduling"),
    ("hashed", "IPVS's hashed flag means nothing here"),
    ("flag-3", "IPVS's scheduler flag 3 means nothing to our schedulers"),
    ("persistence_engine", "no persistence engines"),
    ("nat_mask", "an obsolete keepalived keyword: a NAT service has no netmask here"),
    ("sorry_server_inhibit", "the sorry server is not checked, so never quiesced"),
    ("sorry_server_lvs_method", "the sorry server is reached by the service's forwarding method"),
    ("digest", "our http check compares the status (and expect:), not an MD5 digest of the body"),
    ("connect_ip", "checks connect to the real server's own address"),
    ("bindto", "checks leave from the director's own addresses"),
    ("bind_port", "checks leave from the director's own addresses"),
    ("bind_if", "checks leave from the director's own addresses"),
    ("fwmark", "checks' packets are not marked"),
    ("log_all_failures", "every failure is counted (lb_health_check_failures_total)"),
    ("http_protocol", "our http check chooses its HTTP version"),
    ("fast_recovery", "our http check requests one path"),
    ("enable_sni", "our https check has no TLS settings"),
    ("sni_name", "our https check has no TLS settings"),
    ("tls_compliant", "our https check has no TLS settings"),
    ("regex_no_match", "our check looks for a plain string (expect:), not a regular expression"),
    ("regex_options", "our check looks for a plain string (expect:), not a regular expression"),
    ("regex_min_offset", "our check looks for a plain string (expect:), not a regular expression"),
    ("regex_max_offset", "our check looks for a plain string (expect:), not a regular expression"),
    ("regex_stack", "our check looks for a plain string (expect:), not a regular expression"),
    ("misc_dynamic", "exit codes set no weights here: 0 is healthy, anything else is not"),
    ("user", "the command runs as the agent's user"),
    ("payload", "our udp check chooses what it sends"),
    ("min_reply_length", "our udp check has no bounds on the reply's length"),
    ("max_reply_length", "our udp check has no bounds on the reply's length"),
    ("type", "our dns check has no query type of choice"),
    ("name", "our dns check has no query name of choice"),
    ("SMTP_CHECK", "no such check here (tcp, http, https, udp, dns, exec)"),
    ("PING_CHECK", "no such check here (tcp, http, https, udp, dns, exec)"),
    ("BFD_CHECK", "no such check here (tcp, http, https, udp, dns, exec)"),
    ("FILE_CHECK", "no such check here (tcp, http, https, udp, dns, exec)"),
    ("lvs_sync_daemon", "no connection synchronisation between directors"),
    ("nftables_ipvs", "a group's services are written one per VIP and port, as keepalived makes them without it"),
    ("lvs_flush", "the agent owns its tables: nothing of IPVS's to flush"),
    ("lvs_flush_onstop", "the agent owns its tables: nothing of IPVS's to flush"),
    ("SSL", "our https check has no TLS settings (no client certificate)"),
];

/// Why `node` is left out: its entry in [`NOT_HERE`], else `otherwise`.
fn unsupported(node: &Node, otherwise: &str, notes: &mut Notes) {
    let why = NOT_HERE.iter().find(|(keyword, _)| *keyword == node.keyword).map_or(otherwise, |(_, why)| why);
    notes.lost(&node.place, &node.keyword, why);
}

const UNKNOWN: &str = "not a keyword lbctl knows here";

pub fn keepalived(nodes: &[Node], notes: &mut Notes) -> Keepalived {
    let mut keepalived = Keepalived {
        groups: Vec::new(),
        virtual_servers: Vec::new(),
        interfaces: Vec::new(),
        timeouts: Timeouts::default(),
    };
    for node in nodes {
        match node.keyword.as_str() {
            "virtual_server" => keepalived.virtual_servers.extend(virtual_server(node, notes)),
            "virtual_server_group" => keepalived.groups.extend(group(node, notes)),
            "global_defs" => global_defs(node, &mut keepalived.timeouts, notes),
            "vrrp_instance" => vrrp_instance(node, &mut keepalived.interfaces, notes),
            _ => unsupported(node, "outside the virtual servers (VRRP and the rest stay keepalived's)", notes),
        }
    }
    keepalived
}

/// Only its interface is ours: the VIPs live there.
fn vrrp_instance(node: &Node, interfaces: &mut Vec<String>, notes: &mut Notes) {
    let interface = node.block.iter().find(|child| child.keyword == "interface").and_then(|child| child.arg(0));
    let mut why = String::from("VRRP (the VIPs' failover) stays keepalived's");
    if let Some(interface) = interface {
        why += &format!("; its interface {interface} is listed under interfaces:");
        if !interfaces.iter().any(|known| known == interface) {
            interfaces.push(interface.to_owned());
        }
    }
    notes.lost(&node.place, &node.keyword, why);
}

/// `lvs_timeouts [tcp SECS] [tcpfin SECS] [udp SECS]` is ours; the rest is keepalived's.
fn global_defs(node: &Node, timeouts: &mut Timeouts, notes: &mut Notes) {
    for child in &node.block {
        if child.keyword != "lvs_timeouts" {
            unsupported(child, "a keepalived global setting", notes);
            continue;
        }
        for pair in child.args.chunks(2) {
            let seconds = pair.get(1).and_then(|value| value.parse().ok());
            match (pair[0].as_str(), seconds) {
                ("tcp", Some(seconds)) => timeouts.tcp = Some(seconds),
                ("tcpfin", Some(seconds)) => timeouts.tcp_fin = Some(seconds),
                ("udp", Some(seconds)) => timeouts.udp = Some(seconds),
                _ => notes.lost(
                    &child.place,
                    &child.keyword,
                    format_args!("`{}` is not tcp, tcpfin or udp SECS", pair.join(" ")),
                ),
            }
        }
    }
}

fn group(node: &Node, notes: &mut Notes) -> Option<Group> {
    let Some(name) = node.arg(0) else {
        notes.lost(&node.place, &node.keyword, "it has no name");
        return None;
    };
    let entries = node.block.iter().filter_map(|entry| group_entry(entry, notes)).collect();
    Some(Group { name: name.to_owned(), entries })
}

fn group_entry(node: &Node, notes: &mut Notes) -> Option<GroupEntry> {
    if node.keyword == "fwmark" {
        let mark = value(node, notes)?;
        return Some(GroupEntry::Fwmark { mark, family: node.arg(1).map(str::to_owned) });
    }
    let Some(addresses) = address_range(&node.keyword) else {
        let why = if node.keyword.contains('/') {
            "address prefixes are not expanded here: write the range as FIRST-LAST"
        } else {
            "not an address, a range of them or fwmark"
        };
        notes.lost(&node.place, &node.keyword, why);
        return None;
    };
    let port = match node.arg(0) {
        None => 0,
        Some(port) => port.parse().ok().or_else(|| {
            notes.lost(&node.place, &node.keyword, format_args!("`{port}` is not a port"));
            None
        })?,
    };
    Some(GroupEntry::Addresses { addresses, port })
}

/// The most addresses one group entry may stand for: more is a typo, not a farm.
const MAX_RANGE: u128 = 4096;

/// `10.0.0.1`, `10.0.0.1-10` (the last octet's end; an IPv6 address's last 16 bits, in
/// hex) or `10.0.0.250-10.0.1.10`.
fn address_range(text: &str) -> Option<Vec<IpAddr>> {
    if let Ok(address) = text.parse() {
        return Some(vec![address]);
    }
    let (first, end) = text.split_once('-')?;
    let first: IpAddr = first.parse().ok()?;
    let last = match (first, end.parse::<IpAddr>()) {
        (_, Ok(last)) => last,
        (IpAddr::V4(first), _) => {
            Ipv4Addr::from((u32::from(first) & !0xff) | u32::from(end.parse::<u8>().ok()?)).into()
        }
        (IpAddr::V6(first), _) => {
            Ipv6Addr::from((u128::from(first) & !0xffff) | u128::from(u16::from_str_radix(end, 16).ok()?)).into()
        }
    };
    let bits = |address: IpAddr| match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let (low, high) = (bits(first), bits(last));
    if first.is_ipv4() != last.is_ipv4() || high < low || high - low >= MAX_RANGE {
        return None;
    }
    let address = |bits: u128| match first {
        IpAddr::V4(_) => IpAddr::from(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::from(Ipv6Addr::from(bits)),
    };
    Some((low..=high).map(address).collect())
}

fn virtual_server(node: &Node, notes: &mut Notes) -> Option<VirtualServer> {
    let address = match (node.arg(0), node.arg(1)) {
        (Some("fwmark"), Some(mark)) => mark.parse().ok().map(Address::Fwmark),
        (Some("group"), Some(name)) => Some(Address::Group(name.to_owned())),
        (Some(vip), port) => match (vip.parse(), port.map_or(Ok(0), str::parse)) {
            (Ok(vip), Ok(port)) => Some(Address::Ip { vip, port }),
            _ => None,
        },
        (None, _) => None,
    };
    let Some(address) = address else {
        notes.lost(
            &node.place,
            &node.keyword,
            format_args!("`{}` is not IP [PORT], fwmark N or group NAME", node.args.join(" ")),
        );
        return None;
    };
    let mut vs = VirtualServer {
        place: node.place.clone(),
        heading: format!("{} {}", node.keyword, node.args.join(" ")),
        address,
        scheduler: None,
        flags: Vec::new(),
        forwarding: None,
        persistence_timeout: None,
        granularity: None,
        protocol: None,
        family: None,
        sorry_server: None,
        quorum: None,
        inhibit: None,
        weight: None,
        name: None,
        timing: Timing::default(),
        reals: Vec::new(),
    };
    let mut sctp = false;
    for child in &node.block {
        if timing(&mut vs.timing, child, notes) {
            continue;
        }
        match child.keyword.as_str() {
            "lb_algo" | "lvs_sched" => vs.scheduler = child.arg(0).map(|name| At::of(child, name.to_owned())),
            "sh-port" | "sh-fallback" | "mh-port" | "mh-fallback" | "flag-1" | "flag-2" => {
                vs.flags.push(At::of(child, child.keyword.clone()))
            }
            "lb_kind" | "lvs_method" => vs.forwarding = forwarding(child, notes),
            // Without a value, IPVS's default: 6 minutes.
            "persistence_timeout" if child.args.is_empty() => vs.persistence_timeout = Some(360),
            "persistence_timeout" => vs.persistence_timeout = value(child, notes),
            "persistence_granularity" => vs.granularity = child.arg(0).map(|mask| At::of(child, mask.to_owned())),
            "protocol" => match child.arg(0).map(str::to_ascii_uppercase).as_deref() {
                Some("TCP") => vs.protocol = Some(At::of(child, Protocol::Tcp)),
                Some("UDP") => vs.protocol = Some(At::of(child, Protocol::Udp)),
                Some("SCTP") => sctp = true,
                _ => notes.lost(
                    &child.place,
                    &child.keyword,
                    "keepalived knows TCP, UDP and SCTP (and ignores the rest)",
                ),
            },
            "ip_family" => vs.family = child.arg(0).map(str::to_owned),
            "sorry_server" => vs.sorry_server = sorry_server(child, notes).map(|sorry| At::of(child, sorry)),
            "quorum" => vs.quorum = value(child, notes).map(|quorum| At::of(child, quorum)),
            "inhibit_on_failure" => vs.inhibit = Some(flag(child)),
            "weight" => vs.weight = value(child, notes),
            "snmp_name" => vs.name = child.arg(0).map(str::to_owned),
            "real_server" => vs.reals.extend(real_server(child, notes)),
            _ => unsupported(child, UNKNOWN, notes),
        }
    }
    if sctp {
        notes.lost(&node.place, &node.keyword, "an SCTP service: our services are TCP or UDP");
        return None;
    }
    Some(vs)
}

fn sorry_server(node: &Node, notes: &mut Notes) -> Option<SorryServer> {
    let address = node.arg(0).and_then(|address| address.parse().ok());
    let port = node.arg(1).map(str::parse).transpose();
    match (address, port) {
        (Some(address), Ok(port)) => Some(SorryServer { address, port }),
        _ => {
            notes.lost(&node.place, &node.keyword, format_args!("`{}` is not IP [PORT]", node.args.join(" ")));
            None
        }
    }
}

fn real_server(node: &Node, notes: &mut Notes) -> Option<RealServer> {
    let address = node.arg(0).and_then(|address| address.parse().ok());
    let port = node.arg(1).map(str::parse).transpose();
    let (Some(address), Ok(port)) = (address, port) else {
        notes.lost(&node.place, &node.keyword, format_args!("`{}` is not IP [PORT]", node.args.join(" ")));
        return None;
    };
    let mut rs = RealServer {
        place: node.place.clone(),
        address,
        port,
        weight: None,
        forwarding: None,
        upper_threshold: None,
        lower_threshold: None,
        inhibit: None,
        timing: Timing::default(),
        checkers: Vec::new(),
    };
    for child in &node.block {
        if timing(&mut rs.timing, child, notes) {
            continue;
        }
        match child.keyword.as_str() {
            "weight" => rs.weight = value(child, notes),
            "lb_kind" | "lvs_method" => rs.forwarding = forwarding(child, notes),
            "uthreshold" => rs.upper_threshold = value(child, notes),
            "lthreshold" => rs.lower_threshold = value(child, notes),
            "inhibit_on_failure" => rs.inhibit = Some(At::of(child, flag(child))),
            keyword => match checker_type(keyword) {
                Some(kind) => rs.checkers.push(checker(child, kind, notes)),
                None => unsupported(child, UNKNOWN, notes),
            },
        }
    }
    Some(rs)
}

fn checker_type(keyword: &str) -> Option<CheckType> {
    Some(match keyword {
        "TCP_CHECK" => CheckType::Tcp,
        "HTTP_GET" => CheckType::Http,
        "SSL_GET" => CheckType::Https,
        "UDP_CHECK" => CheckType::Udp,
        "DNS_CHECK" => CheckType::Dns,
        "MISC_CHECK" => CheckType::Exec,
        _ => return None,
    })
}

fn checker(node: &Node, kind: CheckType, notes: &mut Notes) -> Checker {
    let mut checker = Checker {
        place: node.place.clone(),
        keyword: node.keyword.clone(),
        kind,
        timing: Timing::default(),
        connect_port: None,
        urls: Vec::new(),
        command: None,
        misc_timeout: None,
        reply: None,
    };
    let http = matches!(kind, CheckType::Http | CheckType::Https);
    for child in &node.block {
        if timing(&mut checker.timing, child, notes) {
            continue;
        }
        match (kind, child.keyword.as_str()) {
            (_, "connect_port") => checker.connect_port = value(child, notes),
            // Deprecated, for `retry`.
            (_, "nb_get_retry") if http => checker.timing.retry = value(child, notes),
            (_, "url") if http => checker.urls.push(url(child, notes)),
            // keepalived runs it without a shell, its words as written.
            (CheckType::Exec, "misc_path") => checker.command = Some(At::of(child, child.args.join(" "))),
            (CheckType::Exec, "misc_timeout") => {
                checker.misc_timeout = value(child, notes).map(|secs: u32| Duration::from_secs(secs.into()))
            }
            (CheckType::Udp, "require_reply") => checker.reply = reply(child, notes),
            _ => unsupported(child, UNKNOWN, notes),
        }
    }
    checker
}

fn url(node: &Node, notes: &mut Notes) -> Url {
    let mut url = Url { place: node.place.clone(), path: None, status: Vec::new(), status_place: None, regex: None };
    for child in &node.block {
        match child.keyword.as_str() {
            "path" => url.path = child.arg(0).map(str::to_owned),
            "status_code" => {
                url.status.extend(child.args.iter().filter_map(|code| status_range(code, child, notes)));
                url.status_place = Some(child.place.clone());
            }
            "regex" => url.regex = Some(At::of(child, child.args.join(" "))),
            _ => unsupported(child, UNKNOWN, notes),
        }
    }
    if url.path.is_none() {
        notes.lost(&url.place, &node.keyword, "it has no path (keepalived ignores it too)");
    }
    url
}

/// `200` or `200-299`, within HTTP's 100 to 599.
fn status_range(text: &str, node: &Node, notes: &mut Notes) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let range = (low.parse::<u16>().ok(), high.parse::<u16>().ok());
    match range {
        (Some(low), Some(high)) if (100..=599).contains(&low) && (low..=599).contains(&high) => Some((low, high)),
        _ => {
            notes.lost(&node.place, &node.keyword, format_args!("`{text}` is not a code or a range of them"));
            None
        }
    }
}

/// UDP_CHECK's `require_reply HEX`: our `expect:` where the bytes are text; keepalived's
/// `X` nibbles (any value) and replies of any content have no equivalent.
fn reply(node: &Node, notes: &mut Notes) -> Option<String> {
    let text = hex_text(&node.args.concat());
    if text.is_none() {
        notes.lost(&node.place, &node.keyword, "our udp check expects text (expect:), not any reply or these bytes");
    }
    text
}

/// Pairs of hex digits as text, when they spell printable ASCII.
fn hex_text(hex: &str) -> Option<String> {
    if !hex.is_ascii() || !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect::<Option<_>>()?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty() && text.chars().all(|c| c.is_ascii_graphic() || c == ' ')).then_some(text)
}

/// `delay_loop`, `connect_timeout`, `retry` and `delay_before_retry`, which a virtual
/// server passes to its real servers and a real server to its checkers.
fn timing(timing: &mut Timing, node: &Node, notes: &mut Notes) -> bool {
    match node.keyword.as_str() {
        "delay_loop" => timing.delay_loop = timer(node, notes),
        "connect_timeout" => timing.connect_timeout = timer(node, notes),
        "retry" => timing.retry = value(node, notes),
        "delay_before_retry" => timing.delay_before_retry = timer(node, notes).map(|delay| At::of(node, delay)),
        _ => return false,
    }
    true
}

fn forwarding(node: &Node, notes: &mut Notes) -> Option<Forwarding> {
    let forwarding = match node.arg(0) {
        Some("NAT") => Forwarding::Nat,
        Some("DR") => Forwarding::Dr,
        Some("TUN") => Forwarding::Tun,
        _ => {
            notes.lost(&node.place, &node.keyword, "keepalived knows NAT, DR and TUN (and ignores the rest)");
            return None;
        }
    };
    if node.args.len() > 1 {
        let options = node.args[1..].join(" ");
        notes.lost(&node.place, &node.keyword, format_args!("`{options}`: our tunnels are IP-in-IP"));
    }
    Some(forwarding)
}

/// A keyword that may take a `<BOOL>`, true without one.
fn flag(node: &Node) -> bool {
    !matches!(node.arg(0), Some("off" | "false" | "no"))
}

/// The keyword's first argument as a `T`; keepalived ignores what does not parse too.
fn value<T: std::str::FromStr>(node: &Node, notes: &mut Notes) -> Option<T> {
    let parsed = node.arg(0).and_then(|arg| arg.parse().ok());
    if parsed.is_none() {
        notes.lost(&node.place, &node.keyword, format_args!("`{}` is not a valid value", node.args.join(" ")));
    }
    parsed
}

/// keepalived's `<TIMER>`: seconds, with up to six decimal places.
fn timer(node: &Node, notes: &mut Notes) -> Option<Duration> {
    let parsed = node.arg(0).and_then(|text| {
        let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
        if fraction.len() > 6 || !fraction.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let secs: u64 = secs.parse().ok()?;
        let micros: u64 = format!("{fraction:0<6}").parse().ok()?;
        Some(Duration { micros: secs.checked_mul(1_000_000)? + micros })
    });
    if parsed.is_none() {
        notes.lost(&node.place, &node.keyword, format_args!("`{}` is not a time in seconds", node.args.join(" ")));
    }
    parsed
}
