//! `lb-decap status`: the pinned counters in Prometheus' text format, so operators read
//! them as they are and node_exporter's textfile collector takes them as they are.

use std::{fmt::Write as _, net::IpAddr};

use crate::decapsulator::Pinned;

pub fn text(pinned: &Pinned) -> String {
    let list = |addresses: &[IpAddr]| addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(" ");
    let counters = &pinned.counters;
    let mut text =
        format!("# lb-decap VIPs: {}\n# lb-decap local addresses: {}\n", list(&pinned.vips), list(&pinned.local));
    let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    let one = |value: u64| [(String::new(), value)];
    counter(
        "lb_decap_packets_total",
        "Tunnel packets decapsulated and passed to the kernel.",
        &one(counters.decapsulated.packets),
    );
    counter("lb_decap_bytes_total", "Bytes of the inner IP packets decapsulated.", &one(counters.decapsulated.bytes));
    let refused: Vec<(String, u64)> = counters
        .refused
        .iter()
        .map(|(refusal, count)| (format!("{{reason=\"{}\"}}", refusal.label()), *count))
        .collect();
    counter("lb_decap_refused_packets_total", "Tunnel packets dropped, by reason.", &refused);
    text
}

#[cfg(test)]
mod tests {
    use lb_common::decap::{Refusal, Traffic};

    use super::*;
    use crate::decapsulator::Counters;

    #[test]
    fn every_counter_is_printed_with_its_labels() {
        let pinned = Pinned {
            vips: vec!["203.0.113.10".parse().unwrap(), "2001:db8:100::10".parse().unwrap()],
            local: vec!["198.18.1.11".parse().unwrap()],
            counters: Counters {
                decapsulated: Traffic { packets: 3, bytes: 252 },
                refused: Refusal::ALL.iter().map(|&refusal| (refusal, refusal as u64 + 1)).collect(),
            },
        };
        let text = text(&pinned);
        assert!(
            text.starts_with(
                "# lb-decap VIPs: 203.0.113.10 2001:db8:100::10\n# lb-decap local addresses: 198.18.1.11\n"
            )
        );
        assert!(text.contains("\nlb_decap_packets_total 3\n"), "{text}");
        assert!(text.contains("\nlb_decap_bytes_total 252\n"), "{text}");
        assert!(text.contains("\nlb_decap_refused_packets_total{reason=\"not_local\"} 1\n"), "{text}");
        assert!(text.contains("\nlb_decap_refused_packets_total{reason=\"malformed_inner\"} 6\n"), "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 3);
    }
}
