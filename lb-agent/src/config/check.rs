//! Health checks as the configuration writes them: a service's `check:` (a real server's
//! own replaces it whole), what a failing real server becomes (`on_failure:`), and the
//! sorry server that serves while too few are healthy (`sorry_server:`, `quorum:`), in
//! keepalived's sense.

use std::{fmt, net::IpAddr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Real, VirtualService, validate::Invalid};

/// HAProxy's defaults (`inter 2s rise 2 fall 3`), with a timeout short enough that a
/// check ends before the next is due.
const DEFAULT_INTERVAL: Interval = Interval(Duration::from_secs(2));
const DEFAULT_TIMEOUT: Interval = Interval(Duration::from_secs(1));
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
/// keepalived's DNS_CHECK asks for the root's SOA unless told a name.
pub const DEFAULT_QUERY: &str = ".";
/// keepalived's `url` without `status_code`: any success.
pub const DEFAULT_STATUS: Status = Status::Range([200, 299]);
/// No check waits longer, nor checks less often, than this.
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);
/// Nor more often, or waits less, than this: a check every microsecond would only load
/// the real server (and fork a shell as fast as it can, for exec).
const SHORTEST: Duration = Duration::from_millis(10);
/// Counts of checks in a row beyond this would take days to reach.
const MAX_IN_A_ROW: u32 = 1000;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Check {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// The port checked: the real server's by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// http, https: the path asked for (`/` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// http, https: the status a healthy answer has ([`DEFAULT_STATUS`] by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// http, https: text the body must contain; udp: text the reply must contain (a
    /// reply is then required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// udp: the datagram sent (keepalived's `payload`; empty by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// dns: the name whose SOA record is asked for ([`DEFAULT_QUERY`] by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// exec: run by `/bin/sh -c` with `%a` and `%p` replaced by the real server's
    /// address and port; exit status 0 is healthy (keepalived's MISC_CHECK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// From the start of one check to the start of the next.
    #[serde(default = "default_interval", skip_serializing_if = "is_default_interval")]
    pub interval: Interval,
    /// How long one check may take before it counts as failed.
    #[serde(default = "default_timeout", skip_serializing_if = "is_default_timeout")]
    pub timeout: Interval,
    /// Successes in a row that bring a failed real server back.
    #[serde(default = "default_rise", skip_serializing_if = "is_default_rise")]
    pub rise: u32,
    /// Failures in a row that take a real server out.
    #[serde(default = "default_fall", skip_serializing_if = "is_default_fall")]
    pub fall: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    /// A TCP connection is accepted (keepalived's TCP_CHECK).
    Tcp,
    /// An HTTP/1.0 GET is answered with the status (HTTP_GET).
    Http,
    /// The same over TLS; the certificate is not verified (SSL_GET).
    Https,
    /// A datagram draws no ICMP error, or the expected reply (UDP_CHECK).
    Udp,
    /// A DNS query is answered (DNS_CHECK).
    Dns,
    /// A command exits 0 (MISC_CHECK).
    Exec,
}

impl fmt::Display for CheckType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format!("{self:?}").to_lowercase())
    }
}

/// An HTTP status code, or an inclusive range of them.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged, expecting = "a status code such as 200, or an inclusive range such as [200, 299]")]
pub enum Status {
    Code(u16),
    Range([u16; 2]),
}

impl Status {
    pub fn accepts(self, code: u16) -> bool {
        let [low, high] = self.bounds();
        (low..=high).contains(&code)
    }

    fn bounds(self) -> [u16; 2] {
        match self {
            Self::Code(code) => [code, code],
            Self::Range(range) => range,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Range([low, high]) => write!(f, "{low}-{high}"),
        }
    }
}

/// What a real server whose check fails becomes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Weight 0: no new connections, its persistence templates still hold (keepalived's
    /// `inhibit_on_failure`).
    Quiesce,
    /// Out of the service, as keepalived does by default: its templates are void too.
    #[default]
    Remove,
}

/// A duration as operators write it: `2s`, `500ms`, `100us`, `1m`, or a number of
/// seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub Duration);

impl Interval {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let seconds = match unit.trim() {
            "" | "s" => number,
            "ms" => number / 1e3,
            "us" => number / 1e6,
            "m" => number * 60.0,
            _ => return None,
        };
        Self::of_seconds(seconds)
    }

    /// Whole microseconds, as it is written back.
    fn of_seconds(seconds: f64) -> Option<Self> {
        let micros = (seconds * 1e6).round();
        let whole = (micros - seconds * 1e6).abs() < 1e-3;
        (whole && micros >= 0.0 && micros < u64::MAX as f64).then(|| Self(Duration::from_micros(micros as u64)))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_micros() {
            micros if micros % 1_000_000 == 0 => write!(f, "{}s", micros / 1_000_000),
            micros if micros % 1_000 == 0 => write!(f, "{}ms", micros / 1_000),
            micros => write!(f, "{micros}us"),
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntervalVisitor)
    }
}

/// Reads the duration where it stands, so a wrong one is reported at its own field.
struct IntervalVisitor;

impl serde::de::Visitor<'_> for IntervalVisitor {
    type Value = Interval;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 2s, 500ms or 100us, or a number of seconds")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Interval, E> {
        Interval::parse(text).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(text), &self))
    }

    fn visit_f64<E: serde::de::Error>(self, seconds: f64) -> Result<Interval, E> {
        Interval::of_seconds(seconds).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Float(seconds), &self))
    }

    fn visit_u64<E: serde::de::Error>(self, seconds: u64) -> Result<Interval, E> {
        Ok(Interval(Duration::from_secs(seconds)))
    }

    fn visit_i64<E: serde::de::Error>(self, seconds: i64) -> Result<Interval, E> {
        let seconds =
            u64::try_from(seconds).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(seconds), &self))?;
        self.visit_u64(seconds)
    }
}

impl VirtualService {
    /// The check of one of its real servers: the real server's own, else the
    /// service's.
    pub fn check_of<'a>(&'a self, real: &'a Real) -> Option<&'a Check> {
        real.check.as_ref().or(self.check.as_ref())
    }

    /// keepalived's quorum: the sum of healthy weights below which the sorry server
    /// serves (1 by default: while no real server with a weight is healthy).
    pub fn quorum(&self) -> u64 {
        u64::from(self.quorum.unwrap_or(1))
    }

    /// The sorry server as one of its real servers: its port the service's, its method
    /// the service's.
    pub fn sorry_real(&self) -> Option<Real> {
        let address = self.sorry_server?;
        Some(Real {
            address,
            port: None,
            weight: 1,
            forwarding: None,
            upper_threshold: 0,
            lower_threshold: 0,
            check: None,
        })
    }
}

impl super::Config {
    /// Every exec check's command, with where it is written.
    pub fn exec_commands(&self) -> Vec<(&str, Option<IpAddr>, &str)> {
        let mut commands = Vec::new();
        for service in &self.services {
            let checks = std::iter::once((None, &service.check))
                .chain(service.reals.iter().map(|real| (Some(real.address), &real.check)));
            for (real, check) in checks {
                if let Some(command) = check.as_ref().and_then(|check| check.command.as_deref()) {
                    commands.push((service.name.as_str(), real, command));
                }
            }
        }
        commands
    }
}

impl Check {
    /// The port checked on a real server that serves on `port`.
    pub fn port_on(&self, port: u16) -> u16 {
        self.port.unwrap_or(port)
    }

    /// The keys that belong to other types of check, or are missing, each with why.
    pub(super) fn validate(&self, at: &str, real_port: u16) -> Result<(), Invalid> {
        let invalid = |field: &str, message: String| Err(Invalid { field: format!("{at}.{field}"), message });
        let kind = self.kind;
        let keys: [(&str, bool, bool); 6] = [
            ("path", self.path.is_some(), matches!(self.kind, CheckType::Http | CheckType::Https)),
            ("status", self.status.is_some(), matches!(self.kind, CheckType::Http | CheckType::Https)),
            ("expect", self.expect.is_some(), matches!(self.kind, CheckType::Http | CheckType::Https | CheckType::Udp)),
            ("payload", self.payload.is_some(), self.kind == CheckType::Udp),
            ("query", self.query.is_some(), self.kind == CheckType::Dns),
            ("command", self.command.is_some(), self.kind == CheckType::Exec),
        ];
        for (key, given, belongs) in keys {
            if given && !belongs {
                return invalid(key, format!("a {kind} check has no `{key}`"));
            }
        }
        if self.kind == CheckType::Exec && self.command.as_deref().is_none_or(|command| command.trim().is_empty()) {
            return invalid("command", "an exec check needs the command it runs".into());
        }
        if let Some(path) =
            self.path.as_deref().filter(|path| !path.starts_with('/') || path.contains(char::is_whitespace))
        {
            return invalid("path", format!("`{path}` is not a request path (it starts with '/', without spaces)"));
        }
        if let Some(status) = self.status {
            let [low, high] = status.bounds();
            if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
                return invalid("status", "a status code from 100 to 599, or a range [low, high] of them".into());
            }
        }
        if self.kind != CheckType::Exec && self.port_on(real_port) == 0 {
            return invalid(
                "port",
                "the real server serves every port (port 0): the check needs the port it checks".into(),
            );
        }
        for (key, interval) in [("interval", self.interval), ("timeout", self.timeout)] {
            if !(SHORTEST..=LONGEST).contains(&interval.0) {
                return invalid(key, format!("{interval} is out of range (10ms to a day)"));
            }
        }
        if let Err(why) = crate::health::probe::dns_query(0, self.query.as_deref().unwrap_or(DEFAULT_QUERY)) {
            return invalid("query", format!("{why:#}"));
        }
        for (key, count) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_IN_A_ROW).contains(&count) {
                return invalid(key, format!("{count} is out of range (1 to {MAX_IN_A_ROW})"));
            }
        }
        Ok(())
    }
}

fn default_interval() -> Interval {
    DEFAULT_INTERVAL
}

fn default_timeout() -> Interval {
    DEFAULT_TIMEOUT
}

fn default_rise() -> u32 {
    DEFAULT_RISE
}

fn default_fall() -> u32 {
    DEFAULT_FALL
}

fn is_default_interval(interval: &Interval) -> bool {
    *interval == DEFAULT_INTERVAL
}

fn is_default_timeout(timeout: &Interval) -> bool {
    *timeout == DEFAULT_TIMEOUT
}

fn is_default_rise(rise: &u32) -> bool {
    *rise == DEFAULT_RISE
}

fn is_default_fall(fall: &u32) -> bool {
    *fall == DEFAULT_FALL
}
