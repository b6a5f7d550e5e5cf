//! Counters, kept per CPU by the data path and summed by the agent at scrape time.

/// Traffic of a virtual service or of a real server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets from clients, forwarded to real servers.
    pub packets: u64,
    /// Bytes of the IP packets (the Ethernet header not included), as IPVS counts them.
    pub bytes: u64,
    /// New connections scheduled.
    pub conns: u64,
    /// Replies from real servers that came back through the director (NAT, Full-NAT).
    pub out_packets: u64,
    pub out_bytes: u64,
}

/// One table for every reason: its slot, its metrics label, and what became of the
/// packet: it went on to the kernel (`pass`), was dropped (`drop`), was dropped and
/// answered (`answer`), or was forwarded all the same, without something it should have
/// had (`note`).
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $slot:literal, $label:literal, $verdict:ident;)*) => {
        /// Why a packet was passed to the kernel or dropped instead of forwarded, or what
        /// a forwarded one lacked. The value is the packet's slot in `VERDICT_STATS`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $name = $slot,)*
        }

        impl Reason {
            pub const ALL: &[Reason] = &[$(Self::$name),*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// What became of the packet.
            pub const fn verdict(self) -> Verdict {
                match self {
                    $(Self::$name => reasons!(@verdict $verdict),)*
                }
            }

            /// Whether the packet went on to the kernel (else it was dropped, replaced by
            /// the director's answer, or, for a note, forwarded: never the outcome of a
            /// failed step).
            pub const fn is_pass(self) -> bool {
                matches!(self.verdict(), Verdict::Pass)
            }

            /// The `reason` label of the metrics.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Self::$name => $label,)*
                }
            }
        }
    };
    (@verdict pass) => { Verdict::Pass };
    (@verdict drop) => { Verdict::Drop };
    (@verdict answer) => { Verdict::Answer };
    (@verdict note) => { Verdict::Note };
}

/// What the data path did with a packet a [`Reason`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Left to the kernel.
    Pass,
    Drop,
    /// Dropped, and the frame turned into the director's answer to its sender (an
    /// ICMP error), sent back the way it came.
    Answer,
    /// Forwarded all the same, but without something it should have had (a note, not
    /// an outcome: the packet is counted with its service as well).
    Note,
}

reasons! {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 0, "not_ip", pass;
    /// Neither TCP nor UDP (ICMP, neighbour discovery, ...).
    NotTcpUdp = 1, "not_tcp_udp", pass;
    /// A fragment the data path does not follow: not TCP or UDP, or a later fragment
    /// whose first was not forwarded (reordered, or not a virtual service's).
    Fragment = 2, "fragment", pass;
    /// TCP or UDP, but no virtual service at that address and no known connection.
    NotAService = 3, "not_a_service", pass;
    /// The frame ends inside the Ethernet or VLAN header.
    TruncatedEthernet = 4, "truncated_ethernet", drop;
    /// Bad IP version, header length, total length or IPv4 header checksum.
    MalformedIp = 5, "malformed_ip", drop;
    /// The packet ends inside the TCP or UDP header.
    TruncatedL4 = 6, "truncated_l4", drop;
    /// The service has no real server that takes new connections.
    NoRealServer = 7, "no_real_server", drop;
    /// The real server has no resolved link-layer address (yet, or any more).
    RealUnresolved = 8, "real_unresolved", drop;
    /// IPv6 with extension headers (hop-by-hop, routing, ...), not walked yet.
    Ipv6Extension = 9, "ipv6_extension_header", pass;
    /// For a service, but the frame is addressed to another host's MAC: passed, so the
    /// kernel discards it as it discards any frame for another host.
    OtherHost = 10, "other_host", pass;
    /// A TCP segment without SYN for a flow the director does not know (only a SYN
    /// opens a connection, as in IPVS).
    NoConnection = 11, "no_connection", drop;
    /// From another VLAN than the next hop's (the data path does not re-tag frames);
    /// the client's next SYN may be scheduled elsewhere.
    VlanMismatch = 12, "vlan_mismatch", drop;
    /// A forwarding method this program does not know (an agent newer than the
    /// program).
    UnsupportedForwarding = 13, "unsupported_forwarding", drop;
    /// Full-NAT: every local port tried for the new connection is taken.
    LocalPortsExhausted = 14, "local_ports_exhausted", drop;
    /// Full-NAT: the service has no local address of the packet's family.
    NoLocalAddress = 15, "no_local_address", drop;
    /// A reply's next hop towards the client has no neighbour entry yet.
    NextHopUnresolved = 16, "next_hop_unresolved", drop;
    /// The director has no route for a reply towards its client (or forwarding is
    /// disabled on the interface it came by).
    NoRoute = 17, "no_route", drop;
    /// The connection table refused the new connection's entries: NAT and Full-NAT
    /// packets never leave without them.
    ConnInsertFailed = 18, "conn_insert_failed", drop;
    /// IP tunnel: the packet would not fit the link towards its real server once
    /// encapsulated. The client was sent ICMP "fragmentation needed" (IPv6: "packet too
    /// big") with the MTU that fits.
    TooBig = 19, "too_big", answer;
    /// As `too_big`, but a fragment (its sender cannot make it smaller) or an IPv4
    /// packet with options (which the data path does not quote): dropped unanswered.
    TooBigUnanswered = 20, "too_big_unanswered", drop;
    /// The driver left no room in front of the frame for the headers to add.
    NoHeadroom = 21, "no_headroom", drop;
    /// An ICMP error whose quoted packet is cut short or not IP of the error's own
    /// version: the director cannot tell whose it is, so its kernel has it.
    MalformedIcmp = 22, "malformed_icmp", pass;
    /// An ICMP error about a flow that is no connection of the director's.
    IcmpNoConnection = 23, "icmp_no_connection", pass;
    /// Full-NAT with TOA: a client's segment went to its real server without the
    /// option, as its TCP header (60 bytes at most) or the MTU towards the real server
    /// had no room for it.
    ToaNoRoom = 24, "toa_no_room", note;
    /// A connection of a service with `expire_nodest_conn` whose real server was
    /// removed: it ended at this packet, which went on as a new flow's (IPVS's
    /// `expire_nodest_conn`).
    NodestExpired = 25, "nodest_expired", note;
    /// A connection the sync peers should have learnt of found the ring to the agent
    /// full (the agent is behind); they learn of it at its next change or refresh.
    SyncRingFull = 26, "sync_ring_full", note;
}

// Each reason's slot is its place in `ALL`, so the agent reads the slots in order.
const _: () = {
    let mut slot = 0;
    while slot < Reason::ALL.len() {
        assert!(Reason::ALL[slot] as usize == slot);
        slot += 1;
    }
};

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<Counters>() == 40);
