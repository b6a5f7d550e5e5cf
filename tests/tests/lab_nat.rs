//! NAT, Full-NAT and the IP tunnel end to end: NAT and Full-NAT through a two-armed
//! director between a client's segment and the real servers' segment, the tunnel to
//! real servers set up with `realserver.sh start --tun`; real TCP (curl, kept-alive
//! connections, a 4 MiB download and upload) and UDP through it, over IPv4 and IPv6;
//! Full-NAT's TOA read from the segments a real server receives.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use lb_tests::{
    capture::Capture,
    lab::{self, Arms, HTTP_PORT, LOCAL4, LOCAL6, Lab, MAPPED_HTTP_PORT, UDP_PORT, VIP4, VIP6},
    packet::{self, Received},
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
    let every_state = "tcp: 1, tcp_fin: 1, udp: 1, syn_sent: 1, syn_recv: 1, time_wait: 1, close: 1, close_wait: 1, \
                       last_ack: 1, listen: 1, synack: 1";
    let outcome = agent.reload(&format!("timeouts: {{ {every_state} }}\n{config}"))?;
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

/// Full-NAT with TOA through a two-armed director: the real server (no route to the
/// client) serves from the local address, as nginx's `$remote_addr` shows, and reads
/// the client's address and port from the TOA option of the segments it receives, as
/// the `toa` kernel module would: in the ACK that completes the handshake and the first
/// data segment, and in no other. The MSS the client gets leaves room for the option in
/// a full-sized segment, which then fills the MTU exactly.
#[test]
fn full_nat_with_toa_tells_real_servers_the_client_in_a_tcp_option() -> Result<()> {
    let _one = ONE_LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = Lab::start_with(1, Arms::Two { gateway: false })?;
    let extra = format!("    local_addresses: [{LOCAL4}, \"{LOCAL6}\"]\n");
    let yaml = lab.config_for("fnat", "rr", &[1], &extra).replace("protocol: tcp\n", "protocol: tcp\n    toa: true\n");
    let _agent = lab.start_agent(&yaml)?;
    let real = &lab.reals[0];
    for vip in VIPS {
        let (client, local) = match vip {
            IpAddr::V4(_) => (IpAddr::V4(lab.client.ipv4), IpAddr::V4(LOCAL4)),
            IpAddr::V6(_) => (IpAddr::V6(lab.client.ipv6), IpAddr::V6(LOCAL6)),
        };
        let capture = Capture::open(&real.netns, "eth0")?;
        let replies = lab.http_get(&format!("{}peer", url(vip)), 1)?;
        assert_eq!(replies[0].body, format!("{local} {MAPPED_HTTP_PORT}"), "{vip}: nginx sees the local address");
        let (big, answer) = post_in_one_write(&lab, vip, 8000)?;
        assert!(answer.ends_with(&format!("{local} {MAPPED_HTTP_PORT}")), "{vip}: {answer}");

        // The client's segments as the real server received them, by connection.
        let mut connections: HashMap<u16, Vec<Received>> = HashMap::new();
        for segment in capture.received()?.iter().filter_map(|frame| packet::received_tcp(frame)) {
            if segment.src.ip() == local && segment.dst.port() == MAPPED_HTTP_PORT {
                connections.entry(segment.src.port()).or_default().push(segment);
            }
        }
        let mut clients = Vec::new();
        for segments in connections.values() {
            let carrying: Vec<Option<SocketAddr>> = segments.iter().map(|s| packet::toa_client(&s.options)).collect();
            let first_data = segments.iter().position(|s| s.payload_len > 0).context("no data segment")?;
            assert!(segments[0].flags & 0x02 != 0 && carrying[0].is_none(), "{vip}: the SYN, without TOA");
            assert!(carrying[1].is_some() && segments[1].payload_len == 0, "{vip}: the ACK of the handshake has it");
            assert_eq!(carrying[first_data], carrying[1], "{vip}: so has the first data segment");
            let later = carrying.iter().enumerate().filter(|(i, toa)| ![1, first_data].contains(i) && toa.is_some());
            assert_eq!(later.count(), 0, "{vip}: no other segment has it: {segments:?}");
            let client = carrying[1].unwrap();
            if client.port() == big {
                assert_eq!(segments[first_data].ip_len, 1500, "{vip}: a full-sized segment with TOA fills the MTU");
            }
            clients.push(client);
        }
        clients.sort();
        let mut expected = vec![SocketAddr::new(client, replies[0].local_port), SocketAddr::new(client, big)];
        expected.sort();
        assert_eq!(clients, expected, "{vip}: the real server reads each connection's client");
    }
    let metrics = Samples::parse(&lab.metrics()?)?;
    assert_eq!(metrics.value("lb_noted_packets_total", &[("reason", "toa_no_room")])?, 0.0);
    Ok(())
}

/// A POST of `len` bytes from the client to `vip`, written at once (so the first data
/// segment is full-sized); returns the client's port and the reply.
fn post_in_one_write(lab: &Lab, vip: IpAddr, len: usize) -> Result<(u16, String)> {
    let mut stream = lab.client.netns.within(|| {
        TcpStream::connect_timeout(&SocketAddr::new(vip, HTTP_PORT), Duration::from_secs(5)).context("connecting")
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = format!("POST /peer HTTP/1.1\r\nHost: lab\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    stream.write_all(&[head.as_bytes(), &vec![b'x'; len]].concat())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok((stream.local_addr()?.port(), answer))
}
