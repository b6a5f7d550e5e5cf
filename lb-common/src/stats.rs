//! Counters, kept per CPU by the data path and summed by the agent at scrape time.

/// Traffic of a virtual service or of a real server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    /// Bytes of the IP packets (the Ethernet header not included), as IPVS counts them.
    pub bytes: u64,
    /// New connections scheduled.
    pub conns: u64,
}

/// Why a packet was passed to the kernel or dropped instead of forwarded. The value is
/// the packet's slot in `VERDICT_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    NotIp = 0,
    /// Neither TCP nor UDP (ICMP, neighbour discovery, ...): passed.
    NotTcpUdp = 1,
    /// An IPv4 fragment or an IPv6 packet with a fragment header: passed.
    Fragment = 2,
    /// TCP or UDP, but no virtual service at that address: passed.
    NotAService = 3,
    /// The frame ends inside the Ethernet or VLAN header: dropped.
    TruncatedEthernet = 4,
    /// Bad IP version, header length, total length or IPv4 header checksum: dropped.
    MalformedIp = 5,
    /// The packet ends inside the TCP or UDP header: dropped.
    TruncatedL4 = 6,
    /// The service has no real server that takes new connections: dropped.
    NoRealServer = 7,
    /// The real server has no resolved link-layer address (yet, or any more): dropped.
    RealUnresolved = 8,
    /// IPv6 with extension headers (hop-by-hop, routing, ...), not walked yet: passed.
    Ipv6Extension = 9,
    /// For a service, but the frame is addressed to another host's MAC: passed, so the
    /// kernel discards it as it discards any frame for another host.
    OtherHost = 10,
    /// A TCP segment without SYN for a flow the director does not know: dropped (only a
    /// SYN opens a connection, as in IPVS).
    NoConnection = 11,
    /// From another VLAN than the chosen real server's: dropped (the data path does not
    /// re-tag frames yet); the client's next SYN may be scheduled elsewhere.
    VlanMismatch = 12,
    /// The real server's forwarding method is one this program does not know (an
    /// agent newer than the program): dropped.
    UnsupportedForwarding = 13,
}

impl Reason {
    pub const COUNT: u32 = 14;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Self::NotIp,
        Self::NotTcpUdp,
        Self::Fragment,
        Self::NotAService,
        Self::TruncatedEthernet,
        Self::MalformedIp,
        Self::TruncatedL4,
        Self::NoRealServer,
        Self::RealUnresolved,
        Self::Ipv6Extension,
        Self::OtherHost,
        Self::NoConnection,
        Self::VlanMismatch,
        Self::UnsupportedForwarding,
    ];

    /// Whether the packet went on to the kernel (else it was dropped).
    pub const fn is_pass(self) -> bool {
        matches!(
            self,
            Self::NotIp | Self::NotTcpUdp | Self::Fragment | Self::NotAService | Self::Ipv6Extension | Self::OtherHost
        )
    }

    /// The `reason` label of the metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::NotTcpUdp => "not_tcp_udp",
            Self::Fragment => "fragment",
            Self::NotAService => "not_a_service",
            Self::TruncatedEthernet => "truncated_ethernet",
            Self::MalformedIp => "malformed_ip",
            Self::TruncatedL4 => "truncated_l4",
            Self::NoRealServer => "no_real_server",
            Self::RealUnresolved => "real_unresolved",
            Self::Ipv6Extension => "ipv6_extension_header",
            Self::OtherHost => "other_host",
            Self::NoConnection => "no_connection",
            Self::VlanMismatch => "vlan_mismatch",
            Self::UnsupportedForwarding => "unsupported_forwarding",
        }
    }
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<Counters>() == 24);
