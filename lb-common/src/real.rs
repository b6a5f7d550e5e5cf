//! Real servers: where the data path sends a scheduled packet, and how.

/// How a packet reaches its real server (ipvsadm's `-g`, `-i`, `-m`, and Full-NAT).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Direct routing: only the Ethernet addresses change.
    Dr = 0,
    /// IP tunnel: the packet is encapsulated towards the real server.
    Tun = 1,
    /// NAT: the destination becomes the real server's; replies come back through the
    /// director, which puts the VIP back.
    Nat = 2,
    /// Full-NAT: the source becomes a local address of the director's too, so replies
    /// come back to it whatever the real server's routes.
    Fnat = 3,
}

impl Forwarding {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Dr),
            1 => Some(Self::Tun),
            2 => Some(Self::Nat),
            3 => Some(Self::Fnat),
            _ => None,
        }
    }
}

/// A real server, at its stable id in `REALS`.
///
/// An id is bound to one (service, address) for as long as any connection may use it,
/// so a connection entry that records the id keeps its real server across reloads.
/// One cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealServer {
    pub address: [u8; 16],
    /// The outer source address of tunnelled packets (`tun`); zero otherwise.
    pub tunnel_source: [u8; 16],
    /// The link-layer address of the next hop towards the real server (the real server
    /// itself when on-link), from the director's routing and neighbour tables.
    pub mac: [u8; 6],
    /// The link-layer address of the director's interface that reaches it.
    pub director_mac: [u8; 6],
    /// That interface; 0 while the real server is not resolved.
    pub ifindex: u32,
    /// The port the real server serves on, network order (NAT and Full-NAT may map the
    /// service's port to another one).
    pub port: [u8; 2],
    /// The 802.1Q VLAN the next hop is on, 0 for none: a frame is forwarded only from
    /// the same VLAN, as the data path does not re-tag frames.
    pub vlan: u16,
    pub family: u8,
    /// A [`Forwarding`].
    pub forwarding: u8,
    /// `REAL_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// The MTU of the route towards the real server (its own, else its device's): the
    /// largest IP packet the director may send it, for packets it grows (tunnels, TOA);
    /// 0 when unknown.
    pub mtu: u16,
    /// `tun` over IPv4: the one's complement sum (folded, host order) of the outer
    /// header's words that are the same for every packet to this real server (version
    /// and header length, "don't fragment", TTL and protocol, the addresses), so the
    /// data path adds only the TOS and length for the header checksum.
    pub outer_sum: u16,
    /// The index of the service it is a real server of (an id belongs to one service):
    /// what lblc and lblcr check an entry's member against, since an entry a packet
    /// still writes may meanwhile be another's (an LRU element freed and reused).
    pub service: u32,
}

/// `RealServer::flags`: no longer a real server of its service (removed from the
/// configuration); kept for the connections it still has. A persistence template that
/// names it is void, and so is a connection of a service with `expire_nodest_conn`.
pub const REAL_REMOVED: u8 = 1 << 0;
/// `RealServer::flags`: weight 0. A persistence template that names it is void in a
/// service with `expire_quiescent_template`.
pub const REAL_QUIESCED: u8 = 1 << 1;

/// The outer TTL or hop limit of tunnelled packets, as Linux's default for packets it
/// originates.
pub const OUTER_TTL: u8 = 64;
/// The outer IPv4 header's flags: "don't fragment" (too big is answered, not split).
pub const OUTER_DF: u16 = 0x4000;
/// IP protocol numbers of what an outer header carries.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;

/// [`RealServer::outer_sum`] for a tunnel from `source` to `destination` (IPv4, as the
/// maps store it: the first four of 16 bytes): the words of the outer IPv4 header that
/// do not change from packet to packet, summed and folded (RFC 1071). The protocol
/// carried is left out: a firewall-mark service may send this real server packets of
/// both families.
pub const fn outer_ipv4_sum(source: &[u8; 16], destination: &[u8; 16]) -> u16 {
    let words = [
        0x4500,
        OUTER_DF as u32,
        (OUTER_TTL as u32) << 8,
        u16::from_be_bytes([source[0], source[1]]) as u32,
        u16::from_be_bytes([source[2], source[3]]) as u32,
        u16::from_be_bytes([destination[0], destination[1]]) as u32,
        u16::from_be_bytes([destination[2], destination[3]]) as u32,
    ];
    let mut sum = 0;
    let mut i = 0;
    while i < words.len() {
        sum += words[i];
        i += 1;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A real server's load (`REAL_LOAD`, by id): its connections as IPVS counts them, and
/// what the schedulers that weigh them need. One array for all CPUs: the data path adds
/// to the counts atomically as connections open and change state; the agent subtracts
/// what it expires and reconciles them with what the table holds (an entry evicted from
/// a full table tells nobody). Signed, as a count may dip below zero for a moment
/// between the two.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealLoad {
    /// ipvsadm's ActiveConn: established TCP connections and those opening.
    pub active: i64,
    /// ipvsadm's InActConn: the other connections it holds (closing TCP, UDP).
    pub inactive: i64,
    /// Its weight (0: quiesced), written by the agent.
    pub weight: u32,
    /// ipvsadm `-x`: once it holds this many connections (active and inactive) it
    /// takes no new ones; 0: no limit. Written by the agent.
    pub upper_threshold: u32,
    /// ipvsadm `-y`: it takes new connections again below this many (0: below 3/4 of
    /// the upper threshold). Written by the agent.
    pub lower_threshold: u32,
    /// IPVS's `IP_VS_DEST_F_OVERLOAD`: non-zero from the connection that reached the
    /// upper threshold (set by the data path) until the count falls below the lower
    /// (cleared by the agent, which frees connections).
    pub overloaded: u32,
}

impl RealLoad {
    /// Connections it holds, as IPVS's `ip_vs_dest_totalconns`.
    pub const fn total(&self) -> i64 {
        self.active + self.inactive
    }

    /// Whether it may take new connections again (IPVS's `ip_vs_unbind_dest`).
    pub const fn below_lower_threshold(&self) -> bool {
        let total = self.total();
        if self.lower_threshold != 0 {
            total < self.lower_threshold as i64
        } else if self.upper_threshold != 0 {
            total * 4 < self.upper_threshold as i64 * 3
        } else {
            true
        }
    }
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<RealServer>() == 64);
const _: () = assert!(core::mem::size_of::<RealLoad>() == 32);
