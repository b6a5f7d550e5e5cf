//! keepalived's virtual servers as our services, with keepalived's defaults (NAT,
//! wlc, UDP when no protocol is given, persistence for a port-0 service, real servers
//! of weight 1 removed on failure) and its rules (`check_data.c`'s validation).
//!
//! A virtual server is one service, but a `virtual_server group` is as many as keepalived
//! makes IPVS services of it (`ipvswrapper.c`): one per address of each range, with the
//! entry's port, and one firewall-mark service per `fwmark` entry, all alike.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use super::{
    Notes, Place, check,
    read::{Address, At, Group, GroupEntry, Keepalived, RealServer, VirtualServer},
    yaml::{Check, Config, Forwarding, Interface, Netmask, OnFailure, Persistence, Protocol, Real, Service},
};

/// IPVS's persistence timeout when keepalived gives none (`IPVS_SVC_PERSISTENT_TIMEOUT`).
const DEFAULT_PERSISTENCE: u32 = 360;

/// Our schedulers, by the names keepalived's `lvs_sched` gives IPVS's.
const SCHEDULERS: [&str; 13] = ["rr", "wrr", "lc", "wlc", "sed", "nq", "lblc", "lblcr", "dh", "sh", "mh", "fo", "ovf"];

/// keepalived leaves the scheduler to IPVS's default (`IPVS_DEF_SCHED`).
const DEFAULT_SCHEDULER: &str = "wlc";

/// Stands for the director's interface when keepalived.conf names none.
const PLACEHOLDER_INTERFACE: &str = "eth0";

pub fn config(keepalived: &Keepalived, source: &Path, notes: &mut Notes) -> Config {
    let mut remarks = Vec::new();
    let mut names: Vec<String> = keepalived.interfaces.clone();
    if names.is_empty() {
        let file = Place { file: source.display().to_string().into(), order: 0, line: 0 };
        notes.note(
            &file,
            "interfaces",
            format_args!("no vrrp_instance names one: {PLACEHOLDER_INTERFACE} is written, put the director's there"),
        );
        remarks.push(format!(
            "{PLACEHOLDER_INTERFACE} stands for the director's client-facing interface: keepalived.conf names none."
        ));
        names.push(PLACEHOLDER_INTERFACE.to_owned());
    }
    let mut services: Vec<Service> =
        keepalived.virtual_servers.iter().flat_map(|vs| services(vs, &keepalived.groups, notes)).collect();
    unique_names(&mut services);
    for service in services.iter().filter(|service| service.fwmark.is_some()) {
        remarks.push(format!("{}: list under match: what iptables marks for it.", service.name));
    }
    Config {
        interfaces: names.into_iter().map(|name| Interface { name }).collect(),
        timeouts: keepalived.timeouts.clone(),
        services,
        remarks,
    }
}

/// Where one of a virtual server's services answers.
enum Endpoint {
    Address { vip: IpAddr, port: u16 },
    Fwmark { mark: u32, family: Option<String> },
}

fn services(vs: &VirtualServer, groups: &[Group], notes: &mut Notes) -> Vec<Service> {
    if vs.reals.is_empty() {
        notes.lost(&vs.place, "virtual_server", "it has no real_server (keepalived leaves it out too)");
        return Vec::new();
    }
    let Some((endpoints, group)) = endpoints(vs, groups, notes) else { return Vec::new() };
    let addressed = endpoints.iter().any(|endpoint| matches!(endpoint, Endpoint::Address { .. }));
    let protocol = addressed.then(|| protocol(vs, notes));
    if let (false, Some(protocol)) = (addressed, &vs.protocol) {
        notes.lost(&protocol.place, "protocol", "a firewall-mark service's protocols are those of its match: entries");
    }
    let persistence = persistence(vs, &endpoints, notes);
    let several = endpoints.len() > 1;
    let base = vs.name.as_deref().or(group);
    endpoints
        .iter()
        .map(|endpoint| {
            let name = name(base, endpoint, protocol, several);
            service(vs, endpoint, name, protocol, persistence, notes)
        })
        .collect()
}

/// The virtual server's endpoints, and its group's name.
fn endpoints<'a>(
    vs: &'a VirtualServer,
    groups: &'a [Group],
    notes: &mut Notes,
) -> Option<(Vec<Endpoint>, Option<&'a str>)> {
    match &vs.address {
        Address::Ip { vip, port } => Some((vec![Endpoint::Address { vip: *vip, port: *port }], None)),
        Address::Fwmark(mark) => Some((vec![Endpoint::Fwmark { mark: *mark, family: vs.family.clone() }], None)),
        Address::Group(name) => {
            let group = groups.iter().find(|group| &group.name == name && !group.entries.is_empty());
            let Some(group) = group else {
                notes.lost(
                    &vs.place,
                    "virtual_server",
                    format_args!("no virtual_server_group {name} with entries (keepalived leaves it out too)"),
                );
                return None;
            };
            let endpoints = group.entries.iter().flat_map(|entry| match entry {
                GroupEntry::Addresses { addresses, port } => {
                    addresses.iter().map(|&vip| Endpoint::Address { vip, port: *port }).collect()
                }
                GroupEntry::Fwmark { mark, family } => vec![Endpoint::Fwmark { mark: *mark, family: family.clone() }],
            });
            Some((endpoints.collect(), Some(name)))
        }
    }
}

/// keepalived now leaves an unset protocol to IPVS, whose default is UDP.
fn protocol(vs: &VirtualServer, notes: &mut Notes) -> Protocol {
    if let Some(protocol) = &vs.protocol {
        return protocol.value;
    }
    notes.note(&vs.place, "virtual_server", "no protocol: keepalived's default is UDP, and so is it here");
    Protocol::Udp
}

/// `persistence_timeout`, `persistence_granularity` (which alone makes a service
/// persistent), and the persistence keepalived gives a port-0 service.
fn persistence(vs: &VirtualServer, endpoints: &[Endpoint], notes: &mut Notes) -> Option<Persistence> {
    let netmask = vs.granularity.as_ref().and_then(|granularity| netmask(granularity, notes));
    let mut timeout = vs.persistence_timeout.or(vs.granularity.as_ref().map(|_| DEFAULT_PERSISTENCE));
    let port_zero = endpoints.iter().any(|endpoint| matches!(endpoint, Endpoint::Address { port: 0, .. }));
    if timeout.is_none() && port_zero {
        notes.note(
            &vs.place,
            "virtual_server",
            format_args!("port 0 is for persistent services: keepalived makes it persistent for {DEFAULT_PERSISTENCE} s, and so is it here"),
        );
        timeout = Some(DEFAULT_PERSISTENCE);
    }
    timeout.map(|timeout| Persistence { timeout, netmask })
}

/// An IPv4 netmask, or an IPv6 prefix length; keepalived refuses the rest.
fn netmask(granularity: &At<String>, notes: &mut Notes) -> Option<Netmask> {
    let text = &granularity.value;
    let netmask = if text.contains('.') {
        let mask = text.parse::<Ipv4Addr>().ok().filter(|mask| {
            let bits = u32::from(*mask);
            bits.leading_ones() + bits.trailing_zeros() == 32
        });
        mask.map(Netmask::Mask)
    } else {
        text.parse().ok().filter(|prefix| (1..=128).contains(prefix)).map(Netmask::Prefix)
    };
    if netmask.is_none() {
        notes.lost(
            &granularity.place,
            "persistence_granularity",
            format_args!("{text} is not a netmask (keepalived refuses it too)"),
        );
    }
    netmask
}

/// The name: `snmp_name` or the group's if given, else from the address; a group's
/// services add their endpoint to it.
fn name(base: Option<&str>, endpoint: &Endpoint, protocol: Option<Protocol>, several: bool) -> String {
    let own = match (endpoint, protocol) {
        (Endpoint::Address { vip, port }, Some(Protocol::Tcp)) => format!("{vip}-{port}-tcp"),
        (Endpoint::Address { vip, port }, _) => format!("{vip}-{port}-udp"),
        (Endpoint::Fwmark { mark, .. }, _) => format!("fwmark-{mark}"),
    };
    let name = match base {
        Some(base) if several => format!("{base}-{own}"),
        Some(base) => base.to_owned(),
        None => own,
    };
    // Our names are letters, digits, '_', '.', ':' and '-'.
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.:-".contains(c) { c } else { '_' }).collect()
}

/// Two virtual servers may come to one name: the later ones are numbered.
fn unique_names(services: &mut [Service]) {
    let mut taken = HashSet::new();
    for service in services {
        let base = service.name.clone();
        for n in 2.. {
            if taken.insert(service.name.clone()) {
                break;
            }
            service.name = format!("{base}-{n}");
        }
    }
}

fn service(
    vs: &VirtualServer,
    endpoint: &Endpoint,
    name: String,
    protocol: Option<Protocol>,
    persistence: Option<Persistence>,
    notes: &mut Notes,
) -> Service {
    // keepalived's default forwarding method is NAT.
    let forwarding = vs.forwarding.unwrap_or(Forwarding::Nat);
    let (vip, port, fwmark, member) = match endpoint {
        Endpoint::Address { vip, port } => (Some(*vip), Some(*port), None, format!("{vip} {port}")),
        Endpoint::Fwmark { mark, family } => {
            let family = family.as_deref().map(|family| format!(" ({family})")).unwrap_or_default();
            notes.note(
                &vs.place,
                "virtual_server",
                format_args!(
                    "fwmark {mark}: list under match: the VIPs, protocols and ports{family} iptables marks with {mark}"
                ),
            );
            (None, None, Some(*mark), format!("fwmark {mark}"))
        }
    };
    // A group's services say which of its members they are.
    let origin = match vs.address {
        Address::Group(_) => format!("{}: {} ({member})", vs.place, vs.heading),
        _ => format!("{}: {}", vs.place, vs.heading),
    };
    let mut reals = reals(vs, port.filter(|&port| port != 0), forwarding, vip, notes);
    let check = hoist(&mut reals);
    let scheduler = scheduler(vs, notes);
    Service {
        origin,
        name,
        vip,
        port,
        protocol: vip.and(protocol),
        fwmark,
        matches: fwmark.map(|_| Vec::new()),
        scheduler,
        scheduler_flags: scheduler_flags(vs, scheduler, notes),
        forwarding,
        persistence,
        check,
        on_failure: on_failure(vs, notes),
        sorry_server: sorry_server(vs, port, vip, forwarding, notes),
        quorum: quorum(vs, &reals, notes),
        reals,
    }
}

/// The real servers, as IPVS would take them from keepalived: of the VIP's IP version
/// (unless tunnelled), each address once, ports only where the method rewrites them.
fn reals(
    vs: &VirtualServer,
    service_port: Option<u16>,
    forwarding: Forwarding,
    vip: Option<IpAddr>,
    notes: &mut Notes,
) -> Vec<Real> {
    let mut reals: Vec<Real> = Vec::new();
    for rs in &vs.reals {
        let method = rs.forwarding.unwrap_or(forwarding);
        if vip.is_some_and(|vip| vip.is_ipv4() != rs.address.is_ipv4()) && method != Forwarding::Tun {
            notes.lost(
                &rs.place,
                "real_server",
                format_args!(
                    "{} is not of the VIP's IP version and not tunnelled (keepalived leaves it out too)",
                    rs.address
                ),
            );
            continue;
        }
        if reals.iter().any(|real| real.address == rs.address) {
            notes.lost(
                &rs.place,
                "real_server",
                format_args!("{} is already a real server of this service: each address once here", rs.address),
            );
            continue;
        }
        let port = real_port(rs, service_port, method, notes);
        reals.push(Real {
            address: rs.address,
            port,
            weight: rs.weight.or(vs.weight).unwrap_or(1),
            forwarding: (method != forwarding).then_some(method),
            upper_threshold: rs.upper_threshold,
            lower_threshold: rs.lower_threshold,
            check: check::check(vs, rs, port.or(service_port), notes),
        });
    }
    reals
}

/// NAT may map the service's port to another; DR and TUN leave the packet's port as it
/// is, and a firewall-mark or port-0 service keeps the port each client asked for.
fn real_port(rs: &RealServer, service_port: Option<u16>, method: Forwarding, notes: &mut Notes) -> Option<u16> {
    let port = rs.port.filter(|&port| port != 0)?;
    let why = match service_port {
        Some(service_port) if port == service_port => return None,
        Some(_) if method == Forwarding::Nat => return Some(port),
        Some(service_port) => format!("port {port}: only nat maps ports; the real server serves port {service_port}"),
        None => format!("port {port}: a firewall-mark or port-0 service keeps the port each client asked for"),
    };
    notes.lost(&rs.place, "real_server", why);
    None
}

/// The service's check when every real server has the same one, else each its own.
fn hoist(reals: &mut [Real]) -> Option<Check> {
    let first = reals.first()?.check.clone();
    if first.is_none() || reals.iter().any(|real| real.check != first) {
        return None;
    }
    for real in reals.iter_mut() {
        real.check = None;
    }
    first
}

fn scheduler(vs: &VirtualServer, notes: &mut Notes) -> &'static str {
    let Some(name) = &vs.scheduler else { return DEFAULT_SCHEDULER };
    if let Some(known) = SCHEDULERS.iter().find(|known| **known == name.value) {
        return known;
    }
    notes.lost(
        &name.place,
        "lb_algo",
        format_args!("no scheduler {} here: {DEFAULT_SCHEDULER} is written", name.value),
    );
    DEFAULT_SCHEDULER
}

/// sh's and mh's flags; IPVS's `flag-1` is their fallback, `flag-2` their port.
fn scheduler_flags(vs: &VirtualServer, scheduler: &str, notes: &mut Notes) -> Vec<&'static str> {
    let mut flags = Vec::new();
    for flag in &vs.flags {
        let ours = match (scheduler, flag.value.as_str()) {
            ("sh", "sh-port" | "flag-2") => "sh-port",
            ("sh", "sh-fallback" | "flag-1") => "sh-fallback",
            ("mh", "mh-port" | "flag-2") => "mh-port",
            ("mh", "mh-fallback" | "flag-1") => "mh-fallback",
            (_, keyword) => {
                notes.lost(&flag.place, keyword, format_args!("not a flag of {scheduler} (keepalived ignores it too)"));
                continue;
            }
        };
        if !flags.contains(&ours) {
            flags.push(ours);
        }
    }
    flags
}

/// keepalived's `inhibit_on_failure` is per real server (the virtual server's the
/// default); ours is the service's: the real servers' when they agree, else the virtual
/// server's.
fn on_failure(vs: &VirtualServer, notes: &mut Notes) -> OnFailure {
    let inhibits = |rs: &RealServer| rs.inhibit.as_ref().map(|inhibit| inhibit.value).or(vs.inhibit).unwrap_or(false);
    let first = vs.reals.first().map(inhibits).unwrap_or(false);
    let quiesce = if vs.reals.iter().all(|rs| inhibits(rs) == first) { first } else { vs.inhibit.unwrap_or(false) };
    let (written, word) = if quiesce { (OnFailure::Quiesce, "quiesce") } else { (OnFailure::Remove, "remove") };
    for rs in vs.reals.iter().filter(|rs| inhibits(rs) != quiesce) {
        if let Some(inhibit) = &rs.inhibit {
            notes.lost(&inhibit.place, "inhibit_on_failure", format_args!("on_failure is the service's here: {word}"));
        }
    }
    written
}

/// Our sorry server takes the service's port, by the service's method.
fn sorry_server(
    vs: &VirtualServer,
    port: Option<u16>,
    vip: Option<IpAddr>,
    forwarding: Forwarding,
    notes: &mut Notes,
) -> Option<IpAddr> {
    let sorry = vs.sorry_server.as_ref()?;
    let address = sorry.value.address;
    if vip.is_some_and(|vip| vip.is_ipv4() != address.is_ipv4()) && forwarding != Forwarding::Tun {
        notes.lost(
            &sorry.place,
            "sorry_server",
            format_args!("{address} is not of the VIP's IP version (keepalived leaves it out too)"),
        );
        return None;
    }
    if let Some(sorry_port) = sorry.value.port.filter(|&sorry_port| sorry_port != 0 && Some(sorry_port) != port) {
        notes.lost(
            &sorry.place,
            "sorry_server",
            format_args!("port {sorry_port}: our sorry server serves the service's port"),
        );
    }
    Some(address)
}

/// keepalived lowers a quorum no set of real servers can reach to their total weight.
fn quorum(vs: &VirtualServer, reals: &[Real], notes: &mut Notes) -> Option<u32> {
    let quorum = vs.quorum.as_ref()?;
    let total: u32 = reals.iter().map(|real| real.weight).sum();
    if quorum.value > total {
        notes.note(
            &quorum.place,
            "quorum",
            format_args!("{} is above the real servers' total weight {total}: keepalived lowers it to {total}, and so is it here", quorum.value),
        );
        return Some(total);
    }
    Some(quorum.value)
}
