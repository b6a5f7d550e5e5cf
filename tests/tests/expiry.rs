//! Connection ageing through `BPF_PROG_TEST_RUN`: the real `lb_ingress` stamps and
//! marks the entries as packets pass, the agent's own ager removes the idle ones, and
//! what the data path does next shows what is left: a Full-NAT local port is taken
//! again, a removed connection's packets find nothing. Replies are run inside a
//! namespace whose routes lead back to the client (`bed::Routes`).

use std::{collections::BTreeMap, net::SocketAddr, thread::sleep, time::Duration};

use lb_agent::director::View;
use lb_agent::expiry::Sweep;
use lb_common::stats::Reason;
use lb_tests::{
    bed::{self, AgedBed, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packet::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";
const REAL4: &str = "198.18.21.11";
const REAL6: &str = "2001:db8:21::11";
const LOCAL4: &str = "198.18.21.100";

/// Longer than a timeout of 1 s by more than a second of either clock's rounding.
const PAST_ONE_SECOND: Duration = Duration::from_millis(3100);

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// The UDP source port of an IPv4 frame.
fn source_port(frame: &[u8]) -> u16 {
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    u16::from_be_bytes([frame[l4], frame[l4 + 1]])
}

#[test]
fn full_nat_local_ports_return_when_their_connections_expire() {
    let dns = format!(
        "  - {{ name: dns, vip: {VIP4}, port: 53, protocol: udp, scheduler: rr, forwarding: fnat, \
         local_addresses: [{LOCAL4}], local_port_range: [40000, 40001], reals: [{{ address: {REAL4}, port: 5353 }}] }}\n"
    );
    let one_second = "timeouts: { udp: 1 }\n";
    let mut bed = AgedBed::new(one_second, &dns);
    let flow = |port| packet::udp_frame(sock("198.18.1.1", port), sock(VIP4, 53), b"query");
    let (a, b, c) = (flow(50000), flow(50001), flow(50002));
    let mut ports = Vec::new();
    for query in [&a, &b] {
        let (verdict, out) = bed.run(query);
        assert_eq!(verdict, XDP_TX);
        ports.push(source_port(&out));
    }
    let (port_a, port_b) = (ports[0], ports[1]);
    ports.sort();
    assert_eq!(ports, [40000, 40001], "two flows, both local ports");
    assert_eq!(bed.run(&c), (XDP_DROP, c.clone()), "a third finds none free");
    assert_eq!(bed.reason(Reason::LocalPortsExhausted), 1);
    assert_eq!(
        bed.expire(),
        Sweep { entries: 4, expired: 0, templates_expired: 0, ..Sweep::default() },
        "nothing has been idle yet"
    );

    sleep(PAST_ONE_SECOND - Duration::from_millis(600));
    // A's real server answers: its reply entry is fresh, and so is A.
    let answer = packet::udp_frame(sock(REAL4, 5353), sock(LOCAL4, port_a), b"answer");
    assert_eq!(bed.run(&answer).0, XDP_REDIRECT);
    sleep(Duration::from_millis(600));

    bed.reconfigure("", &dns);
    assert_eq!(
        bed.expire(),
        Sweep { entries: 4, expired: 0, templates_expired: 0, ..Sweep::default() },
        "IPVS's udp timeout (300 s) once reloaded without one"
    );
    bed.reconfigure(one_second, &dns);
    assert_eq!(
        bed.expire(),
        Sweep { entries: 4, expired: 1, templates_expired: 0, ..Sweep::default() },
        "a reload's timeouts count at once: B goes"
    );
    let (verdict, out) = bed.run(&a);
    assert_eq!((verdict, source_port(&out)), (XDP_TX, port_a), "A keeps its connection and its port");
    let (verdict, out) = bed.run(&c);
    assert_eq!((verdict, source_port(&out)), (XDP_TX, port_b), "B's port is free again, and C takes it");
    assert_eq!(bed.reason(Reason::LocalPortsExhausted), 1);
    assert_eq!(
        bed.expire(),
        Sweep { entries: 4, expired: 0, templates_expired: 0, ..Sweep::default() },
        "A's and C's entries"
    );
    assert_eq!((bed.expiry_counts().expired(), bed.expiry_counts().entries()), (1, 4), "what the metrics read");
}

/// (active, inactive) by "service real-address".
type Counts = BTreeMap<String, (u64, u64)>;

/// The state of each connection the director lists, by client port, and the
/// (active, inactive) counts of each real server, by service and address.
fn states(bed: &AgedBed) -> (BTreeMap<(String, u16), String>, Counts) {
    let listed = bed.director.connections().unwrap();
    let states = listed.into_iter().map(|c| ((c.source.ip().to_string(), c.source.port()), c.state)).collect();
    let services = bed.director.status(View::Serving).unwrap();
    let counts = services
        .iter()
        .flat_map(|s| s.reals.iter().map(|r| (format!("{} {}", s.name, r.address), (r.active_conns, r.inactive_conns))))
        .collect();
    (states, counts)
}

#[test]
fn nat_connections_follow_ipvs_full_state_table_and_age_by_state() {
    let mut services = String::new();
    for (name, vip, real) in [("web4", VIP4, REAL4), ("web6", VIP6, REAL6)] {
        services += &format!(
            "  - {{ name: {name}, vip: \"{vip}\", port: 80, protocol: tcp, scheduler: rr, forwarding: nat, \
             reals: [{{ address: \"{real}\", port: 8080 }}] }}\n"
        );
    }
    // udp: 1 and tcp_fin: 1 too, so a TCP connection aged by the wrong timeout would show.
    let mut bed = AgedBed::new("timeouts: { tcp: 900, tcp_fin: 1, udp: 1, time_wait: 1, close: 1 }\n", &services);
    let families = [("198.18.1.1", VIP4, REAL4), ("2001:db8:1::1", VIP6, REAL6)];
    let request = |client, vip, port, flags| packet::tcp_frame(sock(client, port), sock(vip, 80), flags, b"");
    let reply = |client, real, port, flags| packet::tcp_frame(sock(real, 8080), sock(client, port), flags, b"");
    let mut expected = BTreeMap::new();
    for (client, vip, real) in families {
        let state = |port: u16, name: &str| ((client.to_owned(), port), name.to_owned());
        // A segment from the client (through to the real server) or back.
        let send = |bed: &AgedBed, from_client: bool, port, flags| {
            let (frame, verdict) = if from_client {
                (request(client, vip, port, flags), XDP_TX)
            } else {
                (reply(client, real, port, flags), XDP_REDIRECT)
            };
            assert_eq!(bed.run(&frame).0, verdict, "{vip} {port} {flags:#x}");
        };
        for port in [51000, 51001, 51002, 51003, 51004] {
            send(&bed, true, port, TCP_SYN);
        }
        assert_eq!(states(&bed).0[&(client.to_owned(), 51000)], "SYN_RECV", "a SYN from NONE");
        for port in [51000, 51001, 51002, 51003] {
            send(&bed, false, port, TCP_SYN | TCP_ACK);
            send(&bed, true, port, TCP_ACK);
        }
        // 51000: the client closes first, 51001 the real server; 51002 is reset;
        // 51003 carries on; 51004 never got its SYN-ACK.
        let steps: [(u16, bool, u8, &str); 6] = [
            (51000, true, TCP_FIN | TCP_ACK, "CLOSE_WAIT"),
            (51000, false, TCP_FIN | TCP_ACK, "TIME_WAIT"),
            (51001, false, TCP_FIN | TCP_ACK, "FIN_WAIT"),
            (51001, true, TCP_FIN | TCP_ACK, "TIME_WAIT"),
            (51002, true, TCP_RST, "CLOSE"),
            (51003, false, TCP_ACK, "ESTABLISHED"),
        ];
        for (port, from_client, flags, after) in steps {
            send(&bed, from_client, port, flags);
            assert_eq!(states(&bed).0[&(client.to_owned(), port)], after, "{vip} {port} {flags:#x}");
        }
        expected.extend([
            state(51000, "TIME_WAIT"),
            state(51001, "TIME_WAIT"),
            state(51002, "CLOSE"),
            state(51003, "ESTABLISHED"),
            state(51004, "SYN_RECV"),
        ]);
    }
    let (listed, counts) = states(&bed);
    assert_eq!(listed, expected);
    let held = BTreeMap::from([(format!("web4 {REAL4}"), (2, 3)), (format!("web6 {REAL6}"), (2, 3))]);
    assert_eq!(counts, held, "ESTABLISHED and SYN_RECV are active, the closing ones inactive");
    assert_eq!(bed.expire(), Sweep { entries: 20, expired: 0, templates_expired: 0, ..Sweep::default() });
    assert_eq!(states(&bed).1, held, "the walk finds what the data path counted");

    sleep(PAST_ONE_SECOND);
    assert_eq!(
        bed.expire(),
        Sweep { entries: 20, expired: 6, templates_expired: 0, ..Sweep::default() },
        "TIME_WAIT and CLOSE, by their timeouts"
    );
    let held = BTreeMap::from([(format!("web4 {REAL4}"), (2, 0)), (format!("web6 {REAL6}"), (2, 0))]);
    assert_eq!(states(&bed).1, held, "what expired is no longer counted");
    for (client, vip, real) in families {
        for port in [51000, 51001, 51002] {
            let ack = request(client, vip, port, TCP_ACK);
            assert_eq!(bed.run(&ack).0, XDP_DROP, "{vip} {port}: the client's entry is gone");
            let late = reply(client, real, port, TCP_ACK);
            assert_eq!(bed.run(&late), (XDP_PASS, late.clone()), "{vip} {port}: and the reply's");
        }
        assert_eq!(bed.run(&request(client, vip, 51003, TCP_ACK)).0, XDP_TX, "{vip}: the open one stays");
        assert_eq!(bed.run(&reply(client, real, 51003, TCP_ACK)).0, XDP_REDIRECT, "{vip}: both ways");
    }
    assert_eq!(bed.reason(Reason::NoConnection), 6);
    assert_eq!(bed.reason(Reason::NotAService), 6);
    assert_eq!(bed.expire(), Sweep { entries: 8, expired: 0, templates_expired: 0, ..Sweep::default() });
}

#[test]
fn direct_routing_follows_ipvs_input_only_table_and_counts_survive_eviction() {
    let services = bed::service("web", VIP4, 80, "tcp", "rr", &[(REAL4, 1)])
        + &bed::service("dns", VIP4, 53, "udp", "rr", &[(REAL4, 1)]);
    let mut bed = AgedBed::new("timeouts: { tcp_fin: 1, close: 1 }\n", &services);
    let client = "198.18.1.1";
    let segment = |port, flags| packet::tcp_frame(sock(client, port), sock(VIP4, 80), flags, b"");
    // SYN → SYN_RECV, ACK → ESTABLISHED, FIN → FIN_WAIT, RST → CLOSE.
    let steps: [(u16, u8, &str); 7] = [
        (52000, TCP_SYN, "SYN_RECV"),
        (52000, TCP_ACK, "ESTABLISHED"),
        (52000, TCP_FIN | TCP_ACK, "FIN_WAIT"),
        (52000, TCP_ACK, "FIN_WAIT"),
        (52001, TCP_SYN, "SYN_RECV"),
        (52001, TCP_ACK, "ESTABLISHED"),
        (52001, TCP_RST, "CLOSE"),
    ];
    for (port, flags, after) in steps {
        assert_eq!(bed.run(&segment(port, flags)).0, XDP_TX, "{port} {flags:#x}");
        assert_eq!(states(&bed).0[&(client.to_owned(), port)], after, "{port} {flags:#x}");
    }
    for port in [52002, 52003] {
        assert_eq!(bed.run(&segment(port, TCP_SYN)).0, XDP_TX);
        assert_eq!(bed.run(&segment(port, TCP_ACK)).0, XDP_TX);
    }
    let query = packet::udp_frame(sock(client, 5353), sock(VIP4, 53), b"query");
    assert_eq!(bed.run(&query).0, XDP_TX);
    assert_eq!(states(&bed).0[&(client.to_owned(), 5353)], "UDP");
    let web = format!("web {REAL4}");
    let dns = format!("dns {REAL4}");
    assert_eq!(states(&bed).1[&web], (2, 2), "established active; FIN_WAIT and CLOSE inactive");
    assert_eq!(states(&bed).1[&dns], (0, 1), "UDP is inactive");

    // What the data path counted but the table no longer holds (an eviction tells
    // nobody) is taken back by the next walk.
    let mut table = bed.director.dataplane().conn_table();
    assert!(table.remove(&bed::tcp_flow_key(sock(client, 52002), sock(VIP4, 80))).unwrap());
    assert_eq!(states(&bed).1[&web], (2, 2), "not yet seen");
    assert_eq!(bed.expire(), Sweep { entries: 4, expired: 0, templates_expired: 0, ..Sweep::default() });
    assert_eq!(states(&bed).1[&web], (1, 2), "reconciled with the table");

    sleep(PAST_ONE_SECOND);
    assert_eq!(
        bed.expire(),
        Sweep { entries: 4, expired: 2, templates_expired: 0, ..Sweep::default() },
        "FIN_WAIT by tcp_fin, CLOSE by close"
    );
    assert_eq!((states(&bed).1[&web], states(&bed).1[&dns]), ((1, 0), (0, 1)), "52003, and the UDP flow");
}
