//! Virtual services: what the data path matches a packet against.

/// A virtual service's address: (VIP, port, protocol). Port 0 is the all-ports service
/// of that VIP and protocol, which the data path falls back to. Aligned to 4, so the
/// data path compares it a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub vip: [u8; 16],
    /// Network byte order, as on the wire.
    pub port: [u8; 2],
    pub protocol: u8,
    pub family: u8,
}

/// Slots of `SERVICE_SLOTS`, the array in front of `SERVICES`: a service is looked for
/// in its slot first (an array read the verifier inlines), and in the hash map only
/// when another service holds the slot. The hash lookup it spares (a call, a hash of
/// the 20-byte key, a walk) measured some 0.8 times the trivial program's time, on
/// every new flow.
pub const SLOTS: u32 = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 12;

/// A service in its slot of `SERVICE_SLOTS`, written by the agent as a sequence lock:
/// `seq` is odd while the slot is being written, and changes with every write. A
/// packet reads `seq`, the key and a copy of the value, then `seq` again, and uses the
/// copy only if `seq` was even and stayed the same; else it asks `SERVICES`. A free
/// slot has family 0, which no service has.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    pub seq: u32,
    pub key: ServiceKey,
    pub service: Service,
    pub _pad: [u8; 8],
}

impl ServiceKey {
    /// The service's slot of `SERVICE_SLOTS`: the top bits of a multiplicative hash of
    /// the key's words (FxHash's), each word mixed before the next comes in.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        let mut hash: u32 = 0;
        for word in self.words() {
            hash = (hash.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b1);
        }
        hash >> (32 - SLOT_BITS)
    }

    /// The key as five words, as the data path reads and compares it.
    #[inline(always)]
    pub fn words(&self) -> &[u32; 5] {
        // SAFETY: 20 bytes without padding, aligned to 4.
        unsafe { &*(self as *const Self).cast::<[u32; 5]>() }
    }
}

/// How a service chooses a real server for a new connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Round robin: the available real servers in turn.
    Rr = 0,
    /// Weighted round robin: IPVS's gcd-stepped sequence of weights.
    Wrr = 1,
    /// Source hashing: the client's address (and with `SERVICE_SH_PORT` its port)
    /// picks one of [`HASH_BUCKETS`] buckets the agent dealt out by weight.
    Sh = 2,
    /// Destination hashing: the packet's destination address picks a bucket.
    Dh = 3,
    /// Least connections: the least `active × 256 + inactive`.
    Lc = 4,
    /// Weighted least connections: the least `(active × 256 + inactive) / weight`.
    Wlc = 5,
    /// Shortest expected delay: the least `(active + 1) / weight`.
    Sed = 6,
    /// Never queue: a real server without active connections, else as sed.
    Nq = 7,
    /// Weighted failover: the highest weight.
    Fo = 8,
    /// Weighted overflow: the highest weight whose active connections are not above it.
    Ovf = 9,
    /// Maglev hashing: the client's address (and with `SERVICE_MH_PORT` its port)
    /// picks a bucket of the Maglev table the agent computed; the table has
    /// `sequence_len` buckets (a prime).
    Mh = 10,
    /// Locality-based least connections: a destination address keeps its real server
    /// (its entry in `LOCALITY`) until that one is unavailable or overloaded while
    /// another is lightly loaded; then wlc chooses anew.
    Lblc = 11,
    /// Locality-based least connections with replication: a destination address has a
    /// set of real servers and goes to its least loaded; when that one is overloaded,
    /// wlc's choice joins the set.
    Lblcr = 12,
}

impl Scheduler {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Rr),
            1 => Some(Self::Wrr),
            2 => Some(Self::Sh),
            3 => Some(Self::Dh),
            4 => Some(Self::Lc),
            5 => Some(Self::Wlc),
            6 => Some(Self::Sed),
            7 => Some(Self::Nq),
            8 => Some(Self::Fo),
            9 => Some(Self::Ovf),
            10 => Some(Self::Mh),
            11 => Some(Self::Lblc),
            12 => Some(Self::Lblcr),
            _ => None,
        }
    }
}

/// `Service::flags`: Full-NAT connections carry the client's address to the real server
/// in a TCP option (TOA).
pub const SERVICE_TOA: u8 = 1 << 0;
/// `Service::flags`: sh hashes the client's port with its address (ipvsadm `-b sh-port`).
pub const SERVICE_SH_PORT: u8 = 1 << 1;
/// `Service::flags`: sh's table is followed by its fallback table (ipvsadm `-b
/// sh-fallback`): a bucket whose real server cannot take the connection sends it on.
pub const SERVICE_SH_FALLBACK: u8 = 1 << 2;
/// `Service::flags`: mh hashes the client's port with its address (ipvsadm `-b
/// mh-port`). IPVS gives sh's and mh's flags the same bits (`IP_VS_SVC_F_SCHED2`).
pub const SERVICE_MH_PORT: u8 = SERVICE_SH_PORT;
/// `Service::flags`: mh's table sends a bucket whose real server cannot take the
/// connection on to another (ipvsadm `-b mh-fallback`, `IP_VS_SVC_F_SCHED1`). The
/// agent writes the table so; the data path looks further only past an overloaded
/// real server (`SERVICE_THRESHOLDS`).
pub const SERVICE_MH_FALLBACK: u8 = SERVICE_SH_FALLBACK;

/// `Service::flags`: a new connection goes where the client's persistence template
/// sends it (`persist_prefix`), and opens or refreshes it (ipvsadm `-p`).
pub const SERVICE_PERSISTENT: u8 = 1 << 3;
/// `Service::flags`: a template whose real server has weight 0 is void (IPVS's sysctl
/// `expire_quiescent_template`, per service).
pub const SERVICE_EXPIRE_QUIESCENT: u8 = 1 << 4;
/// `Service::flags`: a connection whose real server was removed is expired by its next
/// packet (IPVS's sysctl `expire_nodest_conn`, per service).
pub const SERVICE_EXPIRE_NODEST: u8 = 1 << 5;
/// `Service::flags`: some real server has an upper threshold (ipvsadm `-x`), so rr,
/// wrr, sh, dh and mh check that the real server they pick is not overloaded
/// (`REAL_LOAD`) and, as IPVS, go on past it; without it they read no load. The
/// dynamic schedulers weigh every load anyway.
pub const SERVICE_THRESHOLDS: u8 = 1 << 6;

/// The buckets of an sh or dh table (IPVS's `IP_VS_SH_TAB_BITS`, `IP_VS_DH_TAB_BITS`: 8).
pub const HASH_BUCKETS: u32 = 256;
/// A bucket whose real server cannot take a new connection (weight 0, unresolved).
pub const NO_REAL: u32 = u32::MAX;

/// The value of a service: where its statistics and scheduling state live. A
/// firewall-mark service has one key per VIP, port and protocol it matches, whose
/// values differ only where the family does (sequence, local addresses, mask).
///
/// The agent publishes a new value only after the sequence and local addresses it
/// points at are fully written, so a packet sees either the old ones or the new ones,
/// never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Stable index of the service: its slot in `SERVICE_STATS` and `SCHED_CURSOR`.
    pub index: u32,
    /// First slot of the service's sequence of real-server ids in `SCHED_RING`.
    pub sequence_start: u32,
    /// Length of that sequence; 0 when no real server can take new connections (rr,
    /// wrr) or there is none (sh, dh, mh: their tables hold `NO_REAL` for the others;
    /// mh's is empty too when no real server has ever had a weight).
    pub sequence_len: u32,
    /// A [`Scheduler`].
    pub scheduler: u8,
    /// `SERVICE_*` bits.
    pub flags: u8,
    /// Full-NAT: how many local addresses the service has, from `locals_start` in
    /// `LOCAL_ADDRESSES`.
    pub locals_len: u8,
    pub _pad: u8,
    pub locals_start: u32,
    /// Full-NAT: the local ports a connection may take, `local_port_first` and the
    /// `local_port_count - 1` after it (host order).
    pub local_port_first: u16,
    pub local_port_count: u16,
    /// `SERVICE_PERSISTENT`: the client's network its template is for, as a prefix
    /// length of the key's family (ipvsadm `-M`).
    pub persist_prefix: u8,
    pub _spare: [u8; 7],
}

/// A service's position in its sequence, in `SCHED_CURSOR`. One counter for all CPUs,
/// so the director as a whole follows the sequence; padded to a cache line so CPUs
/// scheduling different services do not contend for one line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedCursor {
    pub turn: u64,
    pub _pad: [u64; 7],
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<Service>() == 32);
const _: () = assert!(core::mem::size_of::<ServiceSlot>() == 64);
const _: () = assert!(core::mem::size_of::<SchedCursor>() == 64);
