//! `lbctl -S -n` and `lbctl save --format ipvsadm`: the running services as ipvsadm
//! commands (ipvsadm-save's layout), which `lbctl -R` reads back. Beyond ipvsadm:
//! thresholds are written (`-x`, `-y`: ipvsadm's save loses them), a firewall-mark
//! service's matches (`--match`), and Full-NAT (`--fullnat`).

use std::fmt::Write;

use lb_api::{RealStatus, ServiceStatus};

use crate::list::{endpoint, ipv6_only, ordered, ordered_reals};

pub fn rules(services: &[ServiceStatus]) -> String {
    let mut out = String::new();
    for service in ordered(services, false) {
        let name = rule_name(service);
        let _ = write!(out, "-A {name} -s {}", service.scheduler);
        if let Some(timeout) = service.persistence {
            let _ = write!(out, " -p {timeout}");
            if let Some(mask) = &service.netmask {
                let _ = write!(out, " -M {mask}");
            }
        }
        if !service.scheduler_flags.is_empty() {
            let _ = write!(out, " -b {}", service.scheduler_flags.join(","));
        }
        for matched in &service.matches {
            let _ = write!(out, " --match {matched}");
        }
        out.push('\n');
        for real in ordered_reals(&service.reals, false) {
            let _ = writeln!(out, "-a {name} -r {}{}", endpoint(real.address, real.port), real_options(real));
        }
    }
    out
}

/// `-t 203.0.113.10:80`, `-u [2001:db8::53]:53`, `-f 11` (`-f 12 -6` for IPv6 only).
fn rule_name(service: &ServiceStatus) -> String {
    match service.fwmark {
        Some(mark) => {
            format!("-f {mark}{}", if ipv6_only(service) { " -6" } else { "" })
        }
        None => {
            let switch = if service.protocol == "udp" { "-u" } else { "-t" };
            format!("{switch} {}", endpoint(service.vip, service.port))
        }
    }
}

fn real_options(real: &RealStatus) -> String {
    let switch = match real.forwarding.as_str() {
        "tun" => "-i",
        "nat" => "-m",
        "fnat" => "--fullnat",
        _ => "-g",
    };
    let mut options = format!(" {switch} -w {}", real.weight);
    if real.forwarding == "tun" {
        options += " --tun-type ipip";
    }
    if real.upper_threshold != 0 {
        let _ = write!(options, " -x {}", real.upper_threshold);
    }
    if real.lower_threshold != 0 {
        let _ = write!(options, " -y {}", real.lower_threshold);
    }
    options
}
