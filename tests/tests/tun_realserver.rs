//! End to end: a real server behind a tunnelling director, set up with
//! `deploy/realserver.sh start --tun`, answers tunnelled UDP queries of every tunnel
//! format straight back to the client from the VIP; lb-decap counts what it
//! decapsulated and refused; `realserver.sh stop` removes all of it.

use std::{net::IpAddr, thread::sleep, time::Duration};

use anyhow::{Result, ensure};
use lb_tests::{
    lab::{UDP_PORT, VIP4, VIP6, wait_until},
    prometheus::Samples,
    tunlab::TunLab,
};

const ANSWER_WAIT: Duration = Duration::from_secs(3);
const RP_FILTERS: [&str; 2] = ["net/ipv4/conf/all/rp_filter", "net/ipv4/conf/eth0/rp_filter"];

/// Bytes of the lab's inner queries: IP header, UDP header, "who are you?".
const QUERY4_LEN: f64 = 20.0 + 8.0 + 12.0;
const QUERY6_LEN: f64 = 40.0 + 8.0 + 12.0;

fn counter(status: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    Samples::parse(status)?.value(name, labels)
}

#[test]
fn a_tun_real_server_answers_tunnelled_queries_directly_and_stop_removes_everything() -> Result<()> {
    let mut lab = TunLab::start()?;
    let (vip4, vip6) = (IpAddr::V4(VIP4), IpAddr::V6(VIP6));
    let (real4, real6) = (IpAddr::V4(lab.real.ipv4), IpAddr::V6(lab.real.ipv6));
    // A strict reverse-path filter, which start must relax and stop restore.
    for setting in RP_FILTERS {
        lab.set_real_sysctl(setting, "1")?;
    }

    let started = lab.realserver(&["start", "--tun", &VIP4.to_string(), &VIP6.to_string()])?;
    ensure!(started.contains("lb-decap running"), "{started}");
    ensure!(lab.xdp_attached()?, "start returns once lb-decap is attached");
    for setting in RP_FILTERS {
        assert_eq!(lab.real_sysctl(setting)?, "2", "{setting} relaxed to loose");
    }
    lab.start_echo()?;

    // The four tunnel formats; the answer comes from the VIP to the client's socket.
    let formats = [
        ("IPv4 in IPv4", real4, vip4),
        ("IPv6 in IPv6", real6, vip6),
        ("IPv4 in IPv6", real6, vip4),
        ("IPv6 in IPv4", real4, vip6),
    ];
    for (i, (what, outer, vip)) in formats.into_iter().enumerate() {
        let port = 41000 + i as u16;
        // The first query may race lb-udp-echo binding its sockets.
        let mut answer = None;
        wait_until(Duration::from_secs(10), &format!("an answer to {what}"), || {
            answer = lab.tunnelled_query(outer, vip, port, ANSWER_WAIT).ok();
            Ok(answer.is_some())
        })?;
        let answer = answer.expect("waited for");
        assert_eq!(answer.text, lab.real.name, "{what}");
        assert_eq!(answer.from, (vip, UDP_PORT).into(), "{what}: the real server answers from the VIP");
    }
    let status = lab.decap_status()?;
    let decapsulated = counter(&status, "lb_decap_packets_total", &[])?;
    ensure!(decapsulated >= 4.0, "{status}");
    let bytes = counter(&status, "lb_decap_bytes_total", &[])?;
    // Retried queries (lb-udp-echo not bound yet) were decapsulated too: each is one
    // of the two sizes, and at least one of each format went through.
    ensure!(bytes >= 2.0 * QUERY4_LEN + 2.0 * QUERY6_LEN, "{status}");
    let refused = |reason: &str| counter(&status, "lb_decap_refused_packets_total", &[("reason", reason)]);
    assert_eq!(refused("not_local")?, 0.0, "{status}");

    // One more query, exactly counted.
    lab.tunnelled_query(real4, vip4, 41100, ANSWER_WAIT)?;
    let status = lab.decap_status()?;
    assert_eq!(counter(&status, "lb_decap_packets_total", &[])?, decapsulated + 1.0, "{status}");
    assert_eq!(counter(&status, "lb_decap_bytes_total", &[])?, bytes + QUERY4_LEN, "{status}");

    // A tunnel to an address the real server does not have reaches its eth0 (the
    // sender is told its MAC) and is refused, counted.
    let elsewhere = "198.18.2.50";
    lab.sender.netns.run(&["ip", "neigh", "replace", elsewhere, "lladdr", &lab.real.mac, "dev", "eth0"])?;
    assert!(lab.tunnelled_query(elsewhere.parse()?, vip4, 41101, Duration::from_millis(500)).is_err());
    let status = lab.decap_status()?;
    assert_eq!(counter(&status, "lb_decap_refused_packets_total", &[("reason", "not_local")])?, 1.0, "{status}");

    // Once the real server has the address (lb-decap follows address events), it works.
    lab.real.netns.run(&["ip", "addr", "add", &format!("{elsewhere}/24"), "dev", "eth0"])?;
    wait_until(Duration::from_secs(5), "lb-decap to learn the new address", || {
        Ok(lab
            .decap_status()?
            .lines()
            .any(|line| line.starts_with("# lb-decap local addresses:") && line.contains(elsewhere)))
    })?;
    let answer = lab.tunnelled_query(elsewhere.parse()?, vip4, 41102, ANSWER_WAIT)?;
    assert_eq!(answer.from, (vip4, UDP_PORT).into());

    let status = lab.realserver(&["status"])?;
    ensure!(status.contains("lb-decap: running"), "{status}");
    ensure!(status.contains("lb_decap_packets_total"), "{status}");

    // Stop undoes everything: lb-decap gone, XDP detached, the VIPs off the loopback,
    // the ARP and rp_filter settings back.
    lab.realserver(&["stop", "--tun", &VIP4.to_string(), &VIP6.to_string()])?;
    let processes = lab.real_processes()?;
    ensure!(!processes.iter().any(|comm| comm == "lb-decap"), "lb-decap still runs: {processes:?}");
    ensure!(!lab.xdp_attached()?, "XDP still attached");
    ensure!(lab.decap_status().is_err(), "lb-decap status finds no lb-decap");
    let lo = lab.real.netns.run(&["ip", "addr", "show", "dev", "lo"])?;
    let lo = String::from_utf8_lossy(&lo.stdout);
    ensure!(!lo.contains(&VIP4.to_string()) && !lo.contains(&VIP6.to_string()), "VIPs left on lo:\n{lo}");
    for setting in RP_FILTERS {
        assert_eq!(lab.real_sysctl(setting)?, "1", "{setting} restored");
    }
    assert_eq!(lab.real_sysctl("net/ipv4/conf/all/arp_ignore")?, "0");
    ensure!(std::fs::read_dir(&lab.dir)?.flatten().all(|entry| !entry.file_name().to_string_lossy().ends_with(".pid")));
    // Without lb-decap the kernel has nothing to take the tunnel apart with.
    sleep(Duration::from_millis(100));
    assert!(lab.tunnelled_query(real4, vip4, 41103, Duration::from_millis(500)).is_err());
    Ok(())
}
