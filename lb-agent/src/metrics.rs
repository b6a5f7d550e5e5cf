//! Prometheus metrics, read at scrape time: the data path's per-CPU counters summed,
//! and the director's state as it is, so nothing is counted twice and the data path
//! does no extra work for them.
//!
//! One scrape takes the director's lock once, to read a [`Scrape`]; the families are
//! written from it: per service and real server (`services`), of the director as a
//! whole (`director`), the real servers' health (`health`), and connection
//! synchronisation (`sync`).

mod director;
mod health;
mod services;
mod sync;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use axum::{Router, extract::State, http::header::CONTENT_TYPE, response::IntoResponse, routing::get};
use lb_api::ServiceStatus;
use lb_common::stats::Reason;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    control,
    dataplane::AttachedMode,
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
    sync: Arc<crate::sync::Counts>,
) -> Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(LbCollector { director, expiry, health, sync }));
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
    sync: Arc<crate::sync::Counts>,
}

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LbCollector")
    }
}

impl Collector for LbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let scrape = Scrape::read(&control::lock(&self.director)).map_err(|err| {
            log::error!("reading counters for a scrape: {err:#}");
            std::fmt::Error
        })?;
        services::encode(&mut encoder, &scrape.services)?;
        director::verdicts(&mut encoder, &scrape.reasons)?;
        director::connection_table(&mut encoder, &self.expiry, scrape.table_capacity)?;
        director::interfaces(&mut encoder, &scrape.interfaces)?;
        director::build_info(&mut encoder)?;
        sync::encode(&mut encoder, &self.sync)?;
        health::encode(&mut encoder, &scrape.configured, &self.health)
    }
}

/// What one scrape reads of the director, under its lock.
struct Scrape {
    services: Vec<ServiceStatus>,
    reasons: Vec<(Reason, u64)>,
    /// Each attached interface and the mode its XDP attachment took.
    interfaces: Vec<(String, AttachedMode)>,
    table_capacity: u32,
    /// Every configured real server, served or not, in the configuration's order.
    configured: Vec<Owner>,
}

impl Scrape {
    fn read(director: &Director) -> Result<Self> {
        let dataplane = director.dataplane();
        Ok(Self {
            services: director.status(View::Serving)?,
            reasons: director.reason_counts()?,
            interfaces: dataplane.attachments().map(|(name, mode)| (name.to_owned(), mode)).collect(),
            table_capacity: dataplane.conn_table_capacity(),
            configured: health::configured_reals(director.running_config()),
        })
    }
}

/// A metric's labels: (name, value) pairs.
type Labels<const N: usize> = [(&'static str, String); N];

/// A real server's labels: its service and its address.
fn real_labels(service: &str, address: std::net::IpAddr) -> Labels<2> {
    [("service", service.to_owned()), ("real", address.to_string())]
}

/// One family of counters (`kind` Counter) or gauges: `name{labels} value` per member.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    members: impl IntoIterator<Item = (Labels<N>, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in members {
        sample(metric.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

/// One value without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    value: u64,
) -> std::fmt::Result {
    sample(encoder.encode_descriptor(name, help, None, kind)?, kind, value)
}

fn sample(encoder: prometheus_client::encoding::MetricEncoder, kind: MetricType, value: u64) -> std::fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder),
    }
}
