//! The connection table: a known flow keeps its real server; a new one is scheduled
//! and remembered.

use lb_common::{
    conn::{Conn, FlowKey},
    service::Service,
    stats::Reason,
};

use crate::{maps::CONNS, sched};

/// The real server a packet goes to, and whether its flow is new.
pub struct Scheduled {
    pub real: u32,
    pub new: bool,
}

#[inline(always)]
pub fn lookup_or_schedule(flow: &FlowKey, service: &Service) -> Result<Scheduled, Reason> {
    if let Some(conn) = CONNS.get_ptr(flow) {
        return Ok(Scheduled { real: unsafe { (*conn).real }, new: false });
    }
    let real = sched::schedule(service)?;
    // A full table evicts its least recently used flow; an insert cannot fail otherwise,
    // and if it did the next packet would simply be scheduled again.
    let _ = CONNS.insert(flow, Conn { real }, 0);
    Ok(Scheduled { real, new: true })
}
