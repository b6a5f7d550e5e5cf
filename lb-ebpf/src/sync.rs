//! Connection synchronisation: a connection the sync peers must learn of (established,
//! closing, or a stateless one's third packet) goes into `SYNC_EVENTS` for the agent,
//! which drains it every few milliseconds and batches them into authenticated
//! datagrams. Nothing here waits, wakes the agent, or calls the kernel beyond the
//! ring's reservation.

use aya_ebpf::bindings::BPF_RB_NO_WAKEUP;
use lb_common::{
    conn::{Conn, FlowKey},
    stats::Reason,
    sync::{SyncEvent, announced},
};

use crate::{
    maps::{SYNC_EVENTS, SYNC_SETTINGS},
    stats,
};

/// Announces the connection of client entry `conn` at `flow` again if its packet came
/// after `quiet` seconds without one, long enough that its peers' copy may be near its
/// end. Asked only when a connection's stamp moves to another second.
#[inline(always)]
pub fn after_quiet(flow: &FlowKey, conn: &Conn, quiet: u32) {
    let Some(settings) = SYNC_SETTINGS.get(0) else { return };
    if settings.quiet != 0 && quiet >= settings.quiet && !conn.is_reply() && announced(flow.protocol, conn) {
        lb_sync_announce(flow, conn);
    }
}

/// Announces the connection whose client entry `conn` is keyed `flow`, if this director
/// announces at all. A BPF global function: the verifier checks it once, not on every
/// path that reaches it. Returns 0, or 1 when the ring was full (counted).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_sync_announce(flow: *const FlowKey, conn: *const Conn) -> u32 {
    if flow.is_null() || conn.is_null() || SYNC_SETTINGS.get(0).is_none_or(|settings| settings.announce == 0) {
        return 0;
    }
    let Some(mut event) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        stats::count_reason(Reason::SyncRingFull);
        return 1;
    };
    // SAFETY: both pointers were checked not null; the verifier holds them to their
    // types' sizes. The entry is the ring's memory, written whole before it is submitted.
    unsafe {
        let slot = event.as_mut_ptr();
        (*slot).flow = *flow;
        (*slot).conn = *conn;
    }
    // The agent drains the ring on its own clock: waking it for every connection would
    // cost the data path an interrupt's work and give it datagrams of one record.
    event.submit(u64::from(BPF_RB_NO_WAKEUP));
    0
}
