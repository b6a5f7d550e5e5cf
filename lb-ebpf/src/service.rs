//! Is the packet for a virtual service? (VIP, protocol, port), then the VIP's all-ports
//! service.

use lb_common::{
    conn::FlowKey,
    service::{Service, ServiceKey},
    stats::Reason,
};

use crate::maps::SERVICES;

#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Result<Service, Reason> {
    let mut key = ServiceKey { vip: flow.dst, port: flow.dst_port, protocol: flow.protocol, family: flow.family };
    if let Some(service) = SERVICES.get_ptr(key) {
        return Ok(unsafe { *service });
    }
    key.port = [0; 2];
    match SERVICES.get_ptr(key) {
        Some(service) => Ok(unsafe { *service }),
        None => Err(Reason::NotAService),
    }
}
