//! From an ipvsadm command to the agent's changes, in the configuration's words, with
//! ipvsadm's meanings: `-E` and `-e` replace every setting they can carry (what is not
//! written goes back to ipvsadm's default), `-p` alone is 360 seconds, a dr or tun real
//! server serves on the service's port.

use lb_api::{Change, Map, RealRef, ServiceRef, Value};
use serde_json::json;

use super::parse::{Command, Forwarding, Invocation, Refusal, Service, opt};

/// The change an ipvsadm command makes, or why lbctl cannot make it.
pub fn change(invocation: &Invocation) -> Result<Change, Refusal> {
    refuse_unsupported(invocation)?;
    let service = || invocation.service.as_ref().map(service_ref).ok_or_else(|| refusal("no service given"));
    let real = || {
        let (address, _) = invocation.real.ok_or_else(|| refusal("no real server given"))?;
        Ok::<_, Refusal>(RealRef { address, port: None })
    };
    Ok(match invocation.command {
        Some(Command::AddService) => Change::AddService { service: new_service(invocation)? },
        Some(Command::EditService) => Change::EditService { service: service()?, set: service_settings(invocation)? },
        Some(Command::DeleteService) => Change::DeleteService { service: service()? },
        Some(Command::Clear) => Change::Clear,
        Some(Command::AddServer) => Change::AddReal { service: service()?, real: new_real(invocation)? },
        Some(Command::EditServer) => {
            Change::EditReal { service: service()?, real: real()?, set: real_settings(invocation) }
        }
        Some(Command::DeleteServer) => Change::DeleteReal { service: service()?, real: real()? },
        Some(Command::SetTimeouts) => Change::SetTimeouts { set: timeouts(&invocation.values) },
        _ => return Err(refusal("not a change")),
    })
}

pub fn service_ref(service: &Service) -> ServiceRef {
    match service {
        Service::Address { protocol, vip, port } => {
            ServiceRef::Address { protocol: (*protocol).to_owned(), vip: *vip, port: *port }
        }
        Service::Fwmark { mark, .. } => ServiceRef::Fwmark(*mark),
    }
}

/// `--start-daemon` / `--stop-daemon`: the sync daemon's state, and for a start the
/// settings written (`--mcast-interface`, `--syncid`, `--mcast-group`, `--mcast-port`).
pub fn daemon(invocation: &Invocation) -> Result<Change, Refusal> {
    for (option, what) in [
        (opt::MCAST_TTL, "--mcast-ttl (sync datagrams go one hop)"),
        (opt::SYNC_MAXLEN, "--sync-maxlen (a datagram holds at most 15 connections, 1384 bytes)"),
    ] {
        if invocation.has(option) {
            return Err(refusal(format!("{what} is not supported by this load balancer")));
        }
    }
    let state = invocation.values.first().cloned().unwrap_or_default();
    if !matches!(state.as_str(), "master" | "backup") {
        return Err(refusal(format!("invalid daemon state `{state}`: master or backup")));
    }
    if invocation.command == Some(Command::StopDaemon) {
        return Ok(Change::StopDaemon { state });
    }
    let mut set = Map::new();
    for (key, value) in &invocation.daemon {
        let value = match *key {
            "syncid" => json!(value.parse::<u8>().map_err(|_| refusal(format!("--syncid {value}: 0 to 255")))?),
            "port" => json!(value.parse::<u16>().map_err(|_| refusal(format!("--mcast-port {value}: a port")))?),
            _ => json!(value),
        };
        set.insert((*key).to_owned(), value);
    }
    Ok(Change::StartDaemon { state, set })
}

/// What ipvsadm can ask and this load balancer cannot do (yet), said plainly.
pub fn refuse_unsupported(invocation: &Invocation) -> Result<(), Refusal> {
    let unsupported = [
        (opt::OPS, "-o (one-packet scheduling)"),
        (opt::PE, "--pe (persistence engines)"),
        (opt::TUN_PORT, "--tun-port (GUE tunnels)"),
        (opt::TUN_NOCSUM, "--tun-nocsum (GUE and GRE tunnels)"),
        (opt::TUN_CSUM, "--tun-csum (GUE and GRE tunnels)"),
        (opt::TUN_REMCSUM, "--tun-remcsum (GUE tunnels)"),
        (opt::RATE, "--rate (rate estimators)"),
        (opt::PERSISTENT_CONN, "--persistent-conn"),
        (opt::TUN_INFO, "--tun-info"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(option, _)| invocation.has(*option)) {
        return Err(refusal(format!("{what} is not supported by this load balancer")));
    }
    match invocation.tunnel_type.as_deref() {
        None | Some("ipip") => Ok(()),
        Some(other) => Err(refusal(format!("--tun-type {other}: only ipip tunnels are supported"))),
    }
}

fn refusal(message: impl Into<String>) -> Refusal {
    Refusal { status: 2, message: message.into() }
}

fn new_service(invocation: &Invocation) -> Result<Map<String, Value>, Refusal> {
    let mut fields = Map::new();
    match &invocation.service {
        Some(Service::Address { protocol, vip, port }) => {
            fields.insert("vip".into(), json!(vip));
            fields.insert("port".into(), json!(port));
            fields.insert("protocol".into(), json!(protocol));
        }
        Some(Service::Fwmark { mark, .. }) => {
            fields.insert("fwmark".into(), json!(mark));
        }
        None => return Err(refusal("no service given")),
    }
    let settings = service_settings(invocation)?;
    fields.extend(settings.into_iter().filter(|(_, value)| !value.is_null()));
    Ok(fields)
}

/// `-s`, `-b`, `-p`, `-M` (and lbctl's `--match`) as the configuration has them; left
/// out, ipvsadm's defaults (`null` takes a setting out).
fn service_settings(invocation: &Invocation) -> Result<Map<String, Value>, Refusal> {
    let mut set = Map::new();
    set.insert("scheduler".into(), json!(invocation.scheduler.as_deref().unwrap_or("wlc")));
    let flags: Vec<&str> = invocation.sched_flags.as_deref().map_or(Vec::new(), |flags| flags.split(',').collect());
    set.insert("scheduler_flags".into(), json!(flags));
    let persistence = invocation.persistent.map(|timeout| match &invocation.netmask {
        Some(mask) => json!({ "timeout": timeout, "netmask": netmask(mask) }),
        None => json!({ "timeout": timeout }),
    });
    set.insert("persistence".into(), persistence.unwrap_or(Value::Null));
    if !invocation.matches.is_empty() {
        let matches: Option<Vec<Value>> = invocation.matches.iter().map(|text| match_of(text)).collect();
        let matches = matches
            .ok_or_else(|| refusal("--match: expected PROTOCOL:VIP[:PORT,...], e.g. tcp:203.0.113.10:80,443"))?;
        set.insert("match".into(), Value::Array(matches));
    }
    Ok(set)
}

/// A dotted mask stays a string; a prefix length is a number.
pub fn netmask(mask: &str) -> Value {
    mask.parse::<u8>().map_or_else(|_| json!(mask), |prefix| json!(prefix))
}

/// `tcp:203.0.113.10:80,443`, `udp:[2001:db8::53]:53`, `tcp:203.0.113.10` (every port).
pub fn match_of(text: &str) -> Option<Value> {
    let (protocol, rest) = text.split_once(':')?;
    if protocol != "tcp" && protocol != "udp" {
        return None;
    }
    let (vip, ports) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (vip, ports) = bracketed.split_once(']')?;
            (vip.parse::<std::net::IpAddr>().ok()?, ports.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((vip, ports)) => (vip.parse().ok()?, Some(ports)),
            None => (rest.parse().ok()?, None),
        },
    };
    let ports: Vec<u16> = match ports {
        Some(ports) => ports.split(',').map(|port| port.parse().ok()).collect::<Option<_>>()?,
        None => Vec::new(),
    };
    Some(json!({ "vip": vip, "protocol": protocol, "ports": ports }))
}

fn new_real(invocation: &Invocation) -> Result<Map<String, Value>, Refusal> {
    let (address, _) = invocation.real.ok_or_else(|| refusal("no real server given"))?;
    let mut fields = real_settings(invocation);
    fields.insert("address".into(), json!(address));
    fields.retain(|_, value| !value.is_null());
    Ok(fields)
}

/// `-w`, `-g`/`-i`/`-m`, `-x`, `-y`, and the port where it is the real server's own: a
/// NAT or Full-NAT real server of a service of one port. ipvsadm gives dr and tun real
/// servers the service's port; a firewall-mark or port-0 service's real servers keep
/// the port each client asked for (ipvsadm's `:0`).
fn real_settings(invocation: &Invocation) -> Map<String, Value> {
    let forwarding = invocation.forwarding.unwrap_or(Forwarding::Dr);
    let one_port = matches!(invocation.service, Some(Service::Address { port, .. }) if port != 0);
    let rewrites = matches!(forwarding, Forwarding::Nat | Forwarding::Fnat);
    let port = invocation.real.and_then(|(_, port)| port).filter(|&port| one_port && rewrites && port != 0);
    let mut set = Map::new();
    set.insert("weight".into(), json!(invocation.weight.unwrap_or(1)));
    set.insert("forwarding".into(), json!(forwarding.word()));
    set.insert("upper_threshold".into(), json!(invocation.upper.unwrap_or(0)));
    set.insert("lower_threshold".into(), json!(invocation.lower.unwrap_or(0)));
    set.insert("port".into(), port.map_or(Value::Null, |port| json!(port)));
    set
}

/// `--set tcp tcpfin udp`: 0 leaves one as it is.
fn timeouts(values: &[String]) -> Map<String, Value> {
    let names = ["tcp", "tcp_fin", "udp"];
    names
        .iter()
        .zip(values)
        .filter_map(|(name, value)| {
            let seconds: u32 = value.parse().ok()?;
            (seconds != 0).then(|| ((*name).to_owned(), json!(seconds)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvsadm::{parse::parse, restore};

    fn change_of(line: &str) -> Change {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        change(&parse(&args).unwrap()).unwrap()
    }

    #[test]
    fn start_and_stop_daemon_say_the_state_and_settings() {
        let args = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let daemon_of = |line: &str| daemon(&parse(&args(line)).unwrap());
        let Ok(Change::StartDaemon { state, set }) =
            daemon_of("--start-daemon master --mcast-interface eth1 --syncid 7 --mcast-group 239.255.77.1")
        else {
            panic!()
        };
        assert_eq!(state, "master");
        assert_eq!(Value::Object(set), json!({ "interface": "eth1", "syncid": 7, "group": "239.255.77.1" }));
        assert_eq!(daemon_of("--stop-daemon backup"), Ok(Change::StopDaemon { state: "backup".into() }));
        assert!(daemon_of("--start-daemon primary").unwrap_err().message.contains("master or backup"));
        assert!(daemon_of("--start-daemon master --syncid 300").unwrap_err().message.contains("0 to 255"));
        assert!(daemon_of("--start-daemon master --mcast-ttl 2").unwrap_err().message.contains("one hop"));
    }

    #[test]
    fn edits_replace_what_ipvsadm_replaces() {
        let Change::EditService { set, .. } = change_of("-E -t 203.0.113.10:80 -p 600") else { panic!() };
        assert_eq!(
            Value::Object(set),
            json!({ "scheduler": "wlc", "scheduler_flags": [], "persistence": { "timeout": 600 } })
        );
        let Change::EditService { set, .. } = change_of("-E -t 203.0.113.10:80 -s rr") else { panic!() };
        assert_eq!(set["persistence"], Value::Null);
        let Change::EditReal { set, .. } = change_of("-e -t 203.0.113.10:80 -r 198.18.1.11:8080 -w 5") else {
            panic!()
        };
        assert_eq!(
            Value::Object(set),
            json!({ "weight": 5, "forwarding": "dr", "upper_threshold": 0, "lower_threshold": 0, "port": null })
        );
    }

    #[test]
    fn a_real_servers_port_is_its_own_only_where_ipvsadm_keeps_it() {
        let Change::AddReal { real, .. } = change_of("-a -t 203.0.113.10:80 -r 198.18.1.11:8080 -m -x 10 -y 5") else {
            panic!()
        };
        assert_eq!(
            Value::Object(real),
            json!({ "address": "198.18.1.11", "port": 8080, "weight": 1, "forwarding": "nat", "upper_threshold": 10, "lower_threshold": 5 })
        );
        let Change::AddReal { real, .. } = change_of("-a -t 203.0.113.10:80 -r 198.18.1.11:8080") else { panic!() };
        assert!(!real.contains_key("port"), "dr serves on the service's port: {real:?}");
        let Change::AddService { service } = change_of("-A -f 11 -s rr --match tcp:203.0.113.10:80,443") else {
            panic!()
        };
        assert_eq!(service["match"], json!([{ "vip": "203.0.113.10", "protocol": "tcp", "ports": [80, 443] }]));
    }

    #[test]
    fn set_leaves_zero_timeouts_alone_and_unsupported_options_are_refused() {
        assert_eq!(change_of("--set 0 0 60"), Change::SetTimeouts { set: Map::from_iter([("udp".into(), json!(60))]) });
        let args: Vec<String> = "-A -u 203.0.113.10:53 -o".split_whitespace().map(str::to_owned).collect();
        let refused = change(&parse(&args).unwrap()).unwrap_err();
        assert_eq!(refused.message, "-o (one-packet scheduling) is not supported by this load balancer");
    }

    #[test]
    fn a_restore_reads_every_line_or_none() {
        let rules = "# saved\nipvsadm -A -t 203.0.113.10:80 -s rr\n\n-a -t 203.0.113.10:80 -r 198.18.1.11:80 -g -w 1\n";
        assert_eq!(restore(rules).unwrap().len(), 2);
        let broken = restore("-A -t 203.0.113.10:80 -s rr\n-a -t 203.0.113.10:80 -w 1\n").unwrap_err();
        assert_eq!(broken.message, "line 2: You need to supply the 'real-server' option for the 'add-server' command");
    }
}
