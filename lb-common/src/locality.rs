//! lblc's and lblcr's tables, as IPVS keeps them per service (`ip_vs_lblc_table`,
//! `ip_vs_lblcr_table`): a packet's destination address remembers the real server
//! (lblc) or the set of real servers (lblcr) its connections go to, so one
//! destination's traffic (a cache's objects) stays on few real servers.

use crate::service::NO_REAL;

/// An entry's key: the service (by index: a firewall-mark service's VIPs share it),
/// the packet's destination address, and the scheduler that wrote it (a service whose
/// scheduler changes starts from an empty table, as IPVS's does).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalityKey {
    pub destination: [u8; 16],
    pub service: u32,
    pub family: u8,
    /// A `Scheduler`: lblc or lblcr.
    pub scheduler: u8,
    pub _pad: [u8; 2],
}

impl LocalityKey {
    #[inline(always)]
    pub const fn of(destination: &[u8; 16], family: u8, service: u32, scheduler: u8) -> Self {
        Self { destination: *destination, service, family, scheduler, _pad: [0; 2] }
    }
}

/// The real servers an lblcr set holds at most. A set grows only while every member
/// is overloaded, so it rarely comes near: past it, a connection goes where wlc sends
/// it without joining the set.
pub const LOCALITY_SET_SIZE: usize = 16;

/// Where a destination's connections go, and when they last did (seconds of `CLOCK`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locality {
    /// lblc: the real server, in the first slot. lblcr: the set's members from the
    /// first slot, in the order they joined, then `NO_REAL` (IPVS's list has the newest
    /// first: the data path walks it from the last member down).
    pub reals: [u32; LOCALITY_SET_SIZE],
    /// When a new connection last used the entry (IPVS's `lastuse`).
    pub last_used: u32,
    /// lblcr: when a member last joined or left the set (IPVS's `set.lastmod`).
    pub last_modified: u32,
}

impl Locality {
    /// A new entry whose one real server (or member) is `real`, at `now`.
    #[inline(always)]
    pub const fn of(real: u32, now: u32) -> Self {
        let mut reals = [NO_REAL; LOCALITY_SET_SIZE];
        reals[0] = real;
        Self { reals, last_used: now, last_modified: now }
    }
}

/// How many entries the director holds, for all services; the least recently used
/// goes first (the agent ages them by IPVS's rules long before, in most tables).
pub const LOCALITY_TABLE_SIZE: u32 = 1 << 17;

const _: () = assert!(core::mem::size_of::<LocalityKey>() == 24);
const _: () = assert!(core::mem::size_of::<Locality>() == 4 * LOCALITY_SET_SIZE + 8);
