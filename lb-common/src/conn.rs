//! The connection table: one entry per flow and direction, so a connection stays on its
//! real server, and a NAT or Full-NAT reply finds what to rewrite back.

pub mod table;

use crate::real::Forwarding;

/// A flow's 5-tuple as its packets carry it; either family, unused address bytes zero.
/// A client's flow is keyed as the client sent it; the reply direction of a NAT or
/// Full-NAT connection as the real server sends it.
///
/// Aligned to 4 bytes (its layout is the same), so the data path copies its addresses
/// a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports in network byte order, as on the wire.
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `Conn::flags`: the entry is for packets from the real server back to the client.
pub const CONN_REPLY: u8 = 1 << 0;
/// `Conn::flags`: the connection's service has `expire_nodest_conn`: once its real
/// server is removed, its next packet expires it (and is then scheduled as new).
pub const CONN_EXPIRE_NODEST: u8 = 1 << 1;
/// `Conn::flags`: a Full-NAT TCP connection of a service with TOA: the client's segments
/// carry its address to the real server in a TCP option until one with data has, and
/// (on the reply's entry) the MSS of the real server's SYN-ACK is lowered to leave room
/// for the option.
pub const CONN_TOA: u8 = 1 << 2;
/// `Conn::flags`: the TOA option went out on a segment with data; the connection's
/// later segments are left alone.
pub const CONN_TOA_DONE: u8 = 1 << 3;
/// `Conn::flags`: the TOA option went out on a segment without data (the ACK that
/// completes the handshake); later ones without data are left alone, so a client that
/// only acknowledges (a download) does not send it on every ACK.
pub const CONN_TOA_ACK: u8 = 1 << 4;

/// What the director remembers of a flow: enough to forward, rewrite and count its
/// packets without looking its service up again, even after the service is removed (as
/// IPVS lets a removed service's connections finish).
///
/// The rewrite is fixed when the connection opens, so a reload that changes a real
/// server's port or method never changes what an established connection's packets
/// become.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// The stable id of the real server the flow was scheduled to.
    pub real: u32,
    /// The index of the service it was scheduled by, for the counters.
    pub service: u32,
    /// The [`crate::real::Forwarding`] the connection was opened with.
    pub forwarding: u8,
    /// `CONN_*` bits.
    pub flags: u8,
    /// The connection's TCP state (`state::*`, IPVS's table), the same in both entries
    /// of a NAT or Full-NAT connection; `state::NONE` for UDP.
    pub state: u8,
    /// The client's packets seen, counted up to `sync::SYNC_THRESHOLD` in a client
    /// entry (a connection without states is announced to the sync peers at that
    /// packet); a reply's entry holds its client entry's first count.
    pub packets: u8,
    /// When a packet of the flow was last seen, in seconds of the kernel's monotonic
    /// clock; the agent ages entries by it.
    pub last_seen: u32,
    /// The source the packet leaves with, when the method rewrites it (Full-NAT's
    /// local address towards the real server; the VIP towards the client).
    pub src: [u8; 16],
    /// The destination it leaves with, when rewritten (the real server's address for
    /// NAT and Full-NAT; the client's for a Full-NAT reply).
    pub dst: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// What the rewrite (NAT, Full-NAT) changes in a one's complement sum, worked out
    /// when the entry is written, since every packet of the flow changes the same bytes
    /// (RFC 1624's `~m + m'`, in the machine's byte order): the addresses (the IPv4
    /// header's checksum, and a later fragment's) ...
    pub address_delta: u16,
    /// ... and the addresses and ports (the TCP or UDP checksum). 0 for dr and tun.
    pub port_delta: u16,
}

impl Conn {
    /// A client entry with nothing rewritten (direct routing, tunnels; NAT and Full-NAT
    /// add theirs), in `state`, `packets` counted, last seen at `last_seen`: what the
    /// data path opens a connection with and the sync installer starts from.
    pub const fn plain(real: u32, service: u32, forwarding: u8, state: u8, packets: u8, last_seen: u32) -> Self {
        Self {
            real,
            service,
            forwarding,
            flags: 0,
            state,
            packets,
            last_seen,
            src: [0; 16],
            dst: [0; 16],
            src_port: [0; 2],
            dst_port: [0; 2],
            address_delta: 0,
            port_delta: 0,
        }
    }

    pub const fn is_reply(&self) -> bool {
        self.flags & CONN_REPLY != 0
    }

    /// Whether a client segment of the connection, with data or not, still needs the
    /// TOA option (`true`: whether any might).
    pub const fn awaits_toa(&self, data: bool) -> bool {
        let sent = if data { CONN_TOA_DONE } else { CONN_TOA_DONE | CONN_TOA_ACK };
        self.flags & (CONN_TOA | sent) == CONN_TOA
    }
}

impl Conn {
    /// Works out what the rewrites of a new NAT or Full-NAT connection change in its
    /// packets' checksums (`address_delta`, `port_delta`): the same for every packet of
    /// the flow, so each entry holds it and its packets only add it. The client's
    /// packets of `flow` lose their destination (and, for Full-NAT, their source) for
    /// this entry's; the replies get back what those took away, so `reply`'s changes
    /// are the client's negated (in one's complement, every bit flipped). An IPv4
    /// address's unused twelve bytes are zero on both sides, which adds nothing. The
    /// data path opening a connection and the agent installing a synced one both
    /// write them so.
    #[inline(always)]
    pub fn set_deltas(&mut self, flow: &FlowKey, reply: &mut Conn) {
        let mut addresses = ones::replace(0, &flow.dst, &self.dst);
        let mut ports = ones::replace(0, &flow.dst_port, &self.dst_port);
        if self.forwarding == Forwarding::Fnat as u8 {
            addresses = ones::replace(addresses, &flow.src, &self.src);
            ports = ones::replace(ports, &flow.src_port, &self.src_port);
        }
        let all = ones::fold(u32::from(addresses) + u32::from(ports));
        (self.address_delta, self.port_delta) = (addresses, all);
        (reply.address_delta, reply.port_delta) = (!addresses, !all);
    }
}

/// One's complement sums (RFC 1071, RFC 1624) of 16-bit words in the machine's byte
/// order, as `bpf_csum_diff` sums: a one's complement sum is the same in either order,
/// so a checksum field read and written in that order takes them as they are.
mod ones {
    /// `sum` with the change of replacing the `N` bytes `old` by `new` added (RFC 1624,
    /// eqn. 3's `~m + m'`); `N` even.
    #[inline(always)]
    pub fn replace<const N: usize>(sum: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
        let mut sum = u32::from(sum);
        let mut i = 0;
        while i < N {
            sum += u32::from(!u16::from_ne_bytes([old[i], old[i + 1]]))
                + u32::from(u16::from_ne_bytes([new[i], new[i + 1]]));
            i += 2;
        }
        fold(sum)
    }

    /// A 32-bit one's complement sum folded to 16 bits.
    #[inline(always)]
    pub fn fold(sum: u32) -> u16 {
        let sum = (sum & 0xffff) + (sum >> 16);
        ((sum & 0xffff) + (sum >> 16)) as u16
    }
}

/// The key of the reply entry of a NAT or Full-NAT client entry `conn` at `client`:
/// from the real server to where the client's packets leave from (the client itself
/// for NAT, the local address and port for Full-NAT).
pub fn reply_key(client: &FlowKey, conn: &Conn) -> Option<FlowKey> {
    match Forwarding::from_u8(conn.forwarding)? {
        Forwarding::Nat | Forwarding::Fnat => Some(conn.reply_key(client)),
        Forwarding::Dr | Forwarding::Tun => None,
    }
}

impl Conn {
    /// [`reply_key`] of an entry known to be NAT's or Full-NAT's (any other is taken
    /// for NAT's): what the data path writes, without an `Option` on its stack.
    pub fn reply_key(&self, client: &FlowKey) -> FlowKey {
        let fnat = self.forwarding == Forwarding::Fnat as u8;
        FlowKey {
            src: self.dst,
            dst: if fnat { self.src } else { client.src },
            src_port: self.dst_port,
            dst_port: if fnat { self.src_port } else { client.src_port },
            protocol: client.protocol,
            family: client.family,
            _pad: [0; 2],
        }
    }
}

/// The key of the client entry of a NAT or Full-NAT reply entry `conn` at `reply`:
/// from the client to the VIP (which the reply entry puts back as the source). The
/// client is the reply's destination for NAT; Full-NAT's reply entry holds it.
pub fn client_key(reply: &FlowKey, conn: &Conn) -> Option<FlowKey> {
    let (client, client_port) = match Forwarding::from_u8(conn.forwarding)? {
        Forwarding::Nat => (reply.dst, reply.dst_port),
        Forwarding::Fnat => (conn.dst, conn.dst_port),
        Forwarding::Dr | Forwarding::Tun => return None,
    };
    Some(FlowKey {
        src: client,
        dst: conn.src,
        src_port: client_port,
        dst_port: conn.src_port,
        protocol: reply.protocol,
        family: reply.family,
        _pad: [0; 2],
    })
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Conn>() == 56);
