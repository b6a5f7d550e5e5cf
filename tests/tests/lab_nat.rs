//! NAT, Full-NAT and the IP tunnel end to end: NAT and Full-NAT through a two-armed
//! director between a client's segment and the real servers' segment, the tunnel to
//! real servers set up with `realserver.sh start --tun`; real TCP (curl, kept-alive
//! connections, a 4 MiB download and upload) and UDP through it, over IPv4 and IPv6.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Result, ensure};
use lb_tests::{
    lab::{self, Arms, HTTP_PORT, LOCAL4, LOCAL6, Lab, UDP_PORT, VIP4, VIP6},
    prometheus::Samples,
};

/// One lab at a time: they would only compete for the two CPUs.
static ONE_LAB: Mutex<()> = Mutex::new(());

const WEIGHTS: [u32; 3] = [1, 2, 3];
const VIPS: [IpAddr; 2] = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];

fn lab(arms: Arms) -> (std::sync::MutexGuard<'static, ()>, Lab) {
    let guard = ONE_LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    (guard, Lab::start_with(3, arms).expect("building the lab"))
}

fn url(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(v4) => format!("http://{v4}:{HTTP_PORT}/"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{HTTP_PORT}/"),
    }
}

/// How many of `answers` each real server gave, in the lab's order.
fn spread<'a>(lab: &Lab, answers: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for answer in answers {
        *counts.entry(answer).or_default() += 1;
    }
    lab.reals.iter().map(|real| counts.get(real.name.as_str()).copied().unwrap_or(0)).collect()
}

/// What every method must do through a two-armed director: spread new TCP and UDP
/// flows by weight, carry a large reply intact, and keep established connections on
/// their real servers across a reload. Returns the peers the real servers saw (and
/// the port they were asked on), and the agent's metrics at the end.
fn serves_both_ways(lab: &Lab, forwarding: &str, extra: &str) -> Result<(Vec<String>, Samples)> {
    let agent = lab.start_agent(&lab.config_for(forwarding, "wrr", &WEIGHTS, extra))?;
    for vip in VIPS {
        let replies = lab.http_get(&url(vip), 300)?;
        ensure!(replies.iter().all(|reply| reply.status == 200), "{vip}: {replies:?}");
        let names = replies.iter().map(|reply| reply.body.as_str());
        assert_eq!(spread(lab, names), vec![50, 100, 150], "{forwarding} {vip}: wrr 1:2:3 over 300 connections");

        let mut answers = Vec::new();
        for port in 20000..20060 {
            answers.push(lab.udp_query(port, SocketAddr::new(vip, UDP_PORT))?);
        }
        assert_eq!(spread(lab, answers.iter().map(String::as_str)), vec![10, 20, 30], "{forwarding} {vip}: UDP");

        let big = lab.fetch(vip, "/big")?;
        ensure!(big == lab::big_file(), "{forwarding} {vip}: /big arrived with {} bytes, or changed", big.len());
        lab.upload(vip, &format!("{forwarding}-{vip}"), &big)?;
    }

    let mut kept = Vec::new();
    for vip in VIPS {
        for _ in 0..6 {
            let mut connection = lab.connect(SocketAddr::new(vip, HTTP_PORT))?;
            let first = connection.get()?;
            kept.push((connection, first));
        }
    }
    let outcome = agent.reload(&lab.config_for(forwarding, "wrr", &[0, 1, 0], extra))?;
    ensure!(outcome.contains("reloaded:"), "{outcome}");
    for (connection, first) in &mut kept {
        assert_eq!(&connection.get()?, first, "{forwarding}: an established connection stays on its real server");
    }
    let replies = lab.http_get(&url(IpAddr::V4(VIP4)), 10)?;
    let names = replies.iter().map(|reply| reply.body.as_str());
    assert_eq!(spread(lab, names), vec![0, 10, 0], "{forwarding}: new connections follow the reload");

    let metrics = Samples::parse(&lab.metrics()?)?;
    if forwarding != "tun" {
        for service in ["web4", "web6"] {
            let out = metrics.value("lb_service_out_packets_total", &[("service", service)])?;
            ensure!(out > 600.0, "{forwarding} {service}: replies came back through the director ({out})");
        }
    }
    assert_eq!(metrics.value("lb_dropped_packets_total", &[("reason", "no_route")])?, 0.0);
    forgets_idle_connections(lab, &agent, forwarding, extra)?;
    let peers = VIPS.iter().map(|vip| lab.fetch(*vip, "/peer")).collect::<Result<Vec<_>>>()?;
    Ok((peers.into_iter().map(|peer| String::from_utf8_lossy(&peer).into_owned()).collect(), metrics))
}

/// Once the traffic stops, and a reload has set timeouts of a second (at once), the
/// agent's ager empties the connection table, and the metrics say so.
fn forgets_idle_connections(lab: &Lab, agent: &lab::Agent, forwarding: &str, extra: &str) -> Result<()> {
    let mut metrics = Samples::parse(&lab.metrics()?)?;
    lab::wait_until(Duration::from_secs(10), "the ager to walk the connection table", || {
        metrics = Samples::parse(&lab.metrics()?)?;
        Ok(metrics.value("lb_connection_table_entries", &[])? > 0.0)
    })?;
    assert_eq!(metrics.value("lb_connections_expired_total", &[])?, 0.0, "{forwarding}: none idle for long yet");
    let opened: f64 = metrics.all("lb_service_connections_total").map(|(_, value)| value).sum();
    let config = lab.config_for(forwarding, "wrr", &[0, 1, 0], extra);
    let outcome = agent.reload(&format!("timeouts: {{ tcp: 1, tcp_fin: 1, udp: 1 }}\n{config}"))?;
    ensure!(outcome.contains("reloaded:"), "{outcome}");
    let mut expired = 0.0;
    lab::wait_until(Duration::from_secs(20), "the ager to empty the connection table", || {
        let metrics = Samples::parse(&lab.metrics()?)?;
        expired = metrics.value("lb_connections_expired_total", &[])?;
        Ok(metrics.value("lb_connection_table_entries", &[])? == 0.0)
    })?;
    ensure!(expired >= opened, "{forwarding}: {expired} connections expired of the {opened} opened");
    Ok(())
}

#[test]
fn nat_through_a_two_armed_director_maps_ports_and_real_servers_see_the_client() -> Result<()> {
    let (_one, lab) = lab(Arms::Two { gateway: true });
    // A real server that answered ARP on the client's link too, before its ARP
    // sysctls were set: the routing table says it is on eth1, so that entry must not
    // win.
    let stale = ["ip", "neigh", "replace", "198.18.21.11", "lladdr", "02:00:00:00:0e:0e", "dev", "eth0"];
    lab.on_director(&[stale.as_slice(), &["nud", "permanent"]].concat())?;
    let (peers, _) = serves_both_ways(&lab, "nat", "")?;
    let client = [format!("{} 8080", lab.client.ipv4), format!("{} 8080", lab.client.ipv6)];
    assert_eq!(peers, client, "NAT keeps the client's address, and maps port 80 to 8080");
    Ok(())
}

#[test]
fn full_nat_reaches_real_servers_without_a_route_to_the_client() -> Result<()> {
    let (_one, lab) = lab(Arms::Two { gateway: false });
    let unreachable = lab.reals[0].netns.command("ip").args(["route", "get", &lab.client.ipv4.to_string()]).output()?;
    assert!(!unreachable.status.success(), "the real servers have no route to the client");
    let extra = format!("    local_addresses: [{LOCAL4}, \"{LOCAL6}\"]\n");
    let (peers, _) = serves_both_ways(&lab, "fnat", &extra)?;
    let locals = [format!("{LOCAL4} 8080"), format!("{LOCAL6} 8080")];
    assert_eq!(peers, locals, "the real servers see a local address, on the mapped port");
    Ok(())
}

#[test]
fn tun_real_servers_decapsulate_without_a_tunnel_device_and_uploads_find_the_path_mtu() -> Result<()> {
    let (_one, lab) = lab(Arms::Tunnel);
    let (peers, metrics) = serves_both_ways(&lab, "tun", "")?;
    let client = [format!("{} 80", lab.client.ipv4), format!("{} 80", lab.client.ipv6)];
    assert_eq!(peers, client, "the real servers see the client, as in LVS-DR");
    // Full-sized segments of the uploads did not fit the link once encapsulated: the
    // client was told, and lowered its segment size.
    let too_big = metrics.value("lb_dropped_packets_total", &[("reason", "too_big")])?;
    ensure!(too_big >= 2.0, "path-MTU discovery was needed for both families ({too_big})");
    Ok(())
}
