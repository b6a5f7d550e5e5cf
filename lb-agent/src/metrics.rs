//! Prometheus metrics, read from the per-CPU maps at scrape time: nothing is counted
//! twice and the data path does no extra work for them.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use axum::{Router, extract::State, http::header::CONTENT_TYPE, response::IntoResponse, routing::get};
use lb_common::stats::Verdict;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
    registry::Unit,
};
use tokio::net::TcpListener;

use crate::{
    config::Config,
    director::{Director, View},
    expiry,
    health::{Owner, checker::Health},
};

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics endpoint's socket.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("listening for metrics on {listen}"))?;
    log::info!("serving metrics on http://{listen}/metrics");
    Ok(listener)
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    director: Arc<Mutex<Director>>,
    expiry: Arc<expiry::Counts>,
    health: Arc<Health>,
) -> Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(LbCollector { director, expiry, health }));
    let app = Router::new().route("/metrics", get(scrape)).with_state(Arc::new(registry));
    axum::serve(listener, app).await.context("serving metrics")
}

async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &registry) {
        Ok(()) => ([(CONTENT_TYPE, CONTENT)], body).into_response(),
        Err(_) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response(),
    }
}

struct LbCollector {
    director: Arc<Mutex<Director>>,
    expiry: Arc<expiry::Counts>,
    health: Arc<Health>,
}

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LbCollector")
    }
}

impl Collector for LbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let director = self.director.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (services, reasons) = match (director.status(View::Serving), director.reason_counts()) {
            (Ok(services), Ok(reasons)) => (services, reasons),
            (Err(err), _) | (_, Err(err)) => {
                log::error!("reading counters for a scrape: {err:#}");
                return Err(std::fmt::Error);
            }
        };
        let configured = configured_reals(director.running_config());
        drop(director);

        let service_labels = |s: &lb_api::ServiceStatus| [("service", s.name.clone())];
        for (name, help, value) in TRAFFIC {
            let help = format!("{help}, for a virtual service.");
            family(
                &mut encoder,
                &format!("lb_service_{name}"),
                &help,
                services.iter().map(|s| (service_labels(s), value(&s.stats))),
            )?;
        }
        let reals: Vec<([(&str, String); 2], &lb_api::RealStatus)> = services
            .iter()
            .flat_map(|s| s.reals.iter().map(|r| ([("service", s.name.clone()), ("real", r.address.to_string())], r)))
            .collect();
        for (name, help, value) in TRAFFIC {
            let help = format!("{help}, for a real server.");
            let members = reals.iter().map(|(labels, real)| (labels.clone(), value(&real.stats)));
            family(&mut encoder, &format!("lb_real_{name}"), &help, members)?;
        }
        for (name, help, value) in CONNECTIONS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, real) in &reals {
                let count = i64::try_from(value(real)).unwrap_or(i64::MAX);
                ConstGauge::new(count).encode(metric.encode_family(labels)?)?;
            }
        }

        for (name, help, counts) in VERDICTS {
            let members = reasons.iter().filter(|(reason, _)| counts(reason.verdict()));
            let members = members.map(|(reason, n)| ([("reason", reason.label().to_owned())], *n));
            family(&mut encoder, name, help, members)?;
        }

        let expired = encoder.encode_descriptor(
            "lb_connections_expired",
            "Connections removed after their timeout (the two entries of a NAT or Full-NAT connection count once).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.expiry.expired()).encode(expired)?;
        let entries = encoder.encode_descriptor(
            "lb_connection_table_entries",
            "Entries of the connection table at its last walk (two per NAT or Full-NAT connection).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(self.expiry.entries()).unwrap_or(i64::MAX)).encode(entries)?;
        encode_health(&mut encoder, &configured, &self.health)
    }
}

/// Every configured real server, as (service, address), in the configuration's order.
fn configured_reals(config: Option<&Config>) -> Vec<Owner> {
    let services = config.iter().flat_map(|config| &config.services);
    services.flat_map(|service| service.reals.iter().map(|real| (service.name.clone(), real.address))).collect()
}

/// Each configured real server's health (1 when it has no check), and its checks'
/// durations and failures.
fn encode_health(encoder: &mut DescriptorEncoder, configured: &[Owner], health: &Health) -> std::fmt::Result {
    let labels = |(service, address): &Owner| [("service", service.clone()), ("real", address.to_string())];
    let mut up: HashMap<&Owner, bool> = configured.iter().map(|owner| (owner, true)).collect();
    let mut checked = Vec::new();
    health.for_each(|owner, state| {
        if let Some(up) = up.get_mut(owner) {
            *up = state.up;
            checked.push((owner.clone(), state.failures, state.duration.clone()));
        }
    });
    let mut metric = encoder.encode_descriptor(
        "lb_real_up",
        "Whether a real server passes its health check (1 when it has none); a real server that fails it is \
         quiesced or removed, as its service's on_failure says.",
        None,
        MetricType::Gauge,
    )?;
    for owner in configured {
        ConstGauge::new(i64::from(up[owner])).encode(metric.encode_family(&labels(owner))?)?;
    }
    checked.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metric = encoder.encode_descriptor(
        // The encoder appends the unit: lb_health_check_duration_seconds.
        "lb_health_check_duration",
        "How long a real server's health checks took, failed ones too.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (owner, _, duration) in &checked {
        duration.encode(metric.encode_family(&labels(owner))?)?;
    }
    family(
        encoder,
        "lb_health_check_failures",
        "Health checks of a real server that failed (each one, not only those that took it down).",
        checked.iter().map(|(owner, failures, _)| (labels(owner), *failures)),
    )
}

/// The per-reason families, by what became of the packets: (name, help, verdicts).
type Verdicts = (&'static str, &'static str, fn(Verdict) -> bool);
const VERDICTS: [Verdicts; 3] = [
    ("lb_dropped_packets", "Packets the data path dropped, by reason.", |verdict| {
        matches!(verdict, Verdict::Drop | Verdict::Answer)
    }),
    ("lb_passed_packets", "Packets the data path left to the kernel, by reason.", |verdict| verdict == Verdict::Pass),
    (
        "lb_noted_packets",
        "Packets the data path forwarded without something they should have had, by reason.",
        |verdict| verdict == Verdict::Note,
    ),
];

/// The connections a real server holds, as ipvsadm counts them: (name, help, value).
type Connections = (&'static str, &'static str, fn(&lb_api::RealStatus) -> u64);
const CONNECTIONS: [Connections; 2] = [
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
];

/// The traffic counters of services and real servers: (name, help, value).
type Traffic = (&'static str, &'static str, fn(&lb_api::Stats) -> u64);
const TRAFFIC: [Traffic; 5] = [
    ("packets", "Packets from clients forwarded", |stats| stats.in_packets),
    ("bytes", "Bytes (IP packets) from clients forwarded", |stats| stats.in_bytes),
    ("connections", "New connections scheduled", |stats| stats.conns),
    ("out_packets", "Replies forwarded back to clients (NAT, Full-NAT)", |stats| stats.out_packets),
    ("out_bytes", "Bytes (IP packets) of replies forwarded back to clients (NAT, Full-NAT)", |stats| stats.out_bytes),
];

/// One counter family: `name_total{labels} value` per member.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    members: impl Iterator<Item = ([(&'static str, String); N], u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in members {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}
