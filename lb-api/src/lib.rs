//! The agent's control API, spoken over a Unix stream socket: one JSON request per line,
//! one JSON response per line. `lbctl` is its client; the agent serves it.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};
pub use serde_json::{Map, Value};

pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The virtual services and their real servers, with counters, as the data path
    /// serves them (health considered: ipvsadm -L).
    List,
    /// The same as the configuration says them (what ipvsadm -S saves): every
    /// configured real server with its configured weight, no sorry server.
    Configured,
    /// The connections the director holds.
    Connections,
    /// The running configuration, as the configuration file writes it.
    Config,
    /// The connection timeouts ipvsadm shows (`-L --timeout`).
    Timeouts,
    /// Changes to the running configuration, applied together or refused together, and
    /// written back to the configuration file.
    Change { changes: Vec<Change> },
    /// Sets the traffic counters of one service (and its real servers), or of all, back
    /// to zero (ipvsadm -Z).
    Zero { service: Option<ServiceRef> },
}

/// One change to the running configuration. Services and real servers are written as
/// the configuration file writes them (its keys, its values): the agent reads them with
/// the file's own rules, so a change says nothing the file could not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// ipvsadm -A: a new service. Without a `name`, the agent gives it one.
    AddService { service: Map<String, Value> },
    /// ipvsadm -E: the keys of `set` replace the service's (`null` removes one).
    EditService { service: ServiceRef, set: Map<String, Value> },
    /// ipvsadm -D.
    DeleteService { service: ServiceRef },
    /// ipvsadm -C: every service goes.
    Clear,
    /// ipvsadm -a.
    AddReal { service: ServiceRef, real: Map<String, Value> },
    /// ipvsadm -e: the keys of `set` replace the real server's (`null` removes one).
    EditReal { service: ServiceRef, real: RealRef, set: Map<String, Value> },
    /// ipvsadm -d.
    DeleteReal { service: ServiceRef, real: RealRef },
    /// ipvsadm --set: the keys of `set` replace the timeouts'.
    SetTimeouts { set: Map<String, Value> },
    /// ipvsadm --start-daemon: `state` (`master` or `backup`) runs besides what runs; the
    /// keys of `set` (`interface`, `syncid`, `group`, `port`) replace the `sync:` block's.
    StartDaemon { state: String, set: Map<String, Value> },
    /// ipvsadm --stop-daemon: `state`'s daemon stops.
    StopDaemon { state: String },
    /// A whole configuration (YAML, as the file) replaces the running one.
    Replace { yaml: String },
}

/// A service, by its name or as ipvsadm names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceRef {
    Name(String),
    /// ipvsadm -t / -u: a plain service's VIP, port and protocol (`tcp`, `udp`).
    Address {
        protocol: String,
        vip: IpAddr,
        port: u16,
    },
    /// ipvsadm -f.
    Fwmark(u32),
}

impl ServiceRef {
    /// Whether it names the service called `name`, of firewall mark `fwmark`, or else
    /// at `address` (protocol, VIP, port).
    pub fn names(&self, name: &str, fwmark: Option<u32>, address: Option<(&str, IpAddr, u16)>) -> bool {
        match self {
            Self::Name(wanted) => name == wanted,
            Self::Address { protocol, vip, port } => {
                fwmark.is_none() && address == Some((protocol.as_str(), *vip, *port))
            }
            Self::Fwmark(mark) => fwmark == Some(*mark),
        }
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "{name}"),
            Self::Address { protocol, vip, port } => write!(f, "{protocol} {}", SocketAddr::new(*vip, *port)),
            Self::Fwmark(mark) => write!(f, "fwmark {mark}"),
        }
    }
}

/// A real server of a service, by its address (and port, where one address serves on
/// several).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealRef {
    pub address: IpAddr,
    #[serde(default)]
    pub port: Option<u16>,
}

impl std::fmt::Display for RealRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.address, port)),
            None => write!(f, "{}", self.address),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Services {
        services: Vec<ServiceStatus>,
        /// The size of the connection table (ipvsadm's `size=`).
        #[serde(default)]
        table_size: u32,
    },
    Connections {
        connections: Vec<ConnectionStatus>,
    },
    /// The running configuration in YAML.
    Config {
        yaml: String,
    },
    /// Seconds: ESTABLISHED, FIN_WAIT, UDP.
    Timeouts {
        tcp: u32,
        tcp_fin: u32,
        udp: u32,
    },
    /// The request was carried out; what it did, in a line.
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `tcp` or `udp` (a firewall-mark service's first match's).
    pub protocol: String,
    /// A firewall-mark service's first match's.
    pub vip: IpAddr,
    pub port: u16,
    /// A firewall-mark service's mark (ipvsadm -f).
    #[serde(default)]
    pub fwmark: Option<u32>,
    /// The persistence timeout, in seconds (ipvsadm -p).
    #[serde(default)]
    pub persistence: Option<u32>,
    /// The persistence netmask as ipvsadm writes it (`255.255.255.0`, or `64` for an
    /// IPv6 service), when it is not a single address's.
    #[serde(default)]
    pub netmask: Option<String>,
    pub scheduler: String,
    /// `sh-port`, `mh-fallback`, ...
    #[serde(default)]
    pub scheduler_flags: Vec<String>,
    /// A firewall-mark service's matches, as lbctl's `--match` writes them
    /// (`tcp:203.0.113.10:80,443`).
    #[serde(default)]
    pub matches: Vec<String>,
    pub stats: Stats,
    pub reals: Vec<RealStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealStatus {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// ipvsadm -x and -y; 0 when not set.
    #[serde(default)]
    pub upper_threshold: u32,
    #[serde(default)]
    pub lower_threshold: u32,
    /// `dr`, ...
    pub forwarding: String,
    /// Whether the director knows the real server's link-layer address.
    pub resolved: bool,
    /// ipvsadm's ActiveConn: connections established, or opening (TCP).
    pub active_conns: u64,
    /// ipvsadm's InActConn: the other connections it holds (closing TCP, UDP).
    pub inactive_conns: u64,
    pub stats: Stats,
}

/// A connection the director holds, as `ipvsadm -Lnc` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Seconds until it expires if it stays idle.
    pub expires: u32,
    /// IPVS's state name (`ESTABLISHED`, ...; `UDP` for UDP).
    pub state: String,
    /// The client.
    pub source: SocketAddr,
    /// The virtual service's address it came to.
    pub virtual_address: SocketAddr,
    /// The real server it goes to.
    pub destination: SocketAddr,
}

/// Traffic counted by the director, in ipvsadm's terms. Only replies that come back
/// through the director (NAT, Full-NAT) count as outbound; direct routing and tunnels
/// never see them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub conns: u64,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the agent at {socket}: {source} (is lb-agent running?)")]
    Connect { socket: String, source: io::Error },
    #[error("talking to the agent: {0}")]
    Io(#[from] io::Error),
    #[error("the agent answered something unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ApiError> {
    let stream = UnixStream::connect(socket)
        .map_err(|source| ApiError::Connect { socket: socket.display().to_string(), source })?;
    // A change waits for new real servers to resolve, and for changes before it.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = &stream;
    writer.write_all(&encode(request)?)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// A message as it goes on the wire: JSON and a newline.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec(message)?;
    bytes.push(b'\n');
    Ok(bytes)
}
