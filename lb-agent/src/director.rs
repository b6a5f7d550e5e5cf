//! The director: the agent's account of what the data path holds, and the one place
//! that changes it.
//!
//! Applying a configuration is a reconciliation: first plan what every map should hold
//! (stable ids, real servers, sequences in free ring slots, services), touching nothing;
//! a configuration the plan refuses changes nothing. Then attach to new interfaces, and
//! write only what differs, in an order that a packet arriving at any moment can follow:
//! interfaces and real servers first, then the sequences into fresh slots, then the
//! services that point at them, then removals. Connection entries are never touched, so
//! no established connection moves.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use lb_api::{ConnectionStatus, RealStatus, ServiceRef, ServiceStatus, Stats};
use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_LOCAL_ADDRESSES, MAX_REALS, MAX_SERVICES, SCHED_RING_SLOTS,
    interface::{Interface, InterfaceKey},
    real::{Forwarding, REAL_QUIESCED, REAL_REMOVED, RealServer, outer_ipv4_sum},
    service::{
        SERVICE_EXPIRE_NODEST, SERVICE_EXPIRE_QUIESCENT, SERVICE_MH_FALLBACK, SERVICE_MH_PORT, SERVICE_PERSISTENT,
        SERVICE_SH_FALLBACK, SERVICE_SH_PORT, SERVICE_THRESHOLDS, SERVICE_TOA, Scheduler, Service, ServiceKey,
    },
    stats::{Counters, Reason},
};
pub use saved::SavedDirector;
use tokio::sync::watch;

use crate::{
    config::{Config, Endpoint, Match, Protocol, Real, SchedulerFlag, Timeouts, VirtualService, edit},
    connections,
    dataplane::{Dataplane, Limits},
    expiry::{Ageing, Localizing, Persisting},
    health::{self, Down},
    neighbour::{Link, Links},
    registry::Registry,
    sched::{self, Candidate, Hashing, Ring, Slots},
    sync,
};

mod saved;

/// How long a released id or ring slot waits before it is reused: far longer than any
/// packet that read the old maps can still be in the program (microseconds), and no
/// wait an operator notices.
const QUARANTINE: Duration = Duration::from_secs(1);

/// A real server's owner key: it is the same real server only in the same service.
type RealOwner = (String, IpAddr);

pub struct Director {
    dataplane: Dataplane,
    ids: Ids,
    written: Written,
    running: Option<Running>,
    /// Where the sync daemon hears of each configuration applied.
    sync: Option<watch::Sender<sync::Orders>>,
}

/// Which of the running configurations a status shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// What the maps serve (ipvsadm -L).
    Serving,
    /// What the file says (ipvsadm -S).
    Configured,
}

/// The configuration the agent runs, and what the maps hold of it.
struct Running {
    config: Config,
    /// The links the maps were written with.
    links: Links,
    /// The real servers whose health check failed.
    down: Down,
    /// What the maps serve: `config` with the failed real servers taken out (or the
    /// sorry server in their place).
    serving: Config,
}

/// Id bookkeeping, cloned for planning so a refused change leaves it as it was.
#[derive(Clone)]
struct Ids {
    services: Registry<String>,
    reals: Registry<RealOwner>,
    ring: Ring,
    /// Each configured real server's last weight above 0 (IPVS's `last_weight`, for
    /// mh), remembered from change to change while it stays configured; an agent that
    /// starts anew knows only the weights it is given.
    last_weights: HashMap<RealOwner, u32>,
}

/// What the maps hold now, as far as the agent wrote them.
#[derive(Default)]
struct Written {
    interfaces: HashMap<InterfaceKey, Interface>,
    services: HashMap<ServiceKey, Service>,
    reals: HashMap<u32, RealServer>,
    /// Per service index and family: where its sequence is, and the sequence.
    sequences: HashMap<(u32, u8), (Slots, Vec<u32>)>,
    /// Per service index: the first slot of its Full-NAT local addresses, and them.
    locals: HashMap<u32, (u32, Vec<[u8; 16]>)>,
}

/// Everything one change writes, computed before anything is written.
struct Plan {
    ids: Ids,
    /// Services and real servers the configuration no longer has: retired once the
    /// maps no longer name them.
    gone_services: Vec<String>,
    gone_reals: Vec<RealOwner>,
    fresh_services: Vec<u32>,
    fresh_reals: Vec<u32>,
    interfaces: HashMap<InterfaceKey, Interface>,
    reals: HashMap<u32, RealServer>,
    /// Each real server's weight and thresholds, for the dynamic schedulers.
    limits: Vec<(u32, Limits)>,
    services: HashMap<ServiceKey, Service>,
    /// Sequences to write: ((service index, family), slots, sequence).
    sequences: Vec<((u32, u8), Slots, Vec<u32>)>,
    /// Local addresses to write: (service index, first slot, addresses).
    locals: Vec<(u32, u32, Vec<[u8; 16]>)>,
}

impl Director {
    pub fn new(dataplane: Dataplane) -> Self {
        let ids = Ids {
            services: Registry::new(MAX_SERVICES),
            reals: Registry::new(MAX_REALS),
            ring: Ring::new(SCHED_RING_SLOTS),
            last_weights: HashMap::new(),
        };
        Self { dataplane, ids, written: Written::default(), running: None, sync: None }
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The configuration as the file says it.
    pub fn running_config(&self) -> Option<&Config> {
        self.running.as_ref().map(|running| &running.config)
    }

    /// What the maps serve of it, health considered.
    pub fn serving_config(&self) -> Option<&Config> {
        self.running.as_ref().map(|running| &running.serving)
    }

    /// The connection timeouts of the running configuration (IPVS's defaults before
    /// the first).
    pub fn timeouts(&self) -> Timeouts {
        self.running_config().map_or_else(Timeouts::default, |config| config.timeouts)
    }

    /// What the ager needs of the running configuration: its timeouts, each
    /// persistent service's templates' timeout and networks, and each lblc or lblcr
    /// service's expiration and real servers.
    pub fn ageing(&self) -> Ageing {
        let Some(config) = self.serving_config() else { return Ageing::default() };
        let persistence = config
            .services
            .iter()
            .filter_map(|service| {
                let (timeout, prefixes) = (service.persistence?.timeout, service.persistence_prefixes()?);
                Some((self.ids.services.get(&service.name)?, Persisting { timeout, prefixes }))
            })
            .collect();
        Ageing { timeouts: config.timeouts, persistence, locality: self.localizing(config) }
    }

    /// Each lblc or lblcr service's expiration and real servers, by index.
    fn localizing(&self, config: &Config) -> HashMap<u32, Localizing> {
        let localizing = |service: &VirtualService| {
            let expiration = service.locality_expiration()?;
            let owner = |real: &Real| (service.name.clone(), real.address);
            let reals = service.reals.iter().filter_map(|real| self.ids.reals.get(&owner(real))).collect();
            let scheduler = Scheduler::from(service.scheduler) as u8;
            Some((self.ids.services.get(&service.name)?, Localizing { scheduler, expiration, reals }))
        };
        config.services.iter().filter_map(localizing).collect()
    }

    /// Makes the director run `config`, with real servers reached over `links` and
    /// those `down` failing their checks: the maps, and the interfaces the program is
    /// attached to. A refused configuration changes nothing.
    pub fn apply(&mut self, config: Config, links: Links, down: Down) -> Result<()> {
        let serving = health::serving(&config, &down);
        let plan = self.plan(&serving, &links)?;
        // Written ahead: whatever the maps name from here on, an agent started after
        // this one (even if this one dies midway) knows whose it is.
        self.save(&plan.ids, &down).context("saving the agent's state before changing the maps")?;
        self.attach(&serving)?;
        self.commit(plan)?;
        self.detach_others(&serving)?;
        if let Err(err) = self.save(&self.ids, &down) {
            log::error!("saving the agent's state: {err:#}; an agent started after this one adopts the maps as before");
        }
        self.running = Some(Running { config, links, down, serving });
        self.publish_sync();
        Ok(())
    }

    /// Has the sync daemon follow every configuration applied from now on.
    pub fn tell_sync(&mut self, orders: watch::Sender<sync::Orders>) {
        self.sync = Some(orders);
        self.publish_sync();
    }

    /// Tells the sync daemon what runs: `sync:`, the timeouts, and what the maps hold.
    fn publish_sync(&self) {
        let Some(orders) = &self.sync else { return };
        let config = self.running_config();
        orders.send_replace(sync::Orders {
            sync: config.and_then(|config| config.sync.clone()),
            timeouts: self.timeouts(),
            directory: Arc::new(self.sync_directory()),
        });
    }

    /// What the maps hold, as the sync daemon translates by it.
    pub fn sync_directory(&self) -> sync::Directory {
        sync::Directory::new(self.written.services.clone(), self.written.reals.clone())
    }

    /// Like [`Director::apply`], for the maps alone, every real server healthy: the
    /// attachments stay as they are (test beds run the program without attaching it
    /// anywhere).
    pub fn apply_maps(&mut self, config: Config, links: Links) -> Result<()> {
        let plan = self.plan(&config, &links)?;
        self.commit(plan)?;
        self.running = Some(Running { serving: config.clone(), config, links, down: Down::default() });
        Ok(())
    }

    /// Re-applies the running configuration if the real servers' links changed.
    pub fn relink(&mut self, links: Links) -> Result<()> {
        match &self.running {
            Some(running) if running.links != links => {
                log::info!("real servers' links changed; updating the data path");
                let (config, down) = (running.config.clone(), running.down.clone());
                self.apply(config, links, down)
            }
            _ => Ok(()),
        }
    }

    /// Re-applies the running configuration if the failed real servers changed.
    pub fn set_down(&mut self, down: Down) -> Result<()> {
        match &self.running {
            Some(running) if running.down != down => {
                let (config, links) = (running.config.clone(), running.links.clone());
                self.apply(config, links, down)
            }
            _ => Ok(()),
        }
    }

    /// Attaches to the interfaces of `config` that are not attached (in that mode); on
    /// failure, undoes what this call attached.
    fn attach(&mut self, config: &Config) -> Result<()> {
        let mut attached_now = Vec::new();
        for interface in &config.interfaces {
            match self.dataplane.attach(&interface.name, interface.xdp_mode) {
                Ok(true) => attached_now.push(interface.name.as_str()),
                Ok(false) => {}
                Err(err) => {
                    for name in attached_now {
                        let _ = self.dataplane.detach(name);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    fn detach_others(&mut self, config: &Config) -> Result<()> {
        let stale: Vec<String> = self
            .dataplane
            .attached()
            .filter(|name| !config.interfaces.iter().any(|interface| interface.name == *name))
            .map(str::to_owned)
            .collect();
        for name in stale {
            self.dataplane.detach(&name)?;
        }
        Ok(())
    }

    fn plan(&self, config: &Config, links: &Links) -> Result<Plan> {
        let settled = Instant::now() - QUARANTINE;
        let (gone_services, gone_reals) = removed(config, &self.ids);
        let mut plan = Plan {
            ids: self.ids.clone(),
            gone_services,
            gone_reals,
            fresh_services: Vec::new(),
            fresh_reals: Vec::new(),
            interfaces: links
                .interfaces
                .iter()
                .map(|(&(ifindex, vlan), &mac)| {
                    (InterfaceKey { ifindex, vlan, _pad: [0; 2] }, Interface { mac, _pad: [0; 2] })
                })
                .collect(),
            reals: HashMap::new(),
            limits: Vec::new(),
            services: HashMap::new(),
            sequences: Vec::new(),
            locals: Vec::new(),
        };
        plan.ids.ring.recycle(settled);
        plan.ids.last_weights = last_weights(config, &self.ids.last_weights);
        for service in &config.services {
            let index = assign(&mut plan.ids.services, &service.name, &mut plan.fresh_services, settled, || {
                Ok(self.dataplane.conn_references()?.services)
            })
            .with_context(|| format!("service {}: all {MAX_SERVICES} service slots are taken", service.name))?;
            let scheduler = Scheduler::from(service.scheduler);
            let mut candidates = Vec::new();
            for real in &service.reals {
                let owner = (service.name.clone(), real.address);
                let id = assign(&mut plan.ids.reals, &owner, &mut plan.fresh_reals, settled, || {
                    Ok(self.dataplane.conn_references()?.reals)
                })
                .with_context(|| format!("service {}: all {MAX_REALS} real-server ids are taken", service.name))?;
                let forwarding = Forwarding::from(service.forwarding_of(real));
                let link = links.reals.get(&real.address);
                let tunnel_source = config.tunnel_source_for(real.address).or(link.and_then(|link| link.source));
                let link = usable_link(link, forwarding, tunnel_source);
                plan.reals.insert(id, real_server(service, index, real, forwarding, link, tunnel_source));
                let limits = Limits {
                    weight: real.weight,
                    upper_threshold: real.upper_threshold,
                    lower_threshold: real.lower_threshold,
                };
                plan.limits.push((id, limits));
                let candidate = Candidate {
                    id,
                    weight: real.weight,
                    reachable: link.is_some(),
                    last_weight: plan.ids.last_weights[&owner],
                    address: SocketAddr::new(real.address, service.port_of(real)),
                };
                candidates.push((real, candidate));
            }
            let locals = self.place_locals(index, service, &mut plan);
            let (has_ipv4, has_ipv6) = service.families();
            for (ipv4, _) in [(true, has_ipv4), (false, has_ipv6)].into_iter().filter(|&(_, served)| served) {
                // A firewall-mark service may serve both IP versions: each has its own
                // sequence, of the real servers that can serve it.
                let serving: Vec<Candidate> =
                    candidates.iter().filter(|(real, _)| service.serves(real, ipv4)).map(|&(_, c)| c).collect();
                let family = if ipv4 { FAMILY_IPV4 } else { FAMILY_IPV6 };
                let sequence = sched::sequence(scheduler, hashing(service), &serving);
                let len = sequence.len();
                let slots = self.place_sequence((index, family), sequence, &mut plan).with_context(|| {
                    format!(
                        "service {}: no room left for a sequence of {len} slots (the scheduler ring holds \
                         {SCHED_RING_SLOTS} for all services)",
                        service.name
                    )
                })?;
                let value = service_value(index, scheduler, &slots, service, locals.of(ipv4), ipv4);
                for endpoint in service.endpoints().into_iter().filter(|endpoint| endpoint.vip.is_ipv4() == ipv4) {
                    plan.services.insert(service_key(&endpoint), value);
                }
            }
        }
        self.retire_gone_reals(&mut plan);
        Ok(plan)
    }

    /// Where a sequence is: where it is written if unchanged, else fresh slots.
    fn place_sequence(&self, key: (u32, u8), sequence: Vec<u32>, plan: &mut Plan) -> Option<Slots> {
        if let Some((slots, written)) = self.written.sequences.get(&key)
            && *written == sequence
        {
            return Some(slots.clone());
        }
        let slots = plan.ids.ring.allocate(sequence.len() as u32)?;
        plan.sequences.push((key, slots.clone(), sequence));
        Some(slots)
    }

    /// Marks the real servers the configuration no longer has as removed, in the entry
    /// their remaining connections still read: a persistence template that names one
    /// is void, and so are the connections of a service with `expire_nodest_conn`.
    fn retire_gone_reals(&self, plan: &mut Plan) {
        for owner in &plan.gone_reals {
            let Some(id) = plan.ids.reals.get(owner) else { continue };
            if let Some(written) = self.written.reals.get(&id) {
                plan.reals.insert(id, RealServer { flags: written.flags | REAL_REMOVED, ..*written });
            }
        }
    }

    /// Where the service's Full-NAT local addresses are (IPv4 ones first): where they
    /// are written if unchanged, else the other of its two banks, which no published
    /// value names.
    fn place_locals(&self, index: u32, service: &VirtualService, plan: &mut Plan) -> Locals {
        let (ipv4, ipv6) = service.families();
        let of = |served: bool, ipv4: bool| {
            service.local_addresses_of(ipv4).filter(move |_| served).map(|local| address_bytes(local).0)
        };
        let ipv4_len = of(ipv4, true).count() as u8;
        let locals: Vec<[u8; 16]> = of(ipv4, true).chain(of(ipv6, false)).collect();
        let len = locals.len() as u8;
        let first_bank = index * 2 * MAX_LOCAL_ADDRESSES;
        let start = match self.written.locals.get(&index) {
            Some((start, written)) if *written == locals => return Locals { start: *start, len, ipv4_len },
            Some((start, _)) if *start == first_bank => first_bank + MAX_LOCAL_ADDRESSES,
            _ => first_bank,
        };
        if !locals.is_empty() {
            plan.locals.push((index, start, locals));
        }
        Locals { start, len, ipv4_len }
    }

    /// Writes what `plan` changes. The plan's ids are ours from the first write on: if
    /// a write fails midway, an id or slot the maps may use is never handed out again
    /// (slots and ids are released and retired only at the end).
    fn commit(&mut self, plan: Plan) -> Result<()> {
        let Plan {
            ids,
            gone_services,
            gone_reals,
            fresh_services,
            fresh_reals,
            interfaces,
            reals,
            limits,
            services,
            sequences,
            locals,
        } = plan;
        self.ids = ids;
        for index in fresh_services {
            self.dataplane.reset_service_counters(index)?;
        }
        for id in fresh_reals {
            self.dataplane.reset_real_counters(id)?;
        }
        self.add_interfaces(&interfaces)?;
        // Reachable real servers before a sequence names them; unreachable and removed
        // ones after no published sequence does any more.
        let (reachable, unreachable): (HashMap<u32, RealServer>, HashMap<u32, RealServer>) =
            reals.into_iter().partition(|(_, real)| real.ifindex != 0 && real.flags & REAL_REMOVED == 0);
        self.write_reals(reachable)?;
        for (id, limits) in limits {
            self.dataplane.set_limits(id, limits);
        }
        let mut superseded = Vec::new();
        for (key, slots, sequence) in sequences {
            self.dataplane.write_sequence(&slots, &sequence)?;
            superseded.extend(self.written.sequences.insert(key, (slots, sequence)).map(|(old, _)| old));
        }
        for (index, start, addresses) in locals {
            self.dataplane.write_local_addresses(start, &addresses)?;
            self.written.locals.insert(index, (start, addresses));
        }
        self.publish_services(&services)?;
        self.write_reals(unreachable)?;
        self.remove_interfaces(&interfaces)?;
        // Only now does no map value name the old slots and the removed owners' ids.
        let now = Instant::now();
        let used: HashSet<(u32, u8)> = services.iter().map(|(key, service)| (service.index, key.family)).collect();
        let unused: Vec<(u32, u8)> = self.written.sequences.keys().filter(|key| !used.contains(key)).copied().collect();
        superseded.extend(unused.iter().filter_map(|key| self.written.sequences.remove(key)).map(|(slots, _)| slots));
        let used_indexes: HashSet<u32> = used.iter().map(|(index, _)| *index).collect();
        self.written.locals.retain(|index, _| used_indexes.contains(index));
        for slots in superseded {
            self.ids.ring.release(slots, now);
        }
        for name in &gone_services {
            self.ids.services.retire(name, now);
        }
        for owner in &gone_reals {
            self.ids.reals.retire(owner, now);
        }
        Ok(())
    }

    fn write_reals(&mut self, reals: HashMap<u32, RealServer>) -> Result<()> {
        let dataplane = &mut self.dataplane;
        write_changed(&mut self.written.reals, reals, |id, real| dataplane.set_real(*id, real))
    }

    /// Points each service at its sequence, then removes the services no longer
    /// configured.
    fn publish_services(&mut self, services: &HashMap<ServiceKey, Service>) -> Result<()> {
        let dataplane = &mut self.dataplane;
        write_changed(&mut self.written.services, services.clone(), |key, service| {
            dataplane.set_service(key, service)?;
            // A new sequence starts from its first slot, as IPVS restarts its walk when
            // a service's real servers change.
            dataplane.reset_cursor(service.index)
        })?;
        let before = self.written.services.len();
        remove_unwanted(&mut self.written.services, services, |key| dataplane.remove_service(key))?;
        if self.written.services.len() < before {
            dataplane.settle_service_slots()?;
        }
        Ok(())
    }

    fn add_interfaces(&mut self, interfaces: &HashMap<InterfaceKey, Interface>) -> Result<()> {
        let dataplane = &mut self.dataplane;
        write_changed(&mut self.written.interfaces, interfaces.clone(), |key, interface| {
            dataplane.set_interface(key, interface)
        })
    }

    fn remove_interfaces(&mut self, interfaces: &HashMap<InterfaceKey, Interface>) -> Result<()> {
        let dataplane = &mut self.dataplane;
        remove_unwanted(&mut self.written.interfaces, interfaces, |key| dataplane.remove_interface(key))
    }

    /// The running services and real servers with their counters, in config order.
    pub fn status(&self, view: View) -> Result<Vec<ServiceStatus>> {
        let config = match view {
            View::Serving => self.serving_config(),
            View::Configured => self.running_config(),
        };
        let Some(config) = config else { return Ok(Vec::new()) };
        config.services.iter().map(|service| self.service_status(service)).collect()
    }

    fn service_status(&self, service: &VirtualService) -> Result<ServiceStatus> {
        let index = self.ids.services.get(&service.name).context("running service without a slot")?;
        let mut reals = Vec::new();
        for real in &service.reals {
            // A configured real server that does not serve (its check failed) has no id.
            let id = self.ids.reals.get(&(service.name.clone(), real.address));
            let conns = id.map(|id| self.dataplane.real_load(id)).unwrap_or_default();
            reals.push(RealStatus {
                address: real.address,
                port: service.port_of(real),
                weight: real.weight,
                upper_threshold: real.upper_threshold,
                lower_threshold: real.lower_threshold,
                forwarding: service.forwarding_of(real).to_string(),
                resolved: id.and_then(|id| self.written.reals.get(&id)).is_some_and(|r| r.ifindex != 0),
                // A count may dip below zero for a moment (see `expiry`).
                active_conns: conns.active.max(0) as u64,
                inactive_conns: conns.inactive.max(0) as u64,
                stats: id.map(|id| self.dataplane.real_counters(id)).transpose()?.map(stats).unwrap_or_default(),
            });
        }
        let first = service.endpoints().first().copied().context("a service without an address")?;
        Ok(ServiceStatus {
            name: service.name.clone(),
            protocol: first.protocol.to_string(),
            vip: first.vip,
            port: first.port,
            fwmark: service.fwmark,
            persistence: service.persistence.map(|p| p.timeout),
            netmask: ipvsadm_netmask(service),
            scheduler: service.scheduler.to_string(),
            scheduler_flags: service.scheduler_flags.iter().map(ToString::to_string).collect(),
            matches: service.matches.iter().map(Match::to_string).collect(),
            stats: stats(self.dataplane.service_counters(index)?),
            reals,
        })
    }

    /// ipvsadm -Z: the counters of `service` (all services without one) and of its real
    /// servers back to zero.
    pub fn zero(&mut self, service: Option<&ServiceRef>) -> Result<String> {
        let Some(Running { serving: config, .. }) = &self.running else { return Ok("nothing runs yet".into()) };
        let services: Vec<&VirtualService> = match service {
            Some(wanted) => vec![&config.services[edit::service_index(config, wanted)?]],
            None => config.services.iter().collect(),
        };
        for service in &services {
            let index = self.ids.services.get(&service.name).context("running service without a slot")?;
            self.dataplane.reset_service_counters(index)?;
            for real in &service.reals {
                let id =
                    self.ids.reals.get(&(service.name.clone(), real.address)).context("running real without an id")?;
                self.dataplane.reset_real_counters(id)?;
            }
        }
        Ok(format!("zeroed the counters of {} service(s)", services.len()))
    }

    /// The connections the table holds, as `ipvsadm -Lnc` lists them.
    pub fn connections(&self) -> Result<Vec<ConnectionStatus>> {
        let now = self.dataplane.clock()?.read()?;
        let timeouts = self.timeouts();
        let mut listed = Vec::new();
        self.dataplane.walk_conns(|key, conn| {
            let real = self.written.reals.get(&conn.real).map(|real| connections::address(&real.address, real.family));
            listed.extend(connections::status(key, conn, now, &timeouts, real));
        })?;
        Ok(listed)
    }

    pub fn reason_counts(&self) -> Result<Vec<(Reason, u64)>> {
        self.dataplane.reason_counts()
    }
}

/// A persistent service's netmask as ipvsadm shows it, when it is not one address's:
/// dotted for IPv4, a prefix length for IPv6.
fn ipvsadm_netmask(service: &VirtualService) -> Option<String> {
    let (ipv4, ipv6) = service.persistence_prefixes()?;
    if ipv4 != 32 {
        let mask = u32::MAX.checked_shl(32 - u32::from(ipv4)).unwrap_or(0);
        Some(std::net::Ipv4Addr::from(mask).to_string())
    } else {
        (ipv6 != 128).then(|| ipv6.to_string())
    }
}

/// Writes each entry of `wanted` that `written` does not hold as it is, and records it.
fn write_changed<K: Copy + Eq + Hash, V: Copy + PartialEq>(
    written: &mut HashMap<K, V>,
    wanted: HashMap<K, V>,
    mut write: impl FnMut(&K, &V) -> Result<()>,
) -> Result<()> {
    for (key, value) in wanted {
        if written.get(&key) != Some(&value) {
            write(&key, &value)?;
            written.insert(key, value);
        }
    }
    Ok(())
}

/// Removes each entry of `written` that `wanted` does not have, and forgets it.
fn remove_unwanted<K: Copy + Eq + Hash, V>(
    written: &mut HashMap<K, V>,
    wanted: &HashMap<K, V>,
    mut remove: impl FnMut(&K) -> Result<()>,
) -> Result<()> {
    let unwanted: Vec<K> = written.keys().filter(|key| !wanted.contains_key(key)).copied().collect();
    for key in unwanted {
        remove(&key)?;
        written.remove(&key);
    }
    Ok(())
}

/// The services and real servers that `config` no longer has.
fn removed(config: &Config, ids: &Ids) -> (Vec<String>, Vec<RealOwner>) {
    let services: HashSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let reals: HashSet<(&str, IpAddr)> =
        config.services.iter().flat_map(|s| s.reals.iter().map(move |r| (s.name.as_str(), r.address))).collect();
    let gone_services =
        ids.services.active().filter(|(name, _)| !services.contains(name.as_str())).map(|(n, _)| n.clone()).collect();
    let gone_reals = ids
        .reals
        .active()
        .filter(|((name, address), _)| !reals.contains(&(name.as_str(), *address)))
        .map(|(owner, _)| owner.clone())
        .collect();
    (gone_services, gone_reals)
}

/// IPVS's `last_weight` of every real server of `config`: its weight if above 0, else
/// what it was before (0 for a real server that never had a weight, or is new: IPVS
/// sets it anew when a real server is added).
fn last_weights(config: &Config, before: &HashMap<RealOwner, u32>) -> HashMap<RealOwner, u32> {
    let owners = config.services.iter().flat_map(|s| s.reals.iter().map(move |r| ((s.name.clone(), r.address), r)));
    owners
        .map(|(owner, real)| {
            let last = if real.weight > 0 { real.weight } else { before.get(&owner).copied().unwrap_or(0) };
            (owner, last)
        })
        .collect()
}

/// The owner's id, reclaiming ids retired before `settled` that `in_use` does not
/// name when none is free. Records the id in `fresh` if it is new to the owner.
fn assign<K: Clone + Eq + Hash>(
    registry: &mut Registry<K>,
    owner: &K,
    fresh: &mut Vec<u32>,
    settled: Instant,
    in_use: impl FnOnce() -> Result<HashSet<u32>>,
) -> Result<u32> {
    if registry.get(owner).is_none() && !registry.has_free() {
        registry.reclaim(&in_use()?, settled);
    }
    let assigned = registry.assign(owner).ok_or_else(|| anyhow!("no id left"))?;
    if assigned.fresh {
        fresh.push(assigned.id);
    }
    Ok(assigned.id)
}

fn service_key(endpoint: &Endpoint) -> ServiceKey {
    let (vip, family) = address_bytes(endpoint.vip);
    let protocol = match endpoint.protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    };
    ServiceKey { vip, port: endpoint.port.to_be_bytes(), protocol, family }
}

/// A service's Full-NAT local addresses: a run of `len` slots from `start`, the first
/// `ipv4_len` IPv4 ones.
#[derive(Clone, Copy)]
struct Locals {
    start: u32,
    len: u8,
    ipv4_len: u8,
}

impl Locals {
    /// The first slot and count of one IP version's.
    fn of(self, ipv4: bool) -> (u32, u8) {
        if ipv4 {
            (self.start, self.ipv4_len)
        } else {
            (self.start + u32::from(self.ipv4_len), self.len - self.ipv4_len)
        }
    }
}

/// The value of the service's keys of one IP version.
fn service_value(
    index: u32,
    scheduler: Scheduler,
    slots: &Slots,
    service: &VirtualService,
    (locals_start, locals_len): (u32, u8),
    ipv4: bool,
) -> Service {
    let [first, last] = service.local_port_range;
    let persist_prefix = service.persistence_prefixes().map_or(0, |(v4, v6)| if ipv4 { v4 } else { v6 });
    Service {
        index,
        sequence_start: slots.start,
        sequence_len: slots.end - slots.start,
        scheduler: scheduler as u8,
        flags: service_flags(service),
        locals_len,
        _pad: 0,
        locals_start,
        local_port_first: first,
        local_port_count: last - first + 1,
        persist_prefix,
        _spare: [0; 7],
    }
}

fn service_flags(service: &VirtualService) -> u8 {
    let options = [
        (service.toa, SERVICE_TOA),
        (service.persistence.is_some(), SERVICE_PERSISTENT),
        (service.expire_quiescent_template, SERVICE_EXPIRE_QUIESCENT),
        (service.expire_nodest_conn, SERVICE_EXPIRE_NODEST),
        (service.reals.iter().any(|real| real.upper_threshold != 0), SERVICE_THRESHOLDS),
    ];
    let mut flags = options.iter().filter(|(on, _)| *on).fold(0, |flags, (_, bit)| flags | bit);
    for flag in &service.scheduler_flags {
        flags |= match flag {
            SchedulerFlag::ShPort => SERVICE_SH_PORT,
            SchedulerFlag::ShFallback => SERVICE_SH_FALLBACK,
            SchedulerFlag::MhPort => SERVICE_MH_PORT,
            SchedulerFlag::MhFallback => SERVICE_MH_FALLBACK,
        };
    }
    flags
}

/// The layout of the service's hash table, if its scheduler has one.
fn hashing(service: &VirtualService) -> Hashing {
    let flags = &service.scheduler_flags;
    Hashing {
        fallback: flags.contains(&SchedulerFlag::ShFallback) || flags.contains(&SchedulerFlag::MhFallback),
        mh_table_size: service.mh_table_size(),
    }
}

/// The link the data path may use for a real server: direct routing only sends frames
/// on the real server's own link, so a real server behind a gateway is not reachable
/// by it; a tunnel needs a source address of the real server's IP version.
fn usable_link(link: Option<&Link>, forwarding: Forwarding, tunnel_source: Option<IpAddr>) -> Option<&Link> {
    link.filter(|link| match forwarding {
        Forwarding::Dr => link.gateway.is_none(),
        Forwarding::Tun => tunnel_source.is_some(),
        Forwarding::Nat | Forwarding::Fnat => true,
    })
}

fn real_server(
    service: &VirtualService,
    index: u32,
    real: &Real,
    forwarding: Forwarding,
    link: Option<&Link>,
    tunnel_source: Option<IpAddr>,
) -> RealServer {
    let (address, family) = address_bytes(real.address);
    let tunnel_source = match tunnel_source {
        Some(source) if forwarding == Forwarding::Tun => address_bytes(source).0,
        _ => [0; 16],
    };
    let outer_sum = outer_ipv4_sum(&tunnel_source, &address);
    // The port is named only where it differs from the service's: 0 lets a port-0 or
    // firewall-mark service's connections keep the port each client asked for.
    let port = real.port.filter(|port| Some(*port) != service.port).unwrap_or(0);
    RealServer {
        address,
        tunnel_source,
        mac: link.map_or([0; 6], |link| link.mac),
        director_mac: link.map_or([0; 6], |link| link.director_mac),
        ifindex: link.map_or(0, |link| link.ifindex),
        port: port.to_be_bytes(),
        vlan: link.map_or(0, |link| link.vlan),
        family,
        forwarding: forwarding as u8,
        flags: if real.weight == 0 { REAL_QUIESCED } else { 0 },
        _pad: 0,
        mtu: link.map_or(0, |link| link.mtu),
        outer_sum,
        service: index,
    }
}

/// An address as the maps store it: 16 bytes, IPv4 in the first four.
pub fn address_bytes(address: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0; 16];
    match address {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

fn stats(counters: Counters) -> Stats {
    Stats {
        conns: counters.conns,
        in_packets: counters.packets,
        in_bytes: counters.bytes,
        out_packets: counters.out_packets,
        out_bytes: counters.out_bytes,
    }
}
