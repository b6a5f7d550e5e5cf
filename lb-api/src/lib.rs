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

pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The virtual services and their real servers, with counters.
    List,
    /// The connections the director holds.
    Connections,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Services { services: Vec<ServiceStatus> },
    Connections { connections: Vec<ConnectionStatus> },
    Error { message: String },
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
    pub scheduler: String,
    pub stats: Stats,
    pub reals: Vec<RealStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealStatus {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
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
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
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
