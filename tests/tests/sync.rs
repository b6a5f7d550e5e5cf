//! Connection synchronisation through `BPF_PROG_TEST_RUN`: what the data path announces
//! (an established connection, a UDP flow's third datagram, nothing for a half-open
//! one), and that a peer installing the announcement goes on exactly where the master
//! was: the same frames out, both ways, with its own ids.

use std::net::SocketAddr;

use aya::maps::{MapData, RingBuf};
use lb_agent::sync::{
    announce,
    install::{self, Entries, Unbound},
    wire::Record,
};
use lb_common::sync::SyncSettings;
use lb_tests::{
    bed::{RoutedBed as Bed, XDP_TX},
    packet::{self, TCP_ACK, TCP_SYN},
};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:100::10";

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// (client, real server) of `vip`'s family.
fn ends(vip: &str) -> (&'static str, &'static str) {
    if vip.contains(':') { ("2001:db8:1::1", "2001:db8:21::11") } else { ("198.18.1.1", "198.18.21.11") }
}

/// A TCP and a UDP service on each VIP by `forwarding`, one real server of each family
/// (serving NAT and Full-NAT on ports 8080 and 5353); `first` services before them (a
/// peer with other ids).
fn services(forwarding: &str, first: &str) -> String {
    let mut yaml = first.to_owned();
    for (vip, suffix) in [(VIP4, "4"), (VIP6, "6")] {
        let (_, real) = ends(vip);
        for (name, protocol, port, real_port) in [("web", "tcp", 80, 8080), ("dns", "udp", 53, 5353)] {
            let real_port = if forwarding == "dr" { String::new() } else { format!(", port: {real_port}") };
            yaml += &format!(
                "  - {{ name: {name}{suffix}, vip: \"{vip}\", port: {port}, protocol: {protocol}, scheduler: rr, \
                 forwarding: {forwarding}, local_addresses: [198.18.21.100, \"2001:db8:21::100\"], \
                 reals: [{{ address: \"{real}\"{real_port} }}] }}\n"
            );
        }
    }
    yaml
}

/// Another service first, so the peer's services and real servers have other ids.
const OTHER: &str = "  - { name: other, vip: 203.0.113.20, port: 80, protocol: tcp, reals: [{ address: 198.18.1.50 }, \
                     { address: 198.18.1.51 }] }\n";

/// A master announcing and a backup with the same services under other ids.
struct Pair {
    master: Bed,
    backup: Bed,
    events: RingBuf<MapData>,
}

impl Pair {
    fn new(forwarding: &str) -> Self {
        let master = Bed::new(&services(forwarding, ""));
        let backup = Bed::new(&services(forwarding, OTHER));
        let (events, mut settings) = master.director.dataplane().sync_events().unwrap();
        settings.set(SyncSettings { announce: 1, quiet: 15 }).unwrap();
        Self { master, backup, events }
    }

    /// The records of what the master announced since the last call.
    fn announced(&mut self) -> Vec<Record> {
        let directory = self.master.director.sync_directory();
        let mut records = Vec::new();
        while let Some(item) = self.events.next() {
            let event = announce::event(&item).expect("an event of SyncEvent's size");
            records.extend(announce::connection(&event.flow, &event.conn, 0, &directory));
        }
        records
    }

    /// Installs `records` on the backup as its sync daemon does.
    fn install(&self, records: &[Record]) {
        let directory = self.backup.director.sync_directory();
        let mut table = self.backup.director.dataplane().conn_table();
        for record in records {
            match install::entries(record, 0, &directory).unwrap() {
                Entries::Connection { client, reply } => {
                    if let Some((key, entry)) = reply {
                        table.insert(&key, &entry).unwrap();
                    }
                    table.insert(&client.0, &client.1).unwrap();
                }
                Entries::Template(..) => panic!("no persistent service here"),
            }
        }
    }
}

#[test]
fn an_established_connection_goes_on_through_the_backup_exactly_as_through_the_master() {
    for forwarding in ["dr", "nat", "fnat"] {
        let mut pair = Pair::new(forwarding);
        for vip in [VIP4, VIP6] {
            let (client, real) = ends(vip);
            let (client, virtual_service) = (sock(client, 40000), sock(vip, 80));
            let syn = packet::tcp_frame(client, virtual_service, TCP_SYN, b"");
            let (verdict, opened) = pair.master.run(&syn);
            assert_eq!(verdict, XDP_TX, "{forwarding} {vip}");
            assert_eq!(pair.announced(), [], "{forwarding} {vip}: a half-open connection is not announced");

            let ack = packet::tcp_frame(client, virtual_service, TCP_ACK, b"");
            assert_eq!(pair.master.run(&ack).0, XDP_TX);
            let records = pair.announced();
            assert_eq!(records.len(), 1, "{forwarding} {vip}: announced once established");
            pair.install(&records);

            let data = packet::tcp_frame(client, virtual_service, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n");
            let through_master = pair.master.run(&data);
            assert_eq!(through_master.0, XDP_TX);
            assert_eq!(pair.backup.run(&data), through_master, "{forwarding} {vip}: the same frame out of the backup");
            if forwarding != "dr" {
                // The real server answers the address and port the SYN went out with.
                let to_real = packet::received_tcp(&opened).expect("a TCP frame towards the real server");
                let reply = packet::tcp_frame(to_real.dst, to_real.src, TCP_ACK, b"HTTP/1.1 200 OK\r\n");
                let through_master = pair.master.run(&reply);
                assert_eq!(pair.backup.run(&reply), through_master, "{forwarding} {vip} {real}: the reply too");
            }
        }
    }
}

#[test]
fn a_udp_flow_is_announced_at_its_third_datagram_only() {
    let mut pair = Pair::new("nat");
    for vip in [VIP4, VIP6] {
        let (client, _) = ends(vip);
        let datagram = packet::udp_frame(sock(client, 5000), sock(vip, 53), b"query");
        for _ in 0..2 {
            assert_eq!(pair.master.run(&datagram).0, XDP_TX);
        }
        assert_eq!(pair.announced(), [], "{vip}: two datagrams are not worth a peer's time");
        pair.master.run(&datagram);
        let records = pair.announced();
        assert_eq!(records.len(), 1, "{vip}: the third is");
        pair.install(&records);
        assert_eq!(pair.backup.run(&datagram), pair.master.run(&datagram), "{vip}");
        pair.master.run(&datagram);
        assert_eq!(pair.announced(), [], "{vip}: and the fourth is not");
    }
}

#[test]
fn a_record_for_a_real_server_or_service_the_backup_lacks_waits() {
    let mut pair = Pair::new("dr");
    let (client, virtual_service) = (sock("198.18.1.1", 40000), sock(VIP4, 80));
    pair.master.run(&packet::tcp_frame(client, virtual_service, TCP_SYN, b""));
    pair.master.run(&packet::tcp_frame(client, virtual_service, TCP_ACK, b""));
    let record = pair.announced()[0];
    let elsewhere = Bed::new(&services("dr", "").replace("198.18.21.11", "198.18.21.12"));
    assert_eq!(install::entries(&record, 0, &elsewhere.director.sync_directory()), Err(Unbound::Real));
    let nowhere = Bed::new(&services("dr", "").replace(VIP4, "203.0.113.30"));
    assert_eq!(install::entries(&record, 0, &nowhere.director.sync_directory()), Err(Unbound::Service));
}
