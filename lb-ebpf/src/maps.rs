//! Every map of the data path, in one place. The agent is their only writer.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    CONN_TABLE_SIZE, LOCAL_ADDRESS_SLOTS, MAX_INTERFACES, MAX_REALS, MAX_SERVICES, SCHED_RING_SLOTS, TAIL_CALLS_LEN,
    conn::{
        Conn, FlowKey,
        table::{ConnEntry, ConnTableInfo, IndexBucket, PoolCursor},
    },
    fragment::{FRAGMENT_TABLE_SIZE, FirstFragment, FragmentKey},
    interface::{self, Interface, InterfaceKey, InterfaceSlot},
    locality::{LOCALITY_TABLE_SIZE, Locality, LocalityKey},
    persist::{PERSIST_TABLE_SIZE, Persist, PersistKey},
    real::{RealLoad, RealServer},
    service::{self, SchedCursor, Service, ServiceKey, ServiceSlot},
    stats::{Counters, Reason},
    sync::{SYNC_RING_BYTES, SyncSettings},
};

/// The director's devices, by (attached interface, VLAN): what a frame that is the
/// director's to forward is addressed to.
#[map]
pub static INTERFACES: HashMap<InterfaceKey, Interface> = HashMap::with_max_entries(MAX_INTERFACES, BPF_F_NO_PREALLOC);

/// The devices of `INTERFACES` again, each in its slot (`InterfaceKey::slot`) unless
/// another holds it: what the data path reads first.
#[map]
pub static INTERFACE_SLOTS: Array<InterfaceSlot> = Array::with_max_entries(interface::SLOTS, 0);

/// Virtual services by (VIP, port, protocol). Not preallocated, so a replaced value is
/// freed only after every packet that may still read it is done. Room for twice the
/// services, as a change adds the new keys before it removes the old.
#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(2 * MAX_SERVICES, BPF_F_NO_PREALLOC);

/// The services of `SERVICES` again, each in its slot (`ServiceKey::slot`) unless
/// another holds it: what the data path reads first. Mappable only so that its values
/// start on a page, and each slot is one cache line.
#[map]
pub static SERVICE_SLOTS: Array<ServiceSlot> = Array::with_max_entries(service::SLOTS, BPF_F_MMAPABLE);

/// Per CPU, the copy of a service read from its slot, for the packet that read it.
#[map]
pub static SERVICE_COPY: PerCpuArray<Service> = PerCpuArray::with_max_entries(1, 0);

/// Real servers by stable id.
#[map]
pub static REALS: Array<RealServer> = Array::with_max_entries(MAX_REALS, 0);

/// The scheduling sequences of all services: real-server ids, each service owning a
/// contiguous run of slots named by its `Service` value.
#[map]
pub static SCHED_RING: Array<u32> = Array::with_max_entries(SCHED_RING_SLOTS, 0);

/// Per service, the position in its sequence.
#[map]
pub static SCHED_CURSOR: Array<SchedCursor> = Array::with_max_entries(MAX_SERVICES, 0);

/// The connection table's pool (`lb_common::conn::table`): flows and the real server
/// each was scheduled to; for NAT and Full-NAT also the reply direction. One pool for
/// all CPUs, so the whole table serves whichever CPUs the flows land on; mapped into
/// the agent's memory, which ages it in place. The agent sizes it before loading.
#[map]
pub static CONNS: Array<ConnEntry> = Array::with_max_entries(CONN_TABLE_SIZE, BPF_F_MMAPABLE);

/// The connection table's index: per bucket, the signatures and entry numbers of its
/// flows. Sized with `CONNS`.
#[map]
pub static CONN_INDEX: Array<IndexBucket> =
    Array::with_max_entries(ConnTableInfo::sized(CONN_TABLE_SIZE, 0).buckets, BPF_F_MMAPABLE);

/// The connection table's geometry and hash key, written before the program runs.
#[map]
pub static CONN_TABLE_INFO: Array<ConnTableInfo> = Array::with_max_entries(1, 0);

/// Chunks of `CONNS` handed out so far, times their size: where the next chunk starts
/// (shared by all CPUs and the agent).
#[map]
pub static CONN_CHUNKS: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per CPU, its place in its chunk of `CONNS`.
#[map]
pub static CONN_CURSOR: PerCpuArray<PoolCursor> = PerCpuArray::with_max_entries(1, 0);

/// Persistence templates: (service, client network) to real server. The agent expires
/// them by the service's timeout once no connection they sent is left.
#[map]
pub static PERSIST: LruHashMap<PersistKey, Persist> = LruHashMap::with_max_entries(PERSIST_TABLE_SIZE, 0);

/// lblc's and lblcr's tables: (service, destination address) to its real server or
/// set of real servers. The data path adds and changes entries; the agent removes and
/// shrinks them.
#[map]
pub static LOCALITY: LruHashMap<LocalityKey, Locality> = LruHashMap::with_max_entries(LOCALITY_TABLE_SIZE, 0);

/// Per real server (by id), its connections for every CPU at once, its weight and its
/// thresholds: what the least-connection schedulers weigh. Mapped into the agent's
/// memory, which changes the counts with atomic operations of its own.
#[map]
pub static REAL_LOAD: Array<RealLoad> = Array::with_max_entries(MAX_REALS, BPF_F_MMAPABLE);

/// Seconds of the kernel's CLOCK_MONOTONIC_COARSE, written by the agent every second
/// (its only writer once loaded): what connection entries are stamped with.
/// Asking the kernel's clock on every packet took about a sixth of an established
/// packet's time.
#[map]
pub static CLOCK: Array<u32> = Array::with_max_entries(1, 0);

/// Connections to announce to the sync peers (`lb_common::sync::SyncEvent`), which the
/// agent drains while it is a sync master.
#[map]
pub static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(SYNC_RING_BYTES, 0);

/// `[0]`: how the data path announces connections.
#[map]
pub static SYNC_SETTINGS: Array<SyncSettings> = Array::with_max_entries(1, 0);

/// The ports of datagrams whose first fragment was forwarded, for the fragments that
/// follow (which carry no ports).
#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FirstFragment> = LruHashMap::with_max_entries(FRAGMENT_TABLE_SIZE, 0);

/// Full-NAT local addresses, each service owning runs of slots named by its `Service`
/// value (two banks, so a changed list is written where no packet reads).
#[map]
pub static LOCAL_ADDRESSES: Array<[u8; 16]> = Array::with_max_entries(LOCAL_ADDRESS_SLOTS, 0);

/// Per CPU, the entries of the connection being opened: with the rest of a new flow's
/// path they would not fit the 512 bytes of stack.
#[map]
pub static OPENING: PerCpuArray<Opening> = PerCpuArray::with_max_entries(1, 0);

/// A new connection's entries, for each direction, and (NAT, Full-NAT) the reply's key.
pub struct Opening {
    pub conn: Conn,
    pub reply: Conn,
    pub reply_key: FlowKey,
}

/// The programs `lb_ingress` tail-calls, by `lb_common::TAIL_CALL_*` (the agent fills
/// it): `lb_toa`.
#[map]
pub static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(TAIL_CALLS_LEN, 0);

/// Per CPU, what `lb_ingress` leaves `lb_toa` to do with the packet it tail-calls it for.
#[map]
pub static TOA_WORK: PerCpuArray<ToaWork> = PerCpuArray::with_max_entries(1, 0);

/// Full-NAT's TOA, to be done on one packet.
#[derive(Clone, Copy)]
pub struct ToaWork {
    /// The client's flow, as parsed: the address and port the option carries, and the
    /// key of the connection to note it went out on.
    pub flow: FlowKey,
    /// The action the packet was forwarded with.
    pub action: u32,
    /// The MTU towards the real server (0: unknown).
    pub mtu: u16,
    pub _pad: [u8; 2],
}

#[map]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Packets passed or dropped, by [`Reason`].
#[map]
pub static VERDICT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
