//! The connection table: a known flow keeps its real server; a new one is scheduled
//! and remembered.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use lb_common::{
    FAMILY_IPV4,
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
pub fn lookup_or_schedule(ctx: &XdpContext, flow: &FlowKey, service: &Service) -> Result<Scheduled, Reason> {
    if let Some(conn) = CONNS.get_ptr(flow) {
        return Ok(Scheduled { real: unsafe { (*conn).real }, new: false });
    }
    let real = sched::schedule(service)?;
    // A full table evicts its least recently used flow; an insert cannot fail otherwise,
    // and if it did the next packet would simply be scheduled again.
    let _ = CONNS.insert(flow, Conn { real }, 0);
    log_new_flow(ctx, flow, service, real);
    Ok(Scheduled { real, new: true })
}

/// For an operator tracing scheduling decisions (`lb-agent --ebpf-log-level debug`);
/// off by default, when it costs one load and one branch per new flow.
#[inline(always)]
fn log_new_flow(ctx: &XdpContext, flow: &FlowKey, service: &Service, real: u32) {
    let port = u16::from_be_bytes(flow.src_port);
    if flow.family == FAMILY_IPV4 {
        let client = [flow.src[0], flow.src[1], flow.src[2], flow.src[3]];
        debug!(ctx, "new flow from {:i}:{} (service {}) to real server {}", client, port, service.index, real);
    } else {
        debug!(ctx, "new flow from [{:i}]:{} (service {}) to real server {}", flow.src, port, service.index, real);
    }
}
