//! lblc and lblcr (IPVS's `ip_vs_lblc.c`, `ip_vs_lblcr.c`): a new connection goes
//! where its destination address's entry in `LOCALITY` says while that real server can
//! take it and is not overloaded (IPVS's `is_overloaded`: more active connections than
//! its weight while another real server of the service has fewer than half of its);
//! else wlc chooses, and lblc's entry takes the new real server where lblcr's set
//! takes it in beside the others.
//!
//! Entries are changed with plain stores of whole words: two CPUs opening connections
//! to one destination at the same moment may each write, and one's write is lost (the
//! replica one of them added to an lblcr set, or lblc's choice of one), never torn. The
//! agent removes idle entries and shrinks sets (`lb-agent`'s `expiry::locality`).

use aya_ebpf::{cty::c_void, helpers::bpf_loop};
use lb_common::{
    conn::FlowKey,
    locality::{LOCALITY_SET_SIZE, Locality, LocalityKey},
    real::REAL_REMOVED,
    service::{NO_REAL, Scheduler, Service},
    stats::Reason,
};

use crate::{
    conn,
    maps::{LOCALITY, REAL_LOAD, REALS, SCHED_RING},
    sched::{self, Scan},
};

/// lblc's or lblcr's real server for a new connection of `flow` (IPVS's
/// `ip_vs_lblc_schedule`, `ip_vs_lblcr_schedule`).
#[inline(never)]
pub fn schedule(flow: &FlowKey, service: &Service) -> Result<u32, Reason> {
    let key = LocalityKey::of(&flow.dst, flow.family, service.index, service.scheduler);
    let Some(entry) = LOCALITY.get_ptr_mut(key) else {
        let real = sched::least_loaded(service)?;
        remember(&key, real);
        return Ok(real);
    };
    // SAFETY: a map value, valid for the program's run; its fields are read and written
    // whole.
    let entry = unsafe { &mut *entry };
    let now = conn::now();
    if entry.last_used != now {
        entry.last_used = now;
    }
    if service.scheduler == Scheduler::Lblc as u8 { cached(entry, service) } else { replicated(entry, service, now) }
}

/// lblc: the entry's real server while it is available, has a weight and is not
/// overloaded; else wlc's, which the entry keeps from now on.
#[inline(always)]
fn cached(entry: &mut Locality, service: &Service) -> Result<u32, Reason> {
    let real = entry.reals[0];
    let weighted = REAL_LOAD.get(real).is_some_and(|load| load.weight > 0);
    if available(real, service.index) && weighted && !is_overloaded(real, service) {
        return Ok(real);
    }
    let real = sched::least_loaded(service)?;
    entry.reals[0] = real;
    Ok(real)
}

/// lblcr: the set's least loaded member while it is not overloaded; else wlc's, which
/// joins the set. (IPVS also drops the set's most loaded member here once the set has
/// not changed for `lblcr_expiration`; the agent's ager does that instead.)
#[inline(always)]
fn replicated(entry: &mut Locality, service: &Service, now: u32) -> Result<u32, Reason> {
    if let Ok(least) = least_loaded_member(&entry.reals, service.index)
        && !is_overloaded(least, service)
    {
        return Ok(least);
    }
    let real = sched::least_loaded(service)?;
    join(entry, real, now);
    Ok(real)
}

/// A new entry: `real`, used now. A full table evicts its least recently used entry,
/// so this fails only on a failed allocation, and the connection is served all the
/// same.
#[inline(never)]
fn remember(key: &LocalityKey, real: u32) {
    let _ = LOCALITY.insert(key, Locality::of(real, conn::now()), 0);
}

/// IPVS's `ip_vs_dest_set_insert`: `real` joins the set after its members, unless it
/// is one. A full set stays as it is: the connection goes to `real` all the same.
#[inline(always)]
fn join(entry: &mut Locality, real: u32, now: u32) {
    for slot in 0..LOCALITY_SET_SIZE {
        let member = entry.reals[slot];
        if member == real {
            return;
        }
        if member == NO_REAL {
            entry.reals[slot] = real;
            entry.last_modified = now;
            return;
        }
    }
}

/// IPVS's `IP_VS_DEST_F_AVAILABLE`: still a real server of `service`. And resolved:
/// a connection sent to one that is not would be dropped.
#[inline(always)]
fn available(real: u32, service: u32) -> bool {
    REALS.get(real).is_some_and(|real| real.flags & REAL_REMOVED == 0 && real.ifindex != 0 && real.service == service)
}

/// A scan of an lblcr set: `bpf_loop`'s context. The set is the entry's, in the map.
struct SetScan {
    set: *const [u32; LOCALITY_SET_SIZE],
    /// The service's index: a member must be one of its real servers.
    service: u32,
    scan: Scan,
}

/// IPVS's `ip_vs_dest_set_min`: the available member of the set with the least
/// connections per weight (wlc's rule), the first of equals in IPVS's list order,
/// which has the newest member first.
#[inline(never)]
fn least_loaded_member(set: &[u32; LOCALITY_SET_SIZE], service: u32) -> Result<u32, Reason> {
    let mut members = SetScan { set, service, scan: Scan::new(Scheduler::Lblcr as u8) };
    // SAFETY: `weigh_member` is a static function of the program, `members` lives on
    // this frame for the whole call.
    unsafe {
        bpf_loop(LOCALITY_SET_SIZE as u32, weigh_member as *mut c_void, (&raw mut members).cast(), 0);
    }
    members.scan.best()
}

/// The next member of a [`SetScan`], from the last slot down. Answers 0: go on.
extern "C" fn weigh_member(index: u64, members: *mut c_void) -> i64 {
    // SAFETY: `least_loaded_member`'s `SetScan`, for the duration of its `bpf_loop`;
    // the set is a map value, valid for the program's run.
    let members = unsafe { &mut *members.cast::<SetScan>() };
    let slot = (LOCALITY_SET_SIZE as u64).wrapping_sub(index + 1) as usize;
    let Some(&real) = unsafe { &*members.set }.get(slot) else { return 0 };
    if real != NO_REAL && available(real, members.service) {
        members.scan.weigh(real);
    }
    0
}

/// IPVS's `is_overloaded`: `real` has more active connections than its weight, while
/// some real server of the service has fewer than half of its.
#[inline(always)]
fn is_overloaded(real: u32, service: &Service) -> bool {
    let Some(load) = REAL_LOAD.get(real) else { return false };
    load.active.max(0) > i64::from(load.weight) && has_spare(service)
}

/// A search of a service's run for a real server with spare room: `bpf_loop`'s
/// context.
struct Spare {
    start: u32,
    found: bool,
}

/// Whether a real server of the service's run has fewer active connections than half
/// its weight. The run is the real servers that may take a connection: IPVS also
/// looks at the quiesced ones, which never qualify.
#[inline(never)]
fn has_spare(service: &Service) -> bool {
    let mut spare = Spare { start: service.sequence_start, found: false };
    // SAFETY: `find_spare` is a static function of the program, `spare` lives on this
    // frame for the whole call.
    unsafe {
        bpf_loop(service.sequence_len, find_spare as *mut c_void, (&raw mut spare).cast(), 0);
    }
    spare.found
}

/// The next real server of a [`Spare`] search. Answers 1 to stop (found), 0 to go on.
extern "C" fn find_spare(index: u64, spare: *mut c_void) -> i64 {
    // SAFETY: `has_spare`'s `Spare`, for the duration of its `bpf_loop`.
    let spare = unsafe { &mut *spare.cast::<Spare>() };
    let Some(&id) = SCHED_RING.get(spare.start.wrapping_add(index as u32)) else { return 1 };
    let Some(load) = REAL_LOAD.get(id) else { return 0 };
    spare.found = load.active.max(0) * 2 < i64::from(load.weight);
    i64::from(spare.found)
}
