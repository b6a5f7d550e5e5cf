//! Persistence and firewall-mark services through `BPF_PROG_TEST_RUN`, with the agent's
//! own ager: a client's network stays on one real server for the timeout and while its
//! connections last, then moves; a port-0 persistent service and a firewall-mark
//! service keep a client's ports together; quiesced and removed real servers follow
//! IPVS's `expire_quiescent_template` and `expire_nodest_conn`.

use std::{net::SocketAddr, thread::sleep, time::Duration};

use lb_agent::director::View;
use lb_common::stats::Reason;
use lb_tests::{
    bed::{self, AgedBed, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{self, TCP_ACK, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";
const REALS4: [&str; 3] = ["198.18.1.11", "198.18.1.12", "198.18.1.13"];
const REALS6: [&str; 2] = ["2001:db8:1::11", "2001:db8:1::12"];

/// Longer than a timeout of 1 s by more than a second of either clock's rounding.
const PAST_ONE_SECOND: Duration = Duration::from_millis(3100);

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn syn(client: SocketAddr, vip: SocketAddr) -> Vec<u8> {
    packet::tcp_frame(client, vip, TCP_SYN, b"")
}

/// The real server a frame went to, by the destination MAC it left with.
fn sent_to(bed: &AgedBed, frame: &[u8]) -> &'static str {
    let (verdict, out) = bed.run(frame);
    assert_eq!(verdict, XDP_TX, "expected the frame to be forwarded");
    bed::real_at(&out, REALS4.iter().chain(&REALS6))
}

/// A plain service of `VIP4`, rr over `reals`, with the extra `options` (YAML fields).
fn web(port: u16, options: &str, reals: &[&str]) -> String {
    let reals: Vec<String> = reals.iter().map(|real| format!("{{ address: {real} }}")).collect();
    format!(
        "  - {{ name: web, vip: {VIP4}, port: {port}, protocol: tcp, scheduler: rr, {options} reals: [{}] }}\n",
        reals.join(", ")
    )
}

#[test]
fn a_client_network_keeps_its_real_server_for_the_timeout_then_moves() {
    let services = web(80, "persistence: { timeout: 2, netmask: 255.255.255.0 },", &REALS4);
    let mut bed = AgedBed::new("timeouts: { syn_recv: 1 }\n", &services);
    let vip = sock(VIP4, 80);
    let first = sent_to(&bed, &syn(sock("198.18.1.1", 40000), vip));
    for port in 40001..40020 {
        assert_eq!(sent_to(&bed, &syn(sock("198.18.1.1", port), vip)), first, "rr alone would move port {port}");
    }
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.77", 40000), vip)), first, "the same /24");
    let other = sent_to(&bed, &syn(sock("198.18.2.1", 40000), vip));
    assert_ne!(other, first, "another /24 is scheduled: rr's next");
    // Nothing is idle long enough yet: the templates and their connections stay.
    assert_eq!(bed.expire().templates_expired, 0);
    sleep(PAST_ONE_SECOND + Duration::from_secs(1));
    let sweep = bed.expire();
    assert_eq!((sweep.expired, sweep.templates_expired), (22, 2), "the connections, then their templates");
    let moved = sent_to(&bed, &syn(sock("198.18.1.1", 40100), vip));
    assert!(moved != first && moved != other, "scheduled afresh: rr's third, not {first} or {other}");
}

#[test]
fn a_template_lives_while_its_connections_do() {
    let services = web(80, "persistence: { timeout: 1 },", &REALS4);
    let mut bed = AgedBed::new("", &services);
    let (client, vip) = (sock("198.18.1.1", 40000), sock(VIP4, 80));
    let first = sent_to(&bed, &syn(client, vip));
    assert_eq!(sent_to(&bed, &packet::tcp_frame(client, vip, TCP_ACK, b"")), first);
    sleep(PAST_ONE_SECOND);
    assert_eq!(bed.expire().templates_expired, 0, "past its timeout, but its established connection remains");
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.1", 40001), vip)), first, "and it still holds the client");
    // Its connections end (their timeouts shortened): it goes with them.
    bed.reconfigure("timeouts: { tcp: 1, syn_recv: 1 }\n", &services);
    sleep(PAST_ONE_SECOND);
    let sweep = bed.expire();
    assert_eq!((sweep.expired, sweep.templates_expired), (2, 1));
    assert_ne!(sent_to(&bed, &syn(sock("198.18.1.1", 40002), vip)), first, "scheduled afresh");
}

#[test]
fn a_port_zero_persistent_service_keeps_every_port_of_a_client_together() {
    let services = web(0, "persistence: { timeout: 600 },", &REALS4);
    let bed = AgedBed::new("", &services);
    let mut chosen = Vec::new();
    for client in ["198.18.1.1", "198.18.1.2", "198.18.1.3"] {
        let real = sent_to(&bed, &syn(sock(client, 40000), sock(VIP4, 80)));
        for port in [443, 8080, 22] {
            assert_eq!(sent_to(&bed, &syn(sock(client, 40000), sock(VIP4, port))), real, "{client} to port {port}");
        }
        chosen.push(real);
    }
    chosen.sort();
    assert_eq!(chosen, REALS4, "each client scheduled once, by rr");
}

fn shop(options: &str) -> String {
    format!(
        "  - name: shop
    fwmark: 11
    match:
      - {{ vip: {VIP4}, protocol: tcp, ports: [80, 443] }}
      - {{ vip: \"{VIP6}\", protocol: tcp, ports: [80, 443] }}
    scheduler: rr
{options}    reals:
      - {{ address: {} }}
      - {{ address: {} }}
      - {{ address: \"{}\" }}
      - {{ address: \"{}\" }}
",
        REALS4[0], REALS4[1], REALS6[0], REALS6[1]
    )
}

#[test]
fn a_firewall_mark_service_is_one_scheduler_over_every_vip_and_port_it_matches() {
    let bed = AgedBed::new("", &shop(""));
    // rr over both ports: one sequence, one turn after the other.
    let http = sent_to(&bed, &syn(sock("198.18.1.1", 40000), sock(VIP4, 80)));
    let https = sent_to(&bed, &syn(sock("198.18.1.1", 40001), sock(VIP4, 443)));
    assert_ne!(http, https, "one rr turn each, whichever port");
    assert!(REALS4.contains(&http) && REALS4.contains(&https), "IPv4 clients go to the IPv4 real servers");
    let six = sent_to(&bed, &syn(sock("2001:db8:1::1", 40000), sock(VIP6, 443)));
    assert!(REALS6.contains(&six), "IPv6 clients to the IPv6 ones");
    let other_port = syn(sock("198.18.1.1", 40002), sock(VIP4, 22));
    assert_eq!(bed.run(&other_port), (XDP_PASS, other_port.clone()), "port 22 is not matched");
    assert_eq!(bed.reason(Reason::NotAService), 1);
    let status = bed.director.status(View::Serving).unwrap();
    assert_eq!((status[0].fwmark, status[0].stats.conns), (Some(11), 3), "one service counts them all");
}

#[test]
fn a_persistent_firewall_mark_service_keeps_a_client_s_http_and_https_together() {
    let bed = AgedBed::new("", &shop("    persistence: { timeout: 600, netmask: 64 }\n"));
    let mut used = Vec::new();
    for client in ["198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.4"] {
        let real = sent_to(&bed, &syn(sock(client, 40000), sock(VIP4, 80)));
        for port in 40001..40004 {
            assert_eq!(sent_to(&bed, &syn(sock(client, port), sock(VIP4, 443))), real, "{client}'s HTTPS");
            assert_eq!(sent_to(&bed, &syn(sock(client, port), sock(VIP4, 80))), real, "{client}'s HTTP");
        }
        used.push(real);
    }
    used.sort();
    used.dedup();
    assert_eq!(used, REALS4[..2], "clients spread over both IPv4 real servers");
    // IPv6 clients by their /64.
    let six = sent_to(&bed, &syn(sock("2001:db8:1::1", 40000), sock(VIP6, 443)));
    assert_eq!(sent_to(&bed, &syn(sock("2001:db8:1::99", 40000), sock(VIP6, 80))), six, "the same /64");
}

#[test]
fn a_quiesced_real_server_keeps_its_templates_unless_the_service_expires_them() {
    let quiesced = |options: &str| {
        format!(
            "  - {{ name: web, vip: {VIP4}, port: 80, protocol: tcp, scheduler: rr, {options} reals: [\
             {{ address: {}, weight: 0 }}, {{ address: {} }}] }}\n",
            REALS4[0], REALS4[1]
        )
    };
    let mut bed = AgedBed::new("", &web(80, "persistence: { timeout: 600 },", &REALS4[..2]));
    let vip = sock(VIP4, 80);
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.1", 40000), vip)), REALS4[0]);
    bed.reconfigure("", &quiesced("persistence: { timeout: 600 },"));
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.1", 40001), vip)), REALS4[0], "IPVS's default: it still routes");
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.2", 40000), vip)), REALS4[1], "new clients avoid it");
    bed.reconfigure("", &quiesced("persistence: { timeout: 600 }, expire_quiescent_template: true,"));
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.1", 40002), vip)), REALS4[1], "void: scheduled afresh");
    bed.reconfigure("", &web(80, "persistence: { timeout: 600 }, expire_quiescent_template: true,", &REALS4[..2]));
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.1", 40003), vip)), REALS4[1], "the new template holds");
}

#[test]
fn a_removed_real_server_voids_its_templates_and_with_expire_nodest_conn_its_connections() {
    let options = "persistence: { timeout: 600 }, expire_nodest_conn: true,";
    let mut bed = AgedBed::new("", &web(80, options, &REALS4));
    let vip = sock(VIP4, 80);
    let clients: Vec<SocketAddr> = ["198.18.1.1", "198.18.1.2", "198.18.1.3"].map(|c| sock(c, 40000)).to_vec();
    let chosen: Vec<&str> = clients.iter().map(|&client| sent_to(&bed, &syn(client, vip))).collect();
    assert_eq!(chosen, REALS4);
    let ack = |client| packet::tcp_frame(client, vip, TCP_ACK, b"data");
    for &client in &clients {
        sent_to(&bed, &ack(client));
    }
    bed.reconfigure("", &web(80, options, &REALS4[1..]));
    // The connection to the removed one ends at its next packet, which opens nothing.
    let gone = ack(clients[0]);
    assert_eq!(bed.run(&gone), (XDP_DROP, gone.clone()));
    assert_eq!((bed.reason(Reason::NodestExpired), bed.reason(Reason::NoConnection)), (1, 1));
    assert_eq!(sent_to(&bed, &ack(clients[1])), REALS4[1], "the others go on");
    // Its template is void: the client's next connection is scheduled afresh.
    let again = sent_to(&bed, &syn(clients[0], vip));
    assert!(REALS4[1..].contains(&again), "rescheduled, to {again}");
    assert_eq!(sent_to(&bed, &syn(sock("198.18.1.2", 40001), vip)), REALS4[1], "other templates hold");

    // Without the option, the removed real server's connections go on to it.
    let mut bed = AgedBed::new("", &web(80, "", &REALS4));
    assert_eq!(sent_to(&bed, &syn(clients[0], vip)), REALS4[0]);
    bed.reconfigure("", &web(80, "", &REALS4[1..]));
    assert_eq!(sent_to(&bed, &ack(clients[0])), REALS4[0], "as today: removal keeps established connections");
    assert_eq!(bed.reason(Reason::NodestExpired), 0);
}
