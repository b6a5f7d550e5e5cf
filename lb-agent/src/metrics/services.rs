//! Per virtual service and per real server: traffic counters, and each real server's
//! connections and configured weight.

use lb_api::{RealStatus, ServiceStatus, Stats};
use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{Labels, family, real_labels};

/// The traffic counters of services and real servers: (name, help, value).
type Traffic = (&'static str, &'static str, fn(&Stats) -> u64);
const TRAFFIC: [Traffic; 5] = [
    ("packets", "Packets from clients forwarded", |stats| stats.in_packets),
    ("bytes", "Bytes (IP packets) from clients forwarded", |stats| stats.in_bytes),
    ("connections", "New connections scheduled", |stats| stats.conns),
    ("out_packets", "Replies forwarded back to clients (NAT, Full-NAT)", |stats| stats.out_packets),
    ("out_bytes", "Bytes (IP packets) of replies forwarded back to clients (NAT, Full-NAT)", |stats| stats.out_bytes),
];

/// A real server's gauges: what it holds (as ipvsadm counts it) and its configured
/// weight: (name, help, value).
type RealGauge = (&'static str, &'static str, fn(&RealStatus) -> u64);
const REAL_GAUGES: [RealGauge; 3] = [
    (
        "lb_real_active_connections",
        "Connections of a real server that are established or opening (ipvsadm's ActiveConn).",
        |real| real.active_conns,
    ),
    (
        "lb_real_inactive_connections",
        "Other connections a real server holds: closing TCP, UDP (ipvsadm's InActConn).",
        |real| real.inactive_conns,
    ),
    ("lb_real_weight", "A real server's weight in the configuration (0: quiesced).", |real| u64::from(real.weight)),
];

pub(super) fn encode(encoder: &mut DescriptorEncoder, services: &[ServiceStatus]) -> std::fmt::Result {
    let service_labels = |s: &ServiceStatus| [("service", s.name.clone())];
    for (name, help, value) in TRAFFIC {
        let help = format!("{help}, for a virtual service.");
        let members = services.iter().map(|s| (service_labels(s), value(&s.stats)));
        family(encoder, (&format!("lb_service_{name}"), &help, MetricType::Counter), members)?;
    }
    let reals: Vec<(Labels<2>, &RealStatus)> =
        services.iter().flat_map(|s| s.reals.iter().map(|r| (real_labels(&s.name, r.address), r))).collect();
    for (name, help, value) in TRAFFIC {
        let help = format!("{help}, for a real server.");
        let members = reals.iter().map(|(labels, real)| (labels.clone(), value(&real.stats)));
        family(encoder, (&format!("lb_real_{name}"), &help, MetricType::Counter), members)?;
    }
    for (name, help, value) in REAL_GAUGES {
        let members = reals.iter().map(|(labels, real)| (labels.clone(), value(real)));
        family(encoder, (name, help, MetricType::Gauge), members)?;
    }
    Ok(())
}
