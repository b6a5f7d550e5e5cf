//! The director as a whole: packets by what became of them and why, the connection
//! table, the interfaces the data path is attached to, and the agent's build.

use lb_common::stats::{Reason, Verdict};
use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{family, single};
use crate::{dataplane::AttachedMode, expiry};

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

pub(super) fn verdicts(encoder: &mut DescriptorEncoder, reasons: &[(Reason, u64)]) -> std::fmt::Result {
    for (name, help, counts) in VERDICTS {
        let members = reasons.iter().filter(|(reason, _)| counts(reason.verdict()));
        let members = members.map(|(reason, n)| ([("reason", reason.label().to_owned())], *n));
        family(encoder, (name, help, MetricType::Counter), members)?;
    }
    Ok(())
}

/// What the ager counted at its last walk, and the table's size.
pub(super) fn connection_table(
    encoder: &mut DescriptorEncoder,
    expiry: &expiry::Counts,
    capacity: u32,
) -> std::fmt::Result {
    let expired = (
        "lb_connections_expired",
        "Connections removed after their timeout (the two entries of a NAT or Full-NAT connection count once).",
        MetricType::Counter,
    );
    single(encoder, expired, expiry.expired())?;
    let entries = (
        "lb_connection_table_entries",
        "Entries of the connection table at its last walk (two per NAT or Full-NAT connection).",
        MetricType::Gauge,
    );
    single(encoder, entries, expiry.entries())?;
    let capacity_help =
        "Entries the connection table holds at most (connection_table_size); beyond, the oldest give way.";
    single(encoder, ("lb_connection_table_capacity", capacity_help, MetricType::Gauge), u64::from(capacity))
}

/// 1 per attached interface, labelled with the mode its attachment took.
pub(super) fn interfaces(encoder: &mut DescriptorEncoder, interfaces: &[(String, AttachedMode)]) -> std::fmt::Result {
    let help =
        "1 for each interface lb_ingress is attached to, by the XDP mode it took (driver: native; skb: generic).";
    let members =
        interfaces.iter().map(|(name, mode)| ([("interface", name.clone()), ("mode", mode.label().to_owned())], 1));
    family(encoder, ("lb_interface_xdp_mode", help, MetricType::Gauge), members)
}

/// 1, labelled with the agent's version and the commit it was built from (`unknown`
/// when built outside a git checkout).
pub(super) fn build_info(encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let labels = [("version", env!("CARGO_PKG_VERSION").to_owned()), ("commit", env!("LB_GIT_COMMIT").to_owned())];
    let help = "1, labelled with the agent's version and the git commit it was built from.";
    family(encoder, ("lb_build_info", help, MetricType::Gauge), [(labels, 1)])
}
