//! The real servers' health: up or down as their checks find them, and the checks'
//! durations and failures.

use std::collections::HashMap;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::MetricType,
    registry::Unit,
};

use super::{Labels, family, real_labels};
use crate::{
    config::Config,
    health::{Owner, checker::Health},
};

/// Every configured real server, as (service, address), in the configuration's order.
pub(super) fn configured_reals(config: Option<&Config>) -> Vec<Owner> {
    let services = config.iter().flat_map(|config| &config.services);
    services.flat_map(|service| service.reals.iter().map(|real| (service.name.clone(), real.address))).collect()
}

fn labels((service, address): &Owner) -> Labels<2> {
    real_labels(service, *address)
}

/// Each configured real server's health (1 when it has no check), and its checks'
/// durations and failures.
pub(super) fn encode(encoder: &mut DescriptorEncoder, configured: &[Owner], health: &Health) -> std::fmt::Result {
    let mut up: HashMap<&Owner, bool> = configured.iter().map(|owner| (owner, true)).collect();
    let mut checked = Vec::new();
    health.for_each(|owner, state| {
        if let Some(up) = up.get_mut(owner) {
            *up = state.up;
            checked.push((owner.clone(), state.failures, state.duration.clone()));
        }
    });
    let help = "Whether a real server passes its health check (1 when it has none); a real server that fails it is \
                quiesced or removed, as its service's on_failure says.";
    let members = configured.iter().map(|owner| (labels(owner), u64::from(up[owner])));
    family(encoder, ("lb_real_up", help, MetricType::Gauge), members)?;
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
    let help = "Health checks of a real server that failed (each one, not only those that took it down).";
    let members = checked.iter().map(|(owner, failures, _)| (labels(owner), *failures));
    family(encoder, ("lb_health_check_failures", help, MetricType::Counter), members)
}
