//! `lbctl list` and `lbctl -L`: the layouts of `ipvsadm -Ln` (and `--stats`,
//! `--thresholds`, `--exact`, one service), `-Lnc` and `-Sn`, line for line, so the eye
//! and the scripts that read ipvsadm's output find everything where they expect it.
//! Addresses are always numeric. Services and real servers are sorted as ipvsadm
//! sorts them (by number; ipvsadm's own comparison wraps past 2^31) unless asked not to.

use std::{
    cmp::Ordering,
    fmt::Write,
    net::{IpAddr, SocketAddr},
};

use lb_api::{ConnectionStatus, RealStatus, ServiceStatus, Stats};

/// Which of ipvsadm's listings, and how.
#[derive(Clone, Copy, Debug, Default)]
pub struct Layout {
    pub stats: bool,
    pub thresholds: bool,
    pub exact: bool,
    pub nosort: bool,
    /// One service (`-L -t ...`): no version line.
    pub one: bool,
    /// The connection table's size, which the version line shows.
    pub table_size: u32,
}

/// `ipvsadm -Ln` and its variants.
pub fn render(services: &[ServiceStatus], layout: Layout) -> String {
    // IPVS's version, as ipvsadm shows it, and our table's size.
    let version = format!("IP Virtual Server version 1.2.1 (size={})\n", layout.table_size);
    let mut out = if layout.one { String::new() } else { version };
    out.push_str(title(layout));
    for service in ordered(services, layout.nosort) {
        if layout.stats {
            let _ = writeln!(out, "{:<33}{}", service_name(service), stats(&service.stats, layout.exact));
        } else {
            let _ = writeln!(out, "{}", service_line(service));
        }
        for real in ordered_reals(&service.reals, layout.nosort) {
            let name = real_name(real);
            let _ = if layout.stats {
                writeln!(out, "  -> {name:<28}{}", stats(&real.stats, layout.exact))
            } else if layout.thresholds {
                writeln!(
                    out,
                    "  -> {name:<28} {:<10} {:<10} {:<10} {:<10}",
                    real.upper_threshold, real.lower_threshold, real.active_conns, real.inactive_conns
                )
            } else {
                writeln!(
                    out,
                    "  -> {name:<28} {:<7} {:<6} {:<10} {:<10}",
                    forward_name(&real.forwarding),
                    real.weight,
                    real.active_conns,
                    real.inactive_conns
                )
            };
        }
    }
    out
}

fn title(layout: Layout) -> &'static str {
    if layout.stats {
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n"
    } else if layout.thresholds {
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n  -> RemoteAddress:Port\n"
    } else {
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    }
}

/// `TCP  203.0.113.10:80 wlc (sh-port) persistent 360 mask 255.255.255.0`.
fn service_line(service: &ServiceStatus) -> String {
    let mut line = format!("{} {}", service_name(service), service.scheduler);
    if !service.scheduler_flags.is_empty() {
        let _ = write!(line, " ({})", service.scheduler_flags.join(","));
    }
    if let Some(timeout) = service.persistence {
        let _ = write!(line, " persistent {timeout}");
        if let Some(mask) = &service.netmask {
            let _ = write!(line, " mask {mask}");
        }
    }
    line
}

/// ipvsadm's names of the forwarding methods (Full-NAT's as the Full-NAT patches name it).
fn forward_name(forwarding: &str) -> &str {
    match forwarding {
        "dr" => "Route",
        "tun" => "Tunnel",
        "nat" => "Masq",
        "fnat" => "FullNat",
        other => other,
    }
}

/// `TCP  203.0.113.10:80` (an IPv4 one cut at 33 characters, as ipvsadm), `FWM  11`,
/// `FWM  12 IPv6` for a firewall-mark service of IPv6 addresses only.
fn service_name(service: &ServiceStatus) -> String {
    if let Some(mark) = service.fwmark {
        return format!("FWM  {mark}{}", if ipv6_only(service) { " IPv6" } else { "" });
    }
    let name = format!("{:<4} {}", service.protocol.to_uppercase(), endpoint(service.vip, service.port));
    if service.vip.is_ipv4() { name.chars().take(33).collect() } else { name }
}

/// Whether a firewall-mark service serves IPv6 addresses only (ipvsadm's `-f N -6`).
pub fn ipv6_only(service: &ServiceStatus) -> bool {
    !service.matches.is_empty() && service.matches.iter().all(|matched| matched.contains('['))
}

/// A real server's `address:port`, an IPv4 one cut at 28 characters, as ipvsadm.
fn real_name(real: &RealStatus) -> String {
    let name = endpoint(real.address, real.port);
    if real.address.is_ipv4() { name.chars().take(28).collect() } else { name }
}

/// ipvsadm's order: plain services before firewall-mark ones, IPv4 before IPv6, TCP
/// before UDP, then by address and port.
pub fn ordered(services: &[ServiceStatus], nosort: bool) -> Vec<&ServiceStatus> {
    let mut ordered: Vec<&ServiceStatus> = services.iter().collect();
    if !nosort {
        ordered.sort_by(|a, b| {
            let key = |s: &ServiceStatus| (s.fwmark.unwrap_or(0), s.vip.is_ipv6(), s.protocol.clone());
            key(a).cmp(&key(b)).then_with(|| by_address(a.vip, a.port, b.vip, b.port))
        });
    }
    ordered
}

pub fn ordered_reals(reals: &[RealStatus], nosort: bool) -> Vec<&RealStatus> {
    let mut ordered: Vec<&RealStatus> = reals.iter().collect();
    if !nosort {
        ordered.sort_by(|a, b| by_address(a.address, a.port, b.address, b.port));
    }
    ordered
}

fn by_address(a: IpAddr, a_port: u16, b: IpAddr, b_port: u16) -> Ordering {
    a.is_ipv6().cmp(&b.is_ipv6()).then(a.cmp(&b)).then(a_port.cmp(&b_port))
}

/// `ipvsadm -Lnc`: the connection entries.
pub fn render_connections(connections: &[ConnectionStatus]) -> String {
    let mut out = String::from("IPVS connection entries\n");
    let _ = writeln!(out, "pro expire {:<11} {:<18} {:<18} destination", "state", "source", "virtual");
    for conn in connections {
        let expire = format!("{:02}:{:02}", conn.expires / 60, conn.expires % 60);
        let _ = writeln!(
            out,
            "{:<3} {expire:<6} {:<11} {:<18} {:<18} {}",
            conn.protocol.to_uppercase(),
            conn.state,
            socket(conn.source),
            socket(conn.virtual_address),
            socket(conn.destination)
        );
    }
    out
}

fn socket(address: SocketAddr) -> String {
    endpoint(address.ip(), address.port())
}

/// OutPkts and OutBytes count replies through the director (NAT, Full-NAT); direct
/// routing and tunnels never see them, so they stay 0 there, as in ipvsadm.
fn stats(stats: &Stats, exact: bool) -> String {
    [stats.conns, stats.in_packets, stats.out_packets, stats.in_bytes, stats.out_bytes]
        .iter()
        .map(|&n| large_number(n, exact))
        .collect()
}

/// ipvsadm's `print_largenum`: nine columns, in K, M, G or T (of 1000) when the number
/// does not fit, unless exact.
fn large_number(n: u64, exact: bool) -> String {
    if exact {
        let digits = n.to_string();
        return format!("{n:>width$}", width = if digits.len() <= 8 { 9 } else { digits.len() + 1 });
    }
    match n {
        0..100_000_000 => format!("{n:>9}"),
        100_000_000..1_000_000_000 => format!("{:>8}K", n / 1_000),
        1_000_000_000..100_000_000_000 => format!("{:>8}M", n / 1_000_000),
        100_000_000_000..100_000_000_000_000 => format!("{:>8}G", n / 1_000_000_000),
        _ => format!("{:>8}T", n / 1_000_000_000_000),
    }
}

pub fn endpoint(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// `-L --daemon`: a line per sync daemon that runs, as ipvsadm prints them, from the
/// running configuration's `sync:` block (YAML).
pub fn daemons(config: &str) -> Result<String, String> {
    let config: serde_yaml::Value =
        serde_yaml::from_str(config).map_err(|err| format!("reading the configuration: {err}"))?;
    let Some(sync) = config.get("sync") else { return Ok(String::new()) };
    let text = |key: &str, default: &str| match sync.get(key) {
        Some(serde_yaml::Value::String(value)) => value.clone(),
        Some(serde_yaml::Value::Number(value)) => value.to_string(),
        _ => default.to_owned(),
    };
    let role = text("role", "none");
    let settings = format!(
        "mcast={}, syncid={}, group={}, port={}",
        text("interface", ""),
        text("syncid", "0"),
        text("group", "224.0.0.81"),
        text("port", "8848")
    );
    let states: &[&str] = match role.as_str() {
        "master" => &["master"],
        "backup" => &["backup"],
        "both" => &["master", "backup"],
        _ => &[],
    };
    Ok(states.iter().map(|state| format!("{state} sync daemon ({settings})\n")).collect())
}

#[cfg(test)]
mod tests {
    use lb_api::RealStatus;

    use super::*;

    /// A table like ipvsadm's man page's: written out of order, listed sorted.
    pub fn services() -> Vec<ServiceStatus> {
        let real = |address: &str, port, forwarding: &str, conns, in_packets, in_bytes| RealStatus {
            address: address.parse().unwrap(),
            port,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
            forwarding: forwarding.into(),
            resolved: true,
            active_conns: conns,
            inactive_conns: 2 * conns,
            stats: Stats { conns, in_packets, in_bytes, out_packets: in_packets - 1, out_bytes: 2 * in_bytes },
        };
        let service = |name: &str, protocol: &str, vip: &str, port, scheduler: &str| ServiceStatus {
            name: name.into(),
            protocol: protocol.into(),
            vip: vip.parse().unwrap(),
            port,
            fwmark: None,
            persistence: None,
            netmask: None,
            scheduler: scheduler.into(),
            scheduler_flags: Vec::new(),
            matches: Vec::new(),
            stats: Stats::default(),
            reals: Vec::new(),
        };
        let mut web = service("web", "tcp", "203.0.113.10", 80, "wrr");
        web.stats = Stats { conns: 4, in_packets: 24, in_bytes: 123_456_789_012, out_packets: 22, out_bytes: 2904 };
        web.reals = vec![real("198.18.1.12", 80, "dr", 3, 18, 1089), real("198.18.1.11", 80, "nat", 1, 6, 363)];
        web.reals[0].weight = 3;
        web.reals[0].upper_threshold = 100;
        web.reals[0].lower_threshold = 50;
        let mut dns = service("dns6", "udp", "2001:db8:100::10", 53, "sh");
        dns.scheduler_flags = vec!["sh-port".into()];
        dns.persistence = Some(360);
        dns.netmask = Some("64".into());
        dns.reals = vec![real("2001:db8:1::11", 53, "tun", 0, 1, 1)];
        let mut shop = service("shop", "tcp", "203.0.113.10", 443, "rr");
        shop.fwmark = Some(11);
        shop.persistence = Some(600);
        shop.netmask = Some("255.255.255.0".into());
        shop.matches = vec!["tcp:203.0.113.10:443".into()];
        shop.reals = vec![real("198.18.1.13", 0, "fnat", 0, 1, 1)];
        let mut ssh = service("ssh", "tcp", "198.51.100.1", 22, "wlc");
        ssh.reals = vec![];
        vec![shop, dns, web, ssh]
    }

    #[test]
    fn lists_like_ipvsadm_ln_sorted() {
        let expected = "\
IP Virtual Server version 1.2.1 (size=1048576)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.51.100.1:22 wlc
TCP  203.0.113.10:80 wrr
  -> 198.18.1.11:80               Masq    1      1          2         
  -> 198.18.1.12:80               Route   3      3          6         
UDP  [2001:db8:100::10]:53 sh (sh-port) persistent 360 mask 64
  -> [2001:db8:1::11]:53          Tunnel  1      0          0         
FWM  11 rr persistent 600 mask 255.255.255.0
  -> 198.18.1.13:0                FullNat 1      0          0         
";
        assert_eq!(render(&services(), Layout { table_size: 1048576, ..Default::default() }), expected);
        let nosort = render(&services(), Layout { nosort: true, one: true, ..Default::default() });
        assert!(nosort.starts_with("Prot LocalAddress:Port Scheduler Flags\n"), "{nosort}");
        assert!(nosort.find("FWM  11").unwrap() < nosort.find("TCP  203.0.113.10:80").unwrap());
    }

    #[test]
    fn lays_out_stats_and_thresholds_like_ipvsadm() {
        let expected = "\
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  198.51.100.1:22                     0        0        0        0        0
TCP  203.0.113.10:80                     4       24       22     123G     2904
  -> 198.18.1.11:80                      1        6        5      363      726
  -> 198.18.1.12:80                      3       18       17     1089     2178
";
        let stats = render(&services(), Layout { stats: true, ..Default::default() });
        assert!(stats.split_once('\n').unwrap().1.starts_with(expected), "{stats}");
        let exact = render(&services(), Layout { stats: true, exact: true, ..Default::default() });
        assert!(exact.contains("TCP  203.0.113.10:80                     4       24       22 123456789012     2904\n"));
        let thresholds = render(&services(), Layout { thresholds: true, ..Default::default() });
        assert!(thresholds.contains("Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n"));
        assert!(thresholds.contains("  -> 198.18.1.12:80               100        50         3          6         \n"));
        assert_eq!(large_number(99_999_999, false), " 99999999");
        assert_eq!(large_number(100_000_000, false), "  100000K");
        assert_eq!(large_number(1_234_567_890, false), "    1234M");
    }

    #[test]
    fn saves_like_ipvsadm_save_n() {
        let expected = "\
-A -t 198.51.100.1:22 -s wlc
-A -t 203.0.113.10:80 -s wrr
-a -t 203.0.113.10:80 -r 198.18.1.11:80 -m -w 1
-a -t 203.0.113.10:80 -r 198.18.1.12:80 -g -w 3 -x 100 -y 50
-A -u [2001:db8:100::10]:53 -s sh -p 360 -M 64 -b sh-port
-a -u [2001:db8:100::10]:53 -r [2001:db8:1::11]:53 -i -w 1 --tun-type ipip
-A -f 11 -s rr -p 600 -M 255.255.255.0 --match tcp:203.0.113.10:443
-a -f 11 -r 198.18.1.13:0 --fullnat -w 1
";
        let rules = crate::save::rules(&services());
        assert_eq!(rules, expected);
        let changes = crate::ipvsadm::restore(&rules).expect("lbctl -R reads what lbctl -S writes");
        assert_eq!(changes.len(), 8);
    }

    #[test]
    fn lists_connections_like_ipvsadm_lnc() {
        let conn = |protocol: &str, expires, state: &str, source: &str, virtual_address: &str, destination: &str| {
            ConnectionStatus {
                protocol: protocol.into(),
                expires,
                state: state.into(),
                source: source.parse().unwrap(),
                virtual_address: virtual_address.parse().unwrap(),
                destination: destination.parse().unwrap(),
            }
        };
        let connections = [
            conn("tcp", 899, "ESTABLISHED", "198.18.1.1:40000", "203.0.113.10:80", "198.18.1.11:80"),
            conn("udp", 5, "UDP", "[2001:db8:1::1]:5353", "[2001:db8:100::10]:53", "[2001:db8:21::11]:53"),
        ];
        let expected = "\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:59  ESTABLISHED 198.18.1.1:40000   203.0.113.10:80    198.18.1.11:80
UDP 00:05  UDP         [2001:db8:1::1]:5353 [2001:db8:100::10]:53 [2001:db8:21::11]:53
";
        assert_eq!(render_connections(&connections), expected);
    }
}
