//! The contract between the XDP data path (`lb-ebpf`) and the agent (`lb-agent`).
//!
//! Every map key and value is `#[repr(C)]` with its padding spelled out, so both sides
//! agree on the bytes. Addresses are stored as 16 bytes in network order; an IPv4 address
//! fills the first four and leaves the rest zero, and `family` tells which it is.
#![no_std]

pub mod conn;
pub mod decap;
pub mod fragment;
pub mod interface;
pub mod locality;
pub mod persist;
pub mod real;
pub mod service;
pub mod state;
pub mod stats;
pub mod sync;

#[cfg(feature = "user")]
mod pod;

/// `family` value of an IPv4 key or entry.
pub const FAMILY_IPV4: u8 = 4;
/// `family` value of an IPv6 key or entry.
pub const FAMILY_IPV6: u8 = 6;

/// IP protocol numbers of the transports a virtual service can carry.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Virtual services the data path can hold (also the size of the per-service tables).
pub const MAX_SERVICES: u32 = 1024;
/// Devices (attached interfaces and VLANs on them) the director receives clients on.
pub const MAX_INTERFACES: u32 = 256;
/// Real servers the data path can hold, across all services.
pub const MAX_REALS: u32 = 16384;
/// Slots of the scheduler ring shared by all services' sequences (16 MiB): room for
/// some 60 Maglev tables of the default 65537 buckets, or some 30 that one reload
/// replaces (a replaced table keeps its slots for a second after the new one is out).
pub const SCHED_RING_SLOTS: u32 = 1 << 22;
/// Longest wrr cycle of one service; longer ones are scaled down.
pub const MAX_SEQUENCE_LEN: u32 = 1 << 16;
/// Default size of the connection table, in entries (a NAT or Full-NAT connection takes
/// two); the agent may resize it before loading. Twice the million connections a
/// director is sized for: in a full table every new connection makes one give way (a
/// live one, too). 104 bytes of kernel memory an entry (its own 96 and two 4-byte
/// index slots), 208 MiB.
pub const CONN_TABLE_SIZE: u32 = 1 << 21;
/// Full-NAT local addresses of one service, per family.
pub const MAX_LOCAL_ADDRESSES: u32 = 16;
/// Slots of `LOCAL_ADDRESSES`: two banks per service, so a changed list is written
/// where no packet reads and then published with the service's value.
pub const LOCAL_ADDRESS_SLOTS: u32 = 2 * MAX_SERVICES * MAX_LOCAL_ADDRESSES;

/// Slots of the program array `lb_ingress` tail-calls through, and what each holds.
pub const TAIL_CALLS_LEN: u32 = 1;
/// `lb_toa`: Full-NAT's TOA option, and the SYN-ACK's MSS that leaves room for it.
pub const TAIL_CALL_TOA: u32 = 0;

/// The version of the maps' layout: their names, kinds, keys and values, and what
/// `lb_ingress` and `lb_toa` pass each other. An agent adopts only maps pinned by an
/// agent of the same layout (they live under `pin_path`, in `layout-LAYOUT`), so a
/// change to any of them must raise it.
pub const LAYOUT: u32 = 7;

/// Names of the maps and programs in the object, shared so neither side spells them twice.
pub mod names {
    pub const INGRESS_PROGRAM: &str = "lb_ingress";
    pub const TOA_PROGRAM: &str = "lb_toa";
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    pub const INTERFACES: &str = "INTERFACES";
    pub const INTERFACE_SLOTS: &str = "INTERFACE_SLOTS";
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_SLOTS: &str = "SERVICE_SLOTS";
    pub const SERVICE_COPY: &str = "SERVICE_COPY";
    pub const REALS: &str = "REALS";
    pub const SCHED_RING: &str = "SCHED_RING";
    pub const SCHED_CURSOR: &str = "SCHED_CURSOR";
    pub const CONNS: &str = "CONNS";
    pub const CONN_INDEX: &str = "CONN_INDEX";
    pub const CONN_TABLE_INFO: &str = "CONN_TABLE_INFO";
    pub const CONN_CHUNKS: &str = "CONN_CHUNKS";
    pub const CONN_CURSOR: &str = "CONN_CURSOR";
    pub const PERSIST: &str = "PERSIST";
    pub const LOCALITY: &str = "LOCALITY";
    pub const REAL_LOAD: &str = "REAL_LOAD";
    pub const CLOCK: &str = "CLOCK";
    pub const LOCAL_ADDRESSES: &str = "LOCAL_ADDRESSES";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const VERDICT_STATS: &str = "VERDICT_STATS";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const OPENING: &str = "OPENING";
    pub const TOA_WORK: &str = "TOA_WORK";
    pub const SYNC_EVENTS: &str = "SYNC_EVENTS";
    pub const SYNC_SETTINGS: &str = "SYNC_SETTINGS";

    /// Every map of `lb_ingress` and `lb_toa`: all are pinned, so that a restarted
    /// agent's program shares every one with the program it replaces (the old
    /// `lb_ingress` tail-calls the new `lb_toa` for a moment: `TOA_WORK` too).
    pub const PINNED: [&str; 27] = [
        TAIL_CALLS,
        INTERFACES,
        INTERFACE_SLOTS,
        SERVICES,
        SERVICE_SLOTS,
        SERVICE_COPY,
        REALS,
        SCHED_RING,
        SCHED_CURSOR,
        CONNS,
        CONN_INDEX,
        CONN_TABLE_INFO,
        CONN_CHUNKS,
        CONN_CURSOR,
        PERSIST,
        LOCALITY,
        REAL_LOAD,
        CLOCK,
        LOCAL_ADDRESSES,
        SERVICE_STATS,
        REAL_STATS,
        VERDICT_STATS,
        FRAGMENTS,
        OPENING,
        TOA_WORK,
        SYNC_EVENTS,
        SYNC_SETTINGS,
    ];
}
