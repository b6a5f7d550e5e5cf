//! Every map of the data path, in one place. The agent is their only writer.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    CONN_TABLE_SIZE, MAX_REALS, MAX_SERVICES, SCHED_RING_SLOTS,
    conn::{Conn, FlowKey},
    real::RealServer,
    service::{Service, ServiceKey},
    stats::{Counters, Reason},
};

/// Virtual services by (VIP, port, protocol). Not preallocated, so a replaced value is
/// freed only after every packet that may still read it is done.
#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Real servers by stable id.
#[map]
pub static REALS: Array<RealServer> = Array::with_max_entries(MAX_REALS, 0);

/// The scheduling sequences of all services: real-server ids, each service owning a
/// contiguous run of slots named by its `Service` value.
#[map]
pub static SCHED_RING: Array<u32> = Array::with_max_entries(SCHED_RING_SLOTS, 0);

/// Per service, the position in its sequence: one counter shared by all CPUs, so the
/// director as a whole follows the sequence as IPVS does.
#[map]
pub static SCHED_CURSOR: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// Flows and the real server each was scheduled to.
#[map]
pub static CONNS: LruHashMap<FlowKey, Conn> = LruHashMap::with_max_entries(CONN_TABLE_SIZE, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Packets passed or dropped, by [`Reason`].
#[map]
pub static VERDICT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
