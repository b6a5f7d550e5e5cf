//! Our configuration's YAML as an import writes it: the keys of lb-agent's `config`
//! (`Config`, `VirtualService`, `Real`, `Persistence`) and the health-check keys of
//! issue 7 (`check`, `on_failure`, `sorry_server`, `quorum`), only those an import fills.

use std::{
    fmt::Write,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context, Result};
use serde::{Serialize, Serializer};

#[derive(Serialize)]
pub struct Config {
    pub interfaces: Vec<Interface>,
    #[serde(skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// Written one by one, each after a comment saying where it came from.
    #[serde(skip)]
    pub services: Vec<Service>,
    /// Comment lines for the top of the file: what the operator must fill in.
    #[serde(skip)]
    pub remarks: Vec<String>,
}

#[derive(Serialize)]
pub struct Interface {
    pub name: String,
}

/// IPVS's connection timeouts in seconds (keepalived's `lvs_timeouts`).
#[derive(Clone, Default, Serialize)]
pub struct Timeouts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_fin: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<u32>,
}

impl Timeouts {
    fn is_empty(&self) -> bool {
        self.tcp.is_none() && self.tcp_fin.is_none() && self.udp.is_none()
    }
}

#[derive(Serialize)]
pub struct Service {
    /// `FILE:LINE: virtual_server ...`, for the comment above it.
    #[serde(skip)]
    pub origin: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    /// A firewall-mark service's: always empty, since keepalived.conf does not say what
    /// iptables marks.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<String>>,
    pub scheduler: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scheduler_flags: Vec<&'static str>,
    pub forwarding: Forwarding,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    pub on_failure: OnFailure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    pub reals: Vec<Real>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    Dr,
    Tun,
    Nat,
}

/// What a failing real server becomes: weight 0 (keepalived's `inhibit_on_failure`), or
/// taken out of the service (keepalived's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    Quiesce,
    Remove,
}

#[derive(Clone, Copy, Serialize)]
pub struct Persistence {
    pub timeout: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Netmask>,
}

#[derive(Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum Netmask {
    Prefix(u8),
    Mask(Ipv4Addr),
}

#[derive(Serialize)]
pub struct Real {
    pub address: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    #[serde(rename = "type")]
    pub kind: CheckType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Tcp,
    Http,
    Https,
    Udp,
    Dns,
    Exec,
}

/// An HTTP status code, or an inclusive range of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Status {
    Code(u16),
    Range([u16; 2]),
}

/// keepalived's timers have microseconds; written as the issue writes them (`2s`), or
/// in the unit that keeps them whole (`1500ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration {
    pub micros: u64,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self { micros: secs * 1_000_000 }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self)
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.micros {
            micros if micros % 1_000_000 == 0 => write!(f, "{}s", micros / 1_000_000),
            micros if micros % 1_000 == 0 => write!(f, "{}ms", micros / 1_000),
            micros => write!(f, "{micros}us"),
        }
    }
}

/// The file: a header saying where it came from, the top-level keys, then each service
/// after a comment naming its virtual server.
pub fn render(config: &Config, source: &Path) -> Result<String> {
    let mut out = format!("# Imported by `lbctl import keepalived` from {}.\n", source.display());
    out.push_str("# What could not be carried over was said on standard error.\n");
    for remark in &config.remarks {
        let _ = writeln!(out, "# {remark}");
    }
    out.push_str(&serde_yaml::to_string(config).context("cannot write the configuration as YAML")?);
    if config.services.is_empty() {
        out.push_str("services: []\n");
        return Ok(out);
    }
    out.push_str("services:\n");
    for service in &config.services {
        let text = serde_yaml::to_string(std::slice::from_ref(service))
            .with_context(|| format!("cannot write service {} as YAML", service.name))?;
        let _ = writeln!(out, "  # {}", service.origin);
        for line in text.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    Ok(out)
}
