//! The connection table: a known flow keeps its real server; a new one is remembered
//! once it has been forwarded.

use lb_common::conn::{Conn, FlowKey};

use crate::maps::CONNS;

/// Where a packet's flow goes, and whether the flow is new.
pub struct Scheduled {
    pub real: u32,
    pub service: u32,
    pub new: bool,
}

#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Option<Scheduled> {
    let conn = unsafe { *CONNS.get_ptr(flow)? };
    Some(Scheduled { real: conn.real, service: conn.service, new: false })
}

#[inline(always)]
pub fn remember(flow: &FlowKey, scheduled: &Scheduled) {
    // A full table evicts its least recently used flow; an insert cannot fail otherwise,
    // and if it did the next packet would simply be scheduled again.
    let _ = CONNS.insert(flow, Conn { real: scheduled.real, service: scheduled.service }, 0);
}
