//! The agent's configuration: a YAML file in LVS's and keepalived's words.
//!
//! Loading is all-or-nothing: a file that does not parse or validate is refused with its
//! path, the line and the field at fault, and the caller keeps the configuration it runs.

mod check;
pub mod edit;
mod locate;
pub mod rewrite;
pub mod sync;
mod validate;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use self::check::{Check, CheckType, DEFAULT_QUERY, DEFAULT_STATUS, Interval, OnFailure, Status};

pub const DEFAULT_PATH: &str = "/etc/lb/lb.yaml";
/// Where a host's BPF file system is, and the agent's pins in it.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";
/// mh's table size if a service names none: Katran's and Google's Maglev's, room for
/// some 650 real servers at the paper's 100 buckets each (IPVS builds in 4093).
pub const DEFAULT_MH_TABLE_SIZE: u32 = 65537;
/// IPVS's `lblc_expiration` and `lblcr_expiration` by default: a day.
pub const DEFAULT_LOCALITY_EXPIRATION: u32 = 24 * 60 * 60;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The director's client-facing interfaces, where `lb_ingress` is attached.
    pub interfaces: Vec<Interface>,
    /// Where Prometheus scrapes `/metrics`.
    #[serde(default = "default_metrics_listen", skip_serializing_if = "is_default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// The control socket `lbctl` talks to.
    #[serde(default = "default_api_socket", skip_serializing_if = "is_default_api_socket")]
    pub api_socket: PathBuf,
    /// The group that may use the control socket besides root (its mode is 0660).
    #[serde(default = "default_api_group", skip_serializing_if = "is_default_api_group")]
    pub api_group: String,
    /// Connection entries the director remembers; the oldest give way beyond.
    /// Read at start only.
    #[serde(default = "default_connection_table_size", skip_serializing_if = "is_default_connection_table_size")]
    pub connection_table_size: u32,
    /// Where the maps and the XDP links are pinned (in a BPF file system), so that
    /// forwarding and the connection table outlive the agent: a restarted agent adopts
    /// them. Read at start only.
    #[serde(default = "default_pin_path", skip_serializing_if = "is_default_pin_path")]
    pub pin_path: PathBuf,
    /// The outer source address of tunnelled (`tun`) packets, at most one per IP
    /// version: one address or a list. By default, for each real server, the
    /// director's address that the route to it prefers (`ip route get`'s `src`).
    #[serde(default, deserialize_with = "one_or_more", skip_serializing_if = "Vec::is_empty")]
    pub tunnel_source: Vec<IpAddr>,
    /// How long an idle connection is remembered (ipvsadm --set); a reload changes them
    /// at once.
    #[serde(default, skip_serializing_if = "Timeouts::is_ipvs")]
    pub timeouts: Timeouts,
    /// Connection synchronisation with the other directors (IPVS's sync daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<sync::Sync>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<VirtualService>,
}

/// IPVS's connection timeouts, in seconds: how long a connection may stay idle in
/// its state before the agent forgets it (and a Full-NAT connection's local port is
/// free again). `tcp`, `tcp_fin` and `udp` are `ipvsadm --set`'s; the other TCP states
/// can be set as old kernels' `/proc/sys/net/ipv4/vs/timeout_*` could. A field left out
/// keeps IPVS's default.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// An established TCP connection.
    pub tcp: u32,
    /// A TCP connection in FIN_WAIT (a FIN went one way).
    pub tcp_fin: u32,
    /// A UDP flow.
    pub udp: u32,
    pub syn_sent: u32,
    pub syn_recv: u32,
    pub time_wait: u32,
    pub close: u32,
    pub close_wait: u32,
    pub last_ack: u32,
    pub listen: u32,
    pub synack: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::IPVS
    }
}

/// ipvsadm's three (`--set tcp tcpfin udp`), and the others where they are not IPVS's.
impl Serialize for Timeouts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        // `named` lists ipvsadm's three first.
        for (i, ((name, value), (_, default))) in self.named().into_iter().zip(Self::IPVS.named()).enumerate() {
            if i < 3 || value != default {
                map.serialize_entry(name, &value)?;
            }
        }
        map.end()
    }
}

impl Timeouts {
    fn is_ipvs(&self) -> bool {
        *self == Self::IPVS
    }

    /// `ip_vs_proto_tcp.c`'s and `ip_vs_proto_udp.c`'s.
    pub const IPVS: Self = Self {
        tcp: 900,
        tcp_fin: 120,
        udp: 300,
        syn_sent: 120,
        syn_recv: 60,
        time_wait: 120,
        close: 10,
        close_wait: 60,
        last_ack: 30,
        listen: 120,
        synack: 120,
    };

    /// Every field by its name in the file.
    pub fn named(&self) -> [(&'static str, u32); 11] {
        let Self { tcp, tcp_fin, udp, syn_sent, syn_recv, time_wait, close, close_wait, last_ack, listen, synack } =
            *self;
        [
            ("tcp", tcp),
            ("tcp_fin", tcp_fin),
            ("udp", udp),
            ("syn_sent", syn_sent),
            ("syn_recv", syn_recv),
            ("time_wait", time_wait),
            ("close", close),
            ("close_wait", close_wait),
            ("last_ack", last_ack),
            ("listen", listen),
            ("synack", synack),
        ]
    }

    /// The timeout of a connection of `protocol` in `state` (a `lb_common::state`).
    pub fn of(&self, protocol: u8, state: u8) -> u32 {
        use lb_common::state::*;
        if protocol != lb_common::IPPROTO_TCP {
            return self.udp;
        }
        match state {
            ESTABLISHED => self.tcp,
            SYN_SENT => self.syn_sent,
            SYN_RECV => self.syn_recv,
            FIN_WAIT => self.tcp_fin,
            TIME_WAIT => self.time_wait,
            CLOSE => self.close,
            CLOSE_WAIT => self.close_wait,
            LAST_ACK => self.last_ack,
            LISTEN => self.listen,
            SYNACK => self.synack,
            // IPVS's NONE, and whatever else: its 2 seconds.
            _ => 2,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub xdp_mode: XdpMode,
}

/// How the XDP program is attached: in the driver, in the generic (skb) path, or the
/// driver's when it can and the generic one when not.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    Native,
    Generic,
    #[default]
    Auto,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VirtualService {
    /// Unique; names the service in metrics and for `lbctl`.
    pub name: String,
    /// A plain service's address: VIP, port and protocol (a firewall-mark service has
    /// `fwmark` and `match` instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    /// 0 serves every port of the VIP (a port-0 service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// ipvsadm `-f`: a firewall-mark service, one service over every VIP, protocol
    /// and port `match` lists (what iptables would have marked: XDP runs before
    /// netfilter, so the director matches them itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
    /// ipvsadm's default is wlc.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// ipvsadm `-b`: `sh-port`, `sh-fallback`, `mh-port`, `mh-fallback`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduler_flags: Vec<SchedulerFlag>,
    /// mh: the buckets of the Maglev table, a prime ([`DEFAULT_MH_TABLE_SIZE`] if left
    /// out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mh_table_size: Option<u32>,
    /// lblc: seconds an entry (a destination's real server) lives unused (IPVS's sysctl
    /// `lblc_expiration`, per service; [`DEFAULT_LOCALITY_EXPIRATION`] if left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lblc_expiration: Option<u32>,
    /// lblcr: seconds an entry (a destination's set of real servers) lives unused, and
    /// a set of more than one keeps its members unchanged before its most loaded one
    /// leaves (IPVS's sysctl `lblcr_expiration`, per service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lblcr_expiration: Option<u32>,
    /// The forwarding method of the real servers that do not name their own.
    #[serde(default, skip_serializing_if = "is_default")]
    pub forwarding: Forwarding,
    /// Full-NAT: the director's addresses its connections leave from towards the real
    /// servers (each family in use needs one of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_addresses: Vec<IpAddr>,
    /// Full-NAT: the local ports a connection may take, inclusive.
    #[serde(default = "default_local_port_range", skip_serializing_if = "is_default_local_port_range")]
    pub local_port_range: [u16; 2],
    /// Full-NAT: carry the client's address to the real server in a TCP option (TOA).
    #[serde(default, skip_serializing_if = "is_default")]
    pub toa: bool,
    /// ipvsadm `-p` / `-M`: a client's network keeps its real server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// IPVS's sysctl, per service: a persistence template whose real server is
    /// quiesced (weight 0) no longer holds its clients.
    #[serde(default, skip_serializing_if = "is_default")]
    pub expire_quiescent_template: bool,
    /// IPVS's sysctl, per service: a connection whose real server was removed ends at
    /// its next packet (which may then open a new one), rather than going on to it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub expire_nodest_conn: bool,
    /// How the agent checks its real servers' health (none by default: all are
    /// healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// What a real server whose check fails becomes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_failure: OnFailure,
    /// The real server that serves alone while the healthy real servers' weights sum
    /// to less than `quorum` (keepalived's `sorry_server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<IpAddr>,
    /// keepalived's `quorum`: 1 by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reals: Vec<Real>,
}

/// What a firewall-mark service serves: a VIP's ports of one protocol (all of them
/// when `ports` is left out).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub vip: IpAddr,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// lbctl's `--match`: `tcp:203.0.113.10:80,443`, `udp:[2001:db8::53]`.
impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(vip) => write!(f, "{}:{vip}", self.protocol)?,
            IpAddr::V6(vip) => write!(f, "{}:[{vip}]", self.protocol)?,
        }
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            write!(f, ":{}", ports.join(","))?;
        }
        Ok(())
    }
}

impl Match {
    /// Each port it matches (none listed: port 0, all of them).
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        let ports = if self.ports.is_empty() { &[0][..] } else { &self.ports };
        ports.iter().map(|&port| Endpoint { vip: self.vip, port, protocol: self.protocol })
    }
}

/// One (VIP, port, protocol) a service answers on: a plain service has one, a
/// firewall-mark service one per VIP and port it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// IPVS's persistence: for `timeout` seconds after its last new connection, and for
/// as long as connections it sent remain, a client's network (by `netmask`) goes to the
/// same real server.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Persistence {
    /// ipvsadm `-p`'s default.
    #[serde(default = "default_persistence_timeout")]
    pub timeout: u32,
    /// ipvsadm `-M`: an IPv4 netmask (`255.255.255.0`) for IPv4 clients, or a prefix
    /// length (`64`) for IPv6 clients (for IPv4 ones too when the service has no IPv6
    /// VIP). A family without one keeps each client apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Netmask>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged, expecting = "a netmask such as 255.255.255.0, or a prefix length such as 64")]
pub enum Netmask {
    Prefix(u8),
    Mask(Ipv4Addr),
}

impl Netmask {
    /// The prefix length of a contiguous IPv4 mask.
    pub fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
        let bits = u32::from(mask);
        let prefix = bits.leading_ones();
        (bits.checked_shl(prefix).unwrap_or(0) == 0).then_some(prefix as u8)
    }
}

impl Persistence {
    /// The prefix lengths of the client networks, for IPv4 and IPv6 clients of a
    /// service that does (`has_ipv6`) or does not serve IPv6.
    pub fn prefixes(&self, has_ipv6: bool) -> (u8, u8) {
        match self.netmask {
            None => (32, 128),
            Some(Netmask::Mask(mask)) => (Netmask::mask_prefix(mask).unwrap_or(32), 128),
            Some(Netmask::Prefix(prefix)) if !has_ipv6 => (prefix.min(32), 128),
            Some(Netmask::Prefix(prefix)) => (32, prefix.min(128)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Real {
    pub address: IpAddr,
    /// The port the real server serves on, when NAT or Full-NAT maps the service's port
    /// to another; the service's port by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// ipvsadm's default weight is 1; 0 quiesces the real server (no new connections).
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    /// ipvsadm `-x`: once it holds this many connections (active and inactive), it
    /// takes no new ones until it holds fewer than `lower_threshold`; 0: no limit.
    #[serde(default, skip_serializing_if = "is_default")]
    pub upper_threshold: u32,
    /// ipvsadm `-y`: 0 means 3/4 of `upper_threshold`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub lower_threshold: u32,
    /// Its own health check, in place of the service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// IPVS's schedulers, by their ipvsadm names.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    Wrr,
    Lc,
    #[default]
    Wlc,
    Sed,
    Nq,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Mh,
    Fo,
    Ovf,
}

/// ipvsadm's scheduler flags (`-b`), each belonging to one scheduler.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerFlag {
    ShPort,
    ShFallback,
    MhPort,
    MhFallback,
}

impl SchedulerFlag {
    /// The scheduler the flag is for.
    pub fn scheduler(self) -> Scheduler {
        match self {
            Self::ShPort | Self::ShFallback => Scheduler::Sh,
            Self::MhPort | Self::MhFallback => Scheduler::Mh,
        }
    }
}

impl fmt::Display for SchedulerFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ShPort => "sh-port",
            Self::ShFallback => "sh-fallback",
            Self::MhPort => "mh-port",
            Self::MhFallback => "mh-fallback",
        })
    }
}

/// IPVS's forwarding methods, with ipvsadm's words as aliases.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    #[default]
    #[serde(alias = "route", alias = "gatewaying")]
    Dr,
    #[serde(alias = "ipip", alias = "tunnel")]
    Tun,
    #[serde(alias = "masq", alias = "masquerading")]
    Nat,
    Fnat,
}

impl From<Scheduler> for lb_common::service::Scheduler {
    fn from(scheduler: Scheduler) -> Self {
        match scheduler {
            Scheduler::Rr => Self::Rr,
            Scheduler::Wrr => Self::Wrr,
            Scheduler::Sh => Self::Sh,
            Scheduler::Dh => Self::Dh,
            Scheduler::Lc => Self::Lc,
            Scheduler::Wlc => Self::Wlc,
            Scheduler::Sed => Self::Sed,
            Scheduler::Nq => Self::Nq,
            Scheduler::Fo => Self::Fo,
            Scheduler::Ovf => Self::Ovf,
            Scheduler::Mh => Self::Mh,
            Scheduler::Lblc => Self::Lblc,
            Scheduler::Lblcr => Self::Lblcr,
        }
    }
}

impl From<Forwarding> for lb_common::real::Forwarding {
    fn from(forwarding: Forwarding) -> Self {
        match forwarding {
            Forwarding::Dr => Self::Dr,
            Forwarding::Tun => Self::Tun,
            Forwarding::Nat => Self::Nat,
            Forwarding::Fnat => Self::Fnat,
        }
    }
}

/// A configuration refused, with where and why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the file could not be read at all.
    pub line: Option<usize>,
    /// The field at fault, as a path (`services[1].reals[0].weight`); empty for the
    /// whole file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_owned(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {err}"),
        })?;
        Self::parse(&source, path)
    }

    pub fn parse(source: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml::from_str(source).map_err(|err| syntax_error(&err, path))?;
        validate::check(&config).map_err(|invalid| ConfigError {
            file: path.to_owned(),
            line: locate::line_of_nearest(source, &invalid.field),
            field: invalid.field,
            message: invalid.message,
        })?;
        Ok(config)
    }
}

impl Config {
    /// What is valid but probably not what the operator meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for service in &self.services {
            if service.port == Some(0) && service.persistence.is_none() {
                warnings.push(format!(
                    "service {}: a port-0 service without persistence spreads each client's connections over \
                     the real servers; IPVS allows port 0 only with persistence",
                    service.name
                ));
            }
            let without_toa: Vec<String> = service
                .reals
                .iter()
                .filter(|real| service.toa && service.forwarding_of(real) != Forwarding::Fnat)
                .map(|real| format!("{} ({})", real.address, service.forwarding_of(real)))
                .collect();
            if !without_toa.is_empty() {
                warnings.push(format!(
                    "service {}: toa applies to its fnat real servers only; {} get none",
                    service.name,
                    without_toa.join(", ")
                ));
            }
        }
        warnings
    }

    /// The fields that differ from `new` and that a reload cannot change.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.metrics_listen != new.metrics_listen {
            fields.push("metrics_listen");
        }
        if self.api_socket != new.api_socket {
            fields.push("api_socket");
        }
        if self.api_group != new.api_group {
            fields.push("api_group");
        }
        if self.connection_table_size != new.connection_table_size {
            fields.push("connection_table_size");
        }
        if self.pin_path != new.pin_path {
            fields.push("pin_path");
        }
        fields
    }
}

impl Config {
    /// The configured tunnel source of `real`'s IP version.
    pub fn tunnel_source_for(&self, real: IpAddr) -> Option<IpAddr> {
        self.tunnel_source.iter().copied().find(|source| source.is_ipv4() == real.is_ipv4())
    }
}

impl VirtualService {
    /// The method of a real server of this service.
    pub fn forwarding_of(&self, real: &Real) -> Forwarding {
        real.forwarding.unwrap_or(self.forwarding)
    }

    /// The port a real server of this service serves on (0: the one each client
    /// asks for).
    pub fn port_of(&self, real: &Real) -> u16 {
        real.port.or(self.port).unwrap_or(0)
    }

    /// Where the service answers: its VIP, port and protocol, or a firewall-mark
    /// service's every match (a match without ports: port 0, all of them).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        if let (Some(vip), Some(port), Some(protocol)) = (self.vip, self.port, self.protocol) {
            return vec![Endpoint { vip, port, protocol }];
        }
        self.matches.iter().flat_map(Match::endpoints).collect()
    }

    /// The IP versions of its VIPs: `(IPv4, IPv6)`.
    pub fn families(&self) -> (bool, bool) {
        let endpoints = self.endpoints();
        (endpoints.iter().any(|e| e.vip.is_ipv4()), endpoints.iter().any(|e| e.vip.is_ipv6()))
    }

    /// With persistence, the prefix lengths of its IPv4 and IPv6 clients' networks.
    pub fn persistence_prefixes(&self) -> Option<(u8, u8)> {
        let (_, has_ipv6) = self.families();
        self.persistence.map(|persistence| persistence.prefixes(has_ipv6))
    }

    /// Whether it serves every port (port 0, or a firewall-mark service): a real
    /// server then keeps the port each client asked for.
    pub fn keeps_ports(&self) -> bool {
        self.port.unwrap_or(0) == 0
    }

    /// Whether `real` can serve a packet of this IP version: its own, or either
    /// through a tunnel.
    pub fn serves(&self, real: &Real, ipv4: bool) -> bool {
        real.address.is_ipv4() == ipv4 || self.forwarding_of(real) == Forwarding::Tun
    }

    /// The Full-NAT local addresses of one IP version, in the configuration's order.
    pub fn local_addresses_of(&self, ipv4: bool) -> impl Iterator<Item = IpAddr> + '_ {
        self.local_addresses.iter().copied().filter(move |local| local.is_ipv4() == ipv4)
    }

    pub fn mh_table_size(&self) -> u32 {
        self.mh_table_size.unwrap_or(DEFAULT_MH_TABLE_SIZE)
    }

    /// lblc and lblcr: how long an entry lives unused (and an lblcr set unchanged).
    pub fn locality_expiration(&self) -> Option<u32> {
        match self.scheduler {
            Scheduler::Lblc => Some(self.lblc_expiration.unwrap_or(DEFAULT_LOCALITY_EXPIRATION)),
            Scheduler::Lblcr => Some(self.lblcr_expiration.unwrap_or(DEFAULT_LOCALITY_EXPIRATION)),
            _ => None,
        }
    }
}

/// serde_yaml's message reads "field.path: what went wrong at line L column C"; split it
/// into our parts.
fn syntax_error(err: &serde_yaml::Error, path: &Path) -> ConfigError {
    let text = err.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text);
    let (field, message) = match text.split_once(": ") {
        Some((field, message)) if !field.contains(' ') => (field, message),
        _ => ("", text),
    };
    ConfigError {
        file: path.to_owned(),
        line: err.location().map(|location| location.line()),
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// A list, or a single item standing for a list of one.
fn one_or_more<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "an address, or a list of addresses")]
    enum OneOrMore<T> {
        One(T),
        More(Vec<T>),
    }
    Ok(match OneOrMore::deserialize(deserializer)? {
        OneOrMore::One(item) => vec![item],
        OneOrMore::More(items) => items,
    })
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9798))
}

fn default_api_socket() -> PathBuf {
    PathBuf::from(lb_api::DEFAULT_SOCKET)
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}

fn is_default_pin_path(path: &Path) -> bool {
    path == default_pin_path()
}

fn default_connection_table_size() -> u32 {
    lb_common::CONN_TABLE_SIZE
}

/// Linux's own default for `ip_local_port_range` starts at 32768; a director's local
/// addresses serve only its Full-NAT connections, so it may use every unprivileged port.
fn default_local_port_range() -> [u16; 2] {
    [1024, 65535]
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn is_default_metrics_listen(listen: &SocketAddr) -> bool {
    *listen == default_metrics_listen()
}

fn default_api_group() -> String {
    "root".into()
}

fn is_default_api_group(group: &String) -> bool {
    *group == default_api_group()
}

fn is_default_api_socket(socket: &Path) -> bool {
    socket == default_api_socket()
}

fn is_default_connection_table_size(size: &u32) -> bool {
    *size == default_connection_table_size()
}

fn is_default_local_port_range(range: &[u16; 2]) -> bool {
    *range == default_local_port_range()
}

fn default_weight() -> u32 {
    1
}

fn default_persistence_timeout() -> u32 {
    300
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = format!("{self:?}").to_lowercase();
        f.write_str(&name)
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = format!("{self:?}").to_lowercase();
        f.write_str(&name)
    }
}

#[cfg(test)]
mod tests;
