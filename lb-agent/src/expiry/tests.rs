use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    conn::{CONN_REPLY, Conn, FlowKey},
    real::Forwarding,
    state::{ESTABLISHED, FIN_WAIT, SYN_RECV, TIME_WAIT},
};

use super::*;
use crate::director::address_bytes;

const CLIENT: &str = "198.18.1.1";
const VIP: &str = "203.0.113.10";
const REAL: &str = "198.18.21.11";
const LOCAL: &str = "198.18.21.100";

fn ip(address: &str) -> [u8; 16] {
    address_bytes(address.parse::<IpAddr>().unwrap()).0
}

fn key(src: (&str, u16), dst: (&str, u16), protocol: u8) -> FlowKey {
    let (src_ip, family) = address_bytes(src.0.parse::<IpAddr>().unwrap());
    FlowKey {
        src: src_ip,
        dst: ip(dst.0),
        src_port: src.1.to_be_bytes(),
        dst_port: dst.1.to_be_bytes(),
        protocol,
        family,
        _pad: [0; 2],
    }
}

/// An entry as the data path writes it; `src` and `dst` are the rewrite (zero: none).
fn entry(forwarding: Forwarding, flags: u8, last_seen: u32, src: (&str, u16), dst: (&str, u16)) -> Conn {
    let bytes = |address: &str| if address.is_empty() { [0; 16] } else { ip(address) };
    Conn {
        real: 7,
        service: 3,
        forwarding: forwarding as u8,
        flags,
        // Established, for TCP; a UDP connection's state is not looked at.
        state: ESTABLISHED,
        packets: 1,
        last_seen,
        src: bytes(src.0),
        dst: bytes(dst.0),
        src_port: src.1.to_be_bytes(),
        dst_port: dst.1.to_be_bytes(),
        address_delta: 0,
        port_delta: 0,
    }
}

/// A NAT connection's two entries, as `forward::nat::open` writes them, seen at
/// `client_seen` and `reply_seen`.
fn nat(protocol: u8, client_seen: u32, reply_seen: u32) -> [(FlowKey, Conn); 2] {
    [
        (key((CLIENT, 40000), (VIP, 80), protocol), entry(Forwarding::Nat, 0, client_seen, ("", 0), (REAL, 8080))),
        (
            key((REAL, 8080), (CLIENT, 40000), protocol),
            entry(Forwarding::Nat, CONN_REPLY, reply_seen, (VIP, 80), ("", 0)),
        ),
    ]
}

/// A Full-NAT connection's two entries, as `forward::fnat::open` writes them.
fn fnat(protocol: u8, client_seen: u32, reply_seen: u32) -> [(FlowKey, Conn); 2] {
    [
        (
            key((CLIENT, 40000), (VIP, 80), protocol),
            entry(Forwarding::Fnat, 0, client_seen, (LOCAL, 1024), (REAL, 8080)),
        ),
        (
            key((REAL, 8080), (LOCAL, 1024), protocol),
            entry(Forwarding::Fnat, CONN_REPLY, reply_seen, (VIP, 80), (CLIENT, 40000)),
        ),
    ]
}

/// The connection of `start`, its partner looked up among `table`.
fn connection_of(start: (FlowKey, Conn), table: &[(FlowKey, Conn)]) -> Connection {
    let table: HashMap<FlowKey, Conn> = table.iter().copied().collect();
    Connection::of(start.0, start.1, |partner| Ok(table.get(partner).copied())).unwrap()
}

const TIMEOUTS: Timeouts = Timeouts::IPVS;

#[test]
fn the_timeout_is_ipvs_by_protocol_and_state() {
    assert_eq!(TIMEOUTS.of(IPPROTO_TCP, ESTABLISHED), 900);
    assert_eq!(TIMEOUTS.of(IPPROTO_TCP, FIN_WAIT), 120, "ipvsadm --set's tcpfin");
    assert_eq!(TIMEOUTS.of(IPPROTO_TCP, SYN_RECV), 60);
    assert_eq!(TIMEOUTS.of(IPPROTO_TCP, lb_common::state::CLOSE), 10);
    assert_eq!(TIMEOUTS.of(IPPROTO_TCP, lb_common::state::NONE), 2);
    assert_eq!(TIMEOUTS.of(IPPROTO_UDP, lb_common::state::NONE), 300);
}

#[test]
fn reply_and_client_keys_are_each_others_as_the_data_path_writes_them() {
    for [(client, conn), (reply, reply_conn)] in [nat(IPPROTO_TCP, 0, 0), fnat(IPPROTO_UDP, 0, 0)] {
        assert_eq!(reply_key(&client, &conn), Some(reply), "{:?}", conn.forwarding);
        assert_eq!(client_key(&reply, &reply_conn), Some(client), "{:?}", conn.forwarding);
    }
    let dr = key((CLIENT, 40000), (VIP, 80), IPPROTO_TCP);
    assert_eq!(reply_key(&dr, &entry(Forwarding::Dr, 0, 0, ("", 0), ("", 0))), None, "dr has no reply entry");
}

#[test]
fn a_connection_is_as_idle_as_its_fresher_entry_from_either_end() {
    for pair in [nat(IPPROTO_TCP, 100, 40), fnat(IPPROTO_TCP, 40, 100)] {
        for start in pair {
            let connection = connection_of(start, &pair);
            assert_eq!((connection.client, connection.reply), (Some(pair[0]), Some(pair[1])));
            assert_eq!(connection.idle(1000), 900);
            assert!(!connection.expired(1000, &TIMEOUTS), "900 s idle is not more than 900");
            assert!(connection.expired(1001, &TIMEOUTS));
        }
    }
}

#[test]
fn a_tcp_connection_ages_by_its_state_which_the_client_entry_holds() {
    let mut pair = fnat(IPPROTO_TCP, 100, 100);
    pair[0].1.state = TIME_WAIT;
    let connection = connection_of(pair[1], &pair);
    assert!(!connection.expired(220, &TIMEOUTS));
    assert!(connection.expired(221, &TIMEOUTS), "time_wait, from the client entry");
    pair[0].1.state = FIN_WAIT;
    let shorter = Timeouts { tcp_fin: 5, ..TIMEOUTS };
    assert!(connection_of(pair[0], &pair).expired(106, &shorter), "tcp_fin");
    let udp = nat(IPPROTO_UDP, 100, 100);
    assert!(!connection_of(udp[0], &udp).expired(400, &TIMEOUTS));
    assert!(connection_of(udp[0], &udp).expired(401, &TIMEOUTS));
}

#[test]
fn a_stamp_from_after_the_clock_was_read_is_not_idle() {
    let pair = nat(IPPROTO_UDP, 2000, 2000);
    let connection = connection_of(pair[0], &pair);
    assert_eq!(connection.idle(1999), 0);
    assert!(!connection.expired(1999, &Timeouts { tcp: 1, tcp_fin: 1, udp: 1, ..TIMEOUTS }));
}

#[test]
fn an_entry_whose_partner_is_gone_or_anothers_stands_alone() {
    let [client, reply] = fnat(IPPROTO_TCP, 10, 1000);
    let alone = connection_of(client, &[client]);
    assert_eq!((alone.client, alone.reply), (Some(client), None));
    assert!(alone.expired(1000, &TIMEOUTS), "it ages on its own");
    let alone = connection_of(reply, &[reply]);
    assert_eq!((alone.client, alone.reply), (None, Some(reply)));
    // A NAT reply key taken over by another client's connection (same real server
    // and client port, another VIP): it names that one, not this one.
    let [client, _] = nat(IPPROTO_TCP, 10, 10);
    let [_, mut other] = nat(IPPROTO_TCP, 10, 10);
    other.1.src = ip("203.0.113.11");
    let connection = connection_of(client, &[client, other]);
    assert_eq!((connection.client, connection.reply), (Some(client), None));
    let connection = connection_of(other, &[client, other]);
    assert_eq!((connection.client, connection.reply), (None, Some(other)));
}

#[test]
fn a_direct_routing_entry_is_a_connection_of_its_own() {
    let dr = (key((CLIENT, 40000), (VIP, 80), IPPROTO_TCP), entry(Forwarding::Dr, 0, 10, ("", 0), ("", 0)));
    let connection = connection_of(dr, &[dr]);
    assert_eq!((connection.client, connection.reply), (Some(dr), None));
    assert_eq!(connection.keys().collect::<Vec<_>>(), vec![dr.0]);
}
