//! `lbctl list`: the layout of `ipvsadm -Ln --stats`, so the eye and the scripts that
//! read ipvsadm's output find everything where they expect it.

use std::{fmt::Write, net::IpAddr};

use lb_api::{ServiceStatus, Stats};

pub fn render(services: &[ServiceStatus]) -> String {
    let mut out = format!("lb (XDP load balancer) version {}\n", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        out,
        "{:<33}{}",
        "Prot LocalAddress:Port",
        columns(["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"])
    );
    out.push_str("  -> RemoteAddress:Port\n");
    for service in services {
        let local = format!("{}  {}", service.protocol.to_uppercase(), endpoint(service.vip, service.port));
        let _ = writeln!(out, "{local:<33}{}", stats(&service.stats));
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
            stats: Stats { conns, in_packets, in_bytes, out_packets: in_packets - 1, out_bytes: 2 * in_bytes },
        };
        let services = vec![
            ServiceStatus {
                name: "web".into(),
                protocol: "tcp".into(),
                vip: "203.0.113.10".parse().unwrap(),
                port: 80,
                scheduler: "wrr".into(),
                stats: Stats { conns: 4, in_packets: 24, in_bytes: 1452, out_packets: 22, out_bytes: 2904 },
                reals: vec![real("198.18.1.11", 1, 6, 363), real("198.18.1.12", 3, 18, 1089)],
            },
            ServiceStatus {
                name: "web6".into(),
                protocol: "udp".into(),
                vip: "2001:db8:100::10".parse().unwrap(),
                port: 53,
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
";
        let rendered = render(&services);
        assert_eq!(rendered.split_once('\n').unwrap().1, expected);
    }
}
