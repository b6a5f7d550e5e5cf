//! Connection synchronisation: datagrams and connections sent and received, datagrams
//! dropped by reason, how late the last one came, and the records kept aside.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use super::{family, single};
use crate::sync::{Counts, RECEIVED, SENT, wire::Refused};

pub(super) fn encode(encoder: &mut DescriptorEncoder, counts: &Counts) -> std::fmt::Result {
    let directions = |values: &[std::sync::atomic::AtomicU64; 2]| {
        [(SENT, "sent"), (RECEIVED, "received")]
            .map(|(at, direction)| ([("direction", direction.to_owned())], values[at].load(Relaxed)))
    };
    let datagrams = ("lb_sync_datagrams", "Sync datagrams sent, and received and taken.", MetricType::Counter);
    family(encoder, datagrams, directions(&counts.datagrams))?;
    let connections =
        ("lb_sync_connections", "Connections announced to the sync peers, and announced by them.", MetricType::Counter);
    family(encoder, connections, directions(&counts.connections))?;
    let dropped = (
        "lb_sync_dropped",
        "Sync datagrams dropped: malformed, of another version or syncid, unauthenticated, or replayed.",
        MetricType::Counter,
    );
    let reasons = Refused::ALL.iter().zip(&counts.dropped);
    family(
        encoder,
        dropped,
        reasons.map(|(reason, count)| ([("reason", reason.label().to_owned())], count.load(Relaxed))),
    )?;
    let pending = (
        "lb_sync_pending_connections",
        "Synced connections and templates kept aside until their service or real server is configured here.",
        MetricType::Gauge,
    );
    single(encoder, pending, counts.pending.load(Relaxed))?;
    let lag = encoder.encode_descriptor(
        "lb_sync_lag_seconds",
        "How late the last sync datagram taken came: this director's clock less its sender's when it sent it.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(counts.lag_ns.load(Relaxed) as f64 / 1e9).encode(lag)
}
