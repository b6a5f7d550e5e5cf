//! `lb-decap status`: what a running `lb-decap` reports, in Prometheus' text format (so
//! operators read it as it is, and node_exporter's textfile collector takes it as it
//! is), and the socket another process asks it through.
//!
//! The socket is an abstract Unix socket, `@lb-decap`. Abstract names belong to a
//! network namespace, so every namespace's `lb-decap` has its own without a file
//! anywhere (several real servers in namespaces of one host keep apart, and `ip netns
//! exec` finds it), a second `lb-decap` in one namespace cannot start, and nothing is
//! left behind when a process is killed.

use std::{
    fmt::Write as _,
    io::{self, Read},
    net::IpAddr,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::decapsulator::Snapshot;

const SOCKET_NAME: &[u8] = b"lb-decap";

/// The status socket of this network namespace, for the `lb-decap` that runs in it.
pub fn bind() -> Result<tokio::net::UnixListener> {
    let address = SocketAddr::from_abstract_name(SOCKET_NAME)?;
    match UnixListener::bind_addr(&address) {
        Ok(listener) => {
            listener.set_nonblocking(true)?;
            Ok(tokio::net::UnixListener::from_std(listener)?)
        }
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            bail!("another lb-decap runs in this network namespace (it holds the status socket @lb-decap)")
        }
        Err(err) => Err(err).context("binding the status socket @lb-decap"),
    }
}

/// What the `lb-decap` of this network namespace reports.
pub fn fetch() -> Result<String> {
    let address = SocketAddr::from_abstract_name(SOCKET_NAME)?;
    let mut stream = UnixStream::connect_addr(&address)
        .context("no lb-decap runs in this network namespace (nothing listens on @lb-decap)")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text).context("reading lb-decap's status")?;
    Ok(text)
}

pub fn text(snapshot: &Snapshot) -> String {
    let list = |addresses: &[IpAddr]| addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(" ");
    let mut text = format!(
        "# lb-decap interfaces: {}\n# lb-decap VIPs: {}\n# lb-decap local addresses: {}\n",
        snapshot.interfaces.join(" "),
        list(&snapshot.vips),
        list(&snapshot.local)
    );
    let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    let counters = &snapshot.counters;
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
        let snapshot = Snapshot {
            interfaces: vec!["eth0".into(), "eth1".into()],
            vips: vec!["203.0.113.10".parse().unwrap(), "2001:db8:100::10".parse().unwrap()],
            local: vec!["198.18.1.11".parse().unwrap()],
            counters: Counters {
                decapsulated: Traffic { packets: 3, bytes: 252 },
                refused: Refusal::ALL.iter().map(|&refusal| (refusal, refusal as u64 + 1)).collect(),
            },
        };
        let text = text(&snapshot);
        assert!(
            text.starts_with(
                "# lb-decap interfaces: eth0 eth1\n# lb-decap VIPs: 203.0.113.10 2001:db8:100::10\n\
                 # lb-decap local addresses: 198.18.1.11\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nlb_decap_packets_total 3\n"), "{text}");
        assert!(text.contains("\nlb_decap_bytes_total 252\n"), "{text}");
        assert!(text.contains("\nlb_decap_refused_packets_total{reason=\"not_local\"} 1\n"), "{text}");
        assert!(text.contains("\nlb_decap_refused_packets_total{reason=\"malformed_inner\"} 6\n"), "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 3);
    }
}
