//! Persistence (ipvsadm `-p`): a new connection from a client whose network has a
//! live template goes to the template's real server; otherwise it is scheduled, and
//! the template remembers where it went. The agent expires templates.
//!
//! Every new connection comes through here, so the scheduler's code is in the program
//! once (and the verifier walks it once).

use lb_common::{
    persist::{Persist, PersistKey},
    real::{REAL_QUIESCED, REAL_REMOVED},
    service::{SERVICE_EXPIRE_QUIESCENT, SERVICE_PERSISTENT, Service},
    stats::Reason,
};

use crate::{
    conn,
    maps::{PERSIST, REALS},
    parse::Packet,
    sched,
};

/// The real server of a new connection: for a persistent service, as IPVS's
/// `ip_vs_sched_persist`, the template's while it is valid (`ip_vs_check_template`),
/// else the scheduler's, remembered; for any other, the scheduler's.
#[inline(always)]
pub fn schedule(packet: &Packet, service: &Service) -> Result<u32, Reason> {
    // Only what may open a connection uses a template (the scheduler refuses the rest).
    if service.flags & SERVICE_PERSISTENT == 0 || !packet.opens_connection {
        return sched::new_connection(packet, service);
    }
    let flow = &packet.flow;
    let key = PersistKey::of(&flow.src, flow.family, service.index, service.persist_prefix);
    if let Some(real) = template(&key, service) {
        return Ok(real);
    }
    let real = sched::new_connection(packet, service)?;
    remember(&key, real);
    Ok(real)
}

/// The real server of the client's valid template, which this connection refreshes.
/// Functions of their own, off the stack of the schedulers they sit beside.
#[inline(never)]
fn template(key: &PersistKey, service: &Service) -> Option<u32> {
    let template = PERSIST.get_ptr_mut(key)?;
    // SAFETY: a map value, valid for the program's run; its fields are read and written
    // whole.
    let template = unsafe { &mut *template };
    if !valid(template.real, service) {
        return None;
    }
    let now = conn::now();
    if template.last_used != now {
        template.last_used = now;
    }
    Some(template.real)
}

/// A new template: the client's network goes to `real`. A full table evicts its least
/// recently used template, so this fails only on a failed allocation, and the
/// connection is served all the same.
#[inline(never)]
fn remember(key: &PersistKey, real: u32) {
    let _ = PERSIST.insert(key, Persist { real, last_used: conn::now() }, 0);
}

/// Whether a template may still send connections to `real`: it is still a real server
/// of the service, not quiesced where the service expires such templates, and
/// reachable (a client held on an unresolved one would be dropped at every retry,
/// each keeping the template alive).
#[inline(always)]
fn valid(real: u32, service: &Service) -> bool {
    let Some(real) = REALS.get(real) else { return false };
    let void = if service.flags & SERVICE_EXPIRE_QUIESCENT != 0 { REAL_REMOVED | REAL_QUIESCED } else { REAL_REMOVED };
    real.flags & void == 0 && real.ifindex != 0
}
