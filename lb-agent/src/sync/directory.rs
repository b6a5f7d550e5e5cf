//! What the sync daemon must know of the running configuration to translate between a
//! director's own ids and the words both directors share: a service by its virtual
//! address, port and protocol (as the data path finds it), a real server by its
//! service, address and port. Built from what the maps hold after each apply.

use std::collections::HashMap;

use lb_common::{
    conn::FlowKey,
    real::{REAL_REMOVED, RealServer},
    service::{Service, ServiceKey},
};

use super::wire::Endpoint;

#[derive(Debug, Default)]
pub struct Directory {
    services: HashMap<ServiceKey, Service>,
    /// Per (service index, family): one of its values (a firewall-mark service's keys
    /// share them), for its flags and persistence prefix.
    by_index: HashMap<(u32, u8), Service>,
    reals: HashMap<u32, RealServer>,
    /// Per (service index, address): its real servers' ids (one, unless a removed one
    /// still has connections beside a new one).
    real_ids: HashMap<(u32, [u8; 16]), Vec<u32>>,
}

impl Directory {
    pub fn new(services: HashMap<ServiceKey, Service>, reals: HashMap<u32, RealServer>) -> Self {
        let by_index = services.iter().map(|(key, service)| ((service.index, key.family), *service)).collect();
        let mut real_ids: HashMap<_, Vec<u32>> = HashMap::new();
        for (&id, real) in &reals {
            real_ids.entry((real.service, real.address)).or_default().push(id);
        }
        Self { services, by_index, reals, real_ids }
    }

    /// The service a client's flow to `vip`:`port` belongs to: its own port's, else
    /// the VIP's port-0 service, as the data path looks it up.
    pub fn service(&self, protocol: u8, family: u8, (vip, port): Endpoint) -> Option<&Service> {
        let mut key = ServiceKey { vip, port: port.to_be_bytes(), protocol, family };
        self.services.get(&key).or_else(|| {
            key.port = [0; 2];
            self.services.get(&key)
        })
    }

    pub fn service_by_index(&self, index: u32, family: u8) -> Option<&Service> {
        self.by_index.get(&(index, family))
    }

    pub fn real(&self, id: u32) -> Option<&RealServer> {
        self.reals.get(&id)
    }

    /// The id of `service`'s real server at `address` serving the flow `flow` on
    /// `port`; one still configured before a removed one.
    pub fn real_id(&self, service: u32, flow: &FlowKey, (address, port): Endpoint) -> Option<u32> {
        let ids = self.real_ids.get(&(service, address))?;
        let serving = |id: &&u32| self.reals.get(id).is_some_and(|real| serves_on(real, flow) == port);
        let removed = |id: &&u32| self.reals.get(id).is_some_and(|real| real.flags & REAL_REMOVED != 0);
        ids.iter().filter(serving).min_by_key(removed).copied()
    }
}

/// The port `real` serves `flow` on: its own, or (none given) the one the client asked
/// for, as the data path's `forward::real_port`.
pub fn serves_on(real: &RealServer, flow: &FlowKey) -> u16 {
    let port = if real.port == [0; 2] { flow.dst_port } else { real.port };
    u16::from_be_bytes(port)
}
