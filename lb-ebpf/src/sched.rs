//! Choosing a real server for a new flow.
//!
//! rr and wrr both walk a sequence the agent computed (IPVS's order, weight-0 and
//! unresolved real servers left out): the data path only takes the next slot.

use lb_common::{
    service::{Scheduler, Service},
    stats::Reason,
};

use crate::maps::{SCHED_CURSOR, SCHED_RING};

#[inline(always)]
pub fn schedule(service: &Service) -> Result<u32, Reason> {
    match Scheduler::from_u8(service.scheduler) {
        Some(Scheduler::Rr | Scheduler::Wrr) => next_in_sequence(service),
        None => Err(Reason::NoRealServer),
    }
}

#[inline(always)]
fn next_in_sequence(service: &Service) -> Result<u32, Reason> {
    if service.sequence_len == 0 {
        return Err(Reason::NoRealServer);
    }
    let cursor = SCHED_CURSOR.get_ptr_mut(service.index).ok_or(Reason::NoRealServer)?;
    let turn = fetch_add_one(cursor);
    let slot = service.sequence_start + (turn % u64::from(service.sequence_len)) as u32;
    SCHED_RING.get(slot).copied().ok_or(Reason::NoRealServer)
}

/// `*counter += 1` atomically across CPUs, returning the old value. Rust's bpf target
/// has no `AtomicU64::fetch_add` (it lacks compare-and-swap), but the instruction set has
/// this one (BPF_ATOMIC | BPF_FETCH | BPF_ADD).
#[inline(always)]
fn fetch_add_one(counter: *mut u64) -> u64 {
    let mut value: u64 = 1;
    unsafe {
        core::arch::asm!(
            "{value} = atomic_fetch_add((u64 *)({counter} + 0), {value})",
            counter = in(reg) counter,
            value = inout(reg) value,
        );
    }
    value
}
