//! `lbctl list`: the layouts of `ipvsadm -Ln`, `-Ln --stats` and `-Lnc`, so the eye
//! and the scripts that read ipvsadm's output find everything where they expect it.

use std::{
    fmt::Write,
    net::{IpAddr, SocketAddr},
};

use lb_api::{ConnectionStatus, ServiceStatus, Stats};

fn version() -> String {
    format!("lb (XDP load balancer) version {}\n", env!("CARGO_PKG_VERSION"))
}

/// `ipvsadm -Ln`: each service with its scheduler, each real server with its
/// forwarding method, weight and connections.
pub fn render(services: &[ServiceStatus]) -> String {
    let mut out = version();
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    for service in services {
        let persistent = service.persistence.map(|timeout| format!(" persistent {timeout}")).unwrap_or_default();
        let _ = writeln!(out, "{} {}{persistent}", service_name(service), service.scheduler);
        for real in &service.reals {
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
                endpoint(real.address, real.port),
                forward_name(&real.forwarding),
                real.weight,
                real.active_conns,
                real.inactive_conns
            );
        }
    }
    out
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

fn service_name(service: &ServiceStatus) -> String {
    if let Some(mark) = service.fwmark {
        return format!("FWM  {mark}");
    }
    format!("{}  {}", service.protocol.to_uppercase(), endpoint(service.vip, service.port))
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

/// `ipvsadm -Ln --stats`: each service's and real server's traffic.
pub fn render_stats(services: &[ServiceStatus]) -> String {
    let mut out = version();
    let _ = writeln!(
        out,
        "{:<33}{}",
        "Prot LocalAddress:Port",
        columns(["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"])
    );
    out.push_str("  -> RemoteAddress:Port\n");
    for service in services {
        let _ = writeln!(out, "{:<33}{}", service_name(service), stats(&service.stats));
        for real in &service.reals {
            let remote = format!("  -> {}", endpoint(real.address, real.port));
            let _ = writeln!(out, "{remote:<33}{}", stats(&real.stats));
        }
    }
    out
}

/// OutPkts and OutBytes count replies through the director (NAT, Full-NAT); direct
/// routing and tunnels never see them, so they stay 0 there, as in ipvsadm.
fn stats(stats: &Stats) -> String {
    columns([stats.conns, stats.in_packets, stats.out_packets, stats.in_bytes, stats.out_bytes].map(|n| n.to_string()))
}

fn columns<S: AsRef<str>>(cells: [S; 5]) -> String {
    cells.iter().map(|cell| format!(" {:>8}", cell.as_ref())).collect()
}

fn endpoint(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use lb_api::RealStatus;

    use super::*;

    #[test]
    fn lays_out_like_ipvsadm_stats() {
        let real = |address: &str, conns, in_packets, in_bytes| RealStatus {
            address: address.parse().unwrap(),
            port: 80,
            weight: 1,
            forwarding: "dr".into(),
            resolved: true,
            active_conns: conns,
            inactive_conns: 2 * conns,
            stats: Stats { conns, in_packets, in_bytes, out_packets: in_packets - 1, out_bytes: 2 * in_bytes },
        };
        let services = vec![
            ServiceStatus {
                name: "web".into(),
                protocol: "tcp".into(),
                vip: "203.0.113.10".parse().unwrap(),
                port: 80,
                fwmark: None,
                persistence: None,
                scheduler: "wrr".into(),
                stats: Stats { conns: 4, in_packets: 24, in_bytes: 1452, out_packets: 22, out_bytes: 2904 },
                reals: vec![real("198.18.1.11", 1, 6, 363), real("198.18.1.12", 3, 18, 1089)],
            },
            ServiceStatus {
                name: "web6".into(),
                protocol: "udp".into(),
                vip: "2001:db8:100::10".parse().unwrap(),
                port: 53,
                fwmark: None,
                persistence: None,
                scheduler: "rr".into(),
                stats: Stats::default(),
                reals: vec![],
            },
            ServiceStatus {
                name: "shop".into(),
                protocol: "tcp".into(),
                vip: "203.0.113.10".parse().unwrap(),
                port: 443,
                fwmark: Some(11),
                persistence: Some(600),
                scheduler: "rr".into(),
                stats: Stats::default(),
                reals: vec![],
            },
        ];
        let expected = "\
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  203.0.113.10:80                     4       24       22     1452     2904
  -> 198.18.1.11:80                      1        6        5      363      726
  -> 198.18.1.12:80                      3       18       17     1089     2178
UDP  [2001:db8:100::10]:53               0        0        0        0        0
FWM  11                                  0        0        0        0        0
";
        let rendered = render_stats(&services);
        assert_eq!(rendered.split_once('\n').unwrap().1, expected);
        let expected = "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  203.0.113.10:80 wrr
  -> 198.18.1.11:80               Route   1      1          2         
  -> 198.18.1.12:80               Route   1      3          6         
UDP  [2001:db8:100::10]:53 rr
FWM  11 rr persistent 600
";
        let rendered = render(&services);
        assert_eq!(rendered.split_once('\n').unwrap().1, expected);
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
