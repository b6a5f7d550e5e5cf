//! The rules a configuration must meet beyond its syntax, each naming the field at fault.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{MAX_LOCAL_ADDRESSES, MAX_REALS, MAX_SERVICES};

use super::{Config, Endpoint, Forwarding, Netmask, Protocol, Real, Scheduler, VirtualService};

/// IPVS limits weights to this (ipvsadm -w 0..65535).
pub const MAX_WEIGHT: u32 = 65535;
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Below this the table would churn connections of any real site.
const MIN_CONNECTION_TABLE: u32 = 1024;
/// mh's table sizes: the smallest and largest IPVS can be built with
/// (`CONFIG_IP_VS_MH_TAB_INDEX`). Fewer buckets share the clients unevenly; more cost
/// ring slots and time to compute for no better share.
const MH_TABLE_SIZES: std::ops::RangeInclusive<u32> = 251..=131_071;

#[derive(Debug)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

pub fn check(config: &Config) -> Result<(), Invalid> {
    check_interfaces(config)?;
    check_tunnel_source(config)?;
    if config.connection_table_size < MIN_CONNECTION_TABLE {
        return Err(invalid(
            "connection_table_size",
            format!("{} is too small (at least {MIN_CONNECTION_TABLE})", config.connection_table_size),
        ));
    }
    if !config.pin_path.is_absolute() {
        return Err(invalid("pin_path", format!("{} is not an absolute path", config.pin_path.display())));
    }
    check_timeouts(config)?;
    if let Some(sync) = &config.sync {
        super::sync::check(sync)?;
    }
    if config.services.len() > MAX_SERVICES as usize {
        return Err(invalid("services", format!("at most {MAX_SERVICES} services fit")));
    }
    let reals: usize = config.services.iter().map(|service| service.reals.len()).sum();
    if reals > MAX_REALS as usize {
        return Err(invalid("services", format!("at most {MAX_REALS} real servers fit, in all")));
    }
    let mut names = HashMap::new();
    let mut endpoints: HashMap<Endpoint, usize> = HashMap::new();
    for (i, service) in config.services.iter().enumerate() {
        let at = format!("services[{i}]");
        if let Some(first) = names.insert(service.name.as_str(), i) {
            return Err(invalid(
                format!("{at}.name"),
                format!("service name `{}` is already used by services[{first}]", service.name),
            ));
        }
        check_address_fields(&at, service)?;
        check_service(&at, service)?;
        for (field, endpoint) in endpoint_fields(&at, service) {
            // IPVS looks a firewall mark up before any address: a firewall-mark
            // service's every port of a VIP would take a plain service's port of it.
            let wildcard = |port: u16, service: usize| port == 0 && config.services[service].fwmark.is_some();
            let shadowed = endpoints.iter().find(|&(other, &first)| {
                other.vip == endpoint.vip
                    && other.protocol == endpoint.protocol
                    && other.port != endpoint.port
                    && (wildcard(other.port, first) || wildcard(endpoint.port, i))
            });
            if let Some((other, first)) = shadowed {
                return Err(invalid(
                    field,
                    format!(
                        "{} {} port {} and services[{first}]'s port {} are ambiguous: a firewall-mark service \
                         serving every port of a VIP would take the other's too",
                        endpoint.protocol, endpoint.vip, endpoint.port, other.port
                    ),
                ));
            }
            if let Some(first) = endpoints.insert(endpoint, i) {
                let marked = service.fwmark.is_some() || config.services[first].fwmark.is_some();
                let why = if marked { ": ambiguous (a firewall-mark service and another)" } else { "" };
                return Err(invalid(
                    field,
                    format!(
                        "{} {} port {} is already served by services[{first}]{why}",
                        endpoint.protocol, endpoint.vip, endpoint.port
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A plain service has `vip`, `port` and `protocol`; a firewall-mark service `fwmark`
/// and `match` instead.
fn check_address_fields(at: &str, service: &VirtualService) -> Result<(), Invalid> {
    let fields =
        [("vip", service.vip.is_some()), ("port", service.port.is_some()), ("protocol", service.protocol.is_some())];
    let Some(fwmark) = service.fwmark else {
        if !service.matches.is_empty() {
            return Err(invalid(format!("{at}.match"), "match: belongs to a firewall-mark service (fwmark:)"));
        }
        for (field, present) in fields {
            if !present {
                return Err(invalid(
                    format!("{at}.{field}"),
                    format!(
                        "a service needs vip:, port: (0 for every port) and protocol:, or is a firewall-mark \
                         service (fwmark: and match:); {field}: is missing"
                    ),
                ));
            }
        }
        return check_address(&format!("{at}.vip"), service.vip.expect("checked above"));
    };
    if fwmark == 0 {
        return Err(invalid(format!("{at}.fwmark"), "a firewall mark is 1 or more (ipvsadm -f)"));
    }
    for (field, present) in fields {
        if present {
            return Err(invalid(
                format!("{at}.{field}"),
                format!("a firewall-mark service lists its VIPs, protocols and ports under match:, not {field}:"),
            ));
        }
    }
    if service.matches.is_empty() {
        return Err(invalid(
            format!("{at}.match"),
            "a firewall-mark service lists what it serves: match: [{ vip: ..., protocol: tcp, ports: [80, 443] }]",
        ));
    }
    for (k, matched) in service.matches.iter().enumerate() {
        check_address(&format!("{at}.match[{k}].vip"), matched.vip)?;
    }
    Ok(())
}

/// Each (VIP, port, protocol) the service answers on, with the field that names it.
fn endpoint_fields(at: &str, service: &VirtualService) -> Vec<(String, Endpoint)> {
    if service.fwmark.is_none() {
        return service.endpoints().into_iter().map(|endpoint| (format!("{at}.port"), endpoint)).collect();
    }
    let fields = service.matches.iter().enumerate();
    fields
        .flat_map(|(k, matched)| matched.endpoints().map(move |endpoint| (format!("{at}.match[{k}]"), endpoint)))
        .collect()
}

fn check_interfaces(config: &Config) -> Result<(), Invalid> {
    if config.interfaces.is_empty() {
        return Err(invalid("interfaces", "name at least one interface to attach to"));
    }
    for (i, interface) in config.interfaces.iter().enumerate() {
        let name = &interface.name;
        if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ']) {
            return Err(invalid(
                format!("interfaces[{i}].name"),
                format!("`{name}` is not an interface name (1 to {MAX_IFNAME} bytes, no '/' or space)"),
            ));
        }
        if config.interfaces[..i].iter().any(|other| &other.name == name) {
            return Err(invalid(format!("interfaces[{i}].name"), format!("`{name}` is listed twice")));
        }
    }
    Ok(())
}

/// At most one tunnel source per IP version.
fn check_tunnel_source(config: &Config) -> Result<(), Invalid> {
    for (i, source) in config.tunnel_source.iter().enumerate() {
        check_address(&format!("tunnel_source[{i}]"), *source)?;
        if let Some(other) = config.tunnel_source[..i].iter().find(|other| other.is_ipv4() == source.is_ipv4()) {
            return Err(invalid(
                format!("tunnel_source[{i}]"),
                format!("{source}: {other} is already the tunnel source of its IP version; name one per version"),
            ));
        }
    }
    Ok(())
}

fn check_timeouts(config: &Config) -> Result<(), Invalid> {
    for (name, seconds) in config.timeouts.named() {
        if seconds == 0 {
            return Err(invalid(format!("timeouts.{name}"), "0 seconds is too short (at least 1)"));
        }
    }
    Ok(())
}

fn check_service(at: &str, service: &VirtualService) -> Result<(), Invalid> {
    let name_ok =
        !service.name.is_empty() && service.name.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if !name_ok {
        return Err(invalid(
            format!("{at}.name"),
            format!("`{}` is not a service name (letters, digits, '_', '.', ':', '-')", service.name),
        ));
    }
    for (i, flag) in service.scheduler_flags.iter().enumerate() {
        if flag.scheduler() != service.scheduler {
            return Err(invalid(
                format!("{at}.scheduler_flags[{i}]"),
                format!("`{flag}` is a flag of the {} scheduler, not of {}", flag.scheduler(), service.scheduler),
            ));
        }
    }
    check_mh_table_size(at, service)?;
    check_locality_expiration(at, service)?;
    check_full_nat(at, service)?;
    check_persistence(at, service)?;
    check_health(at, service)?;
    let (ipv4, ipv6) = service.families();
    for (j, real) in service.reals.iter().enumerate() {
        let at = format!("{at}.reals[{j}]");
        check_address(&format!("{at}.address"), real.address)?;
        // A plain service has one IP version; a firewall-mark service may have both, and
        // each real server serves the packets of its own.
        let serves_all = (!ipv4 || service.serves(real, true)) && (!ipv6 || service.serves(real, false));
        let serves_any = (ipv4 && service.serves(real, true)) || (ipv6 && service.serves(real, false));
        if (service.fwmark.is_none() && !serves_all) || !serves_any {
            let version = if real.address.is_ipv4() { "IPv6" } else { "IPv4" };
            return Err(invalid(
                format!("{at}.address"),
                format!(
                    "{} and the service's {version} VIP are of different IP versions; {} keeps the packet's IP \
                     version (only tun carries one in the other)",
                    real.address,
                    service.forwarding_of(real)
                ),
            ));
        }
        check_real_port(&at, service, real)?;
        if service.reals[..j].iter().any(|other| other.address == real.address) {
            return Err(invalid(format!("{at}.address"), format!("{} is listed twice", real.address)));
        }
        if real.weight > MAX_WEIGHT {
            return Err(invalid(
                format!("{at}.weight"),
                format!("weight {} is out of range (0 to {MAX_WEIGHT})", real.weight),
            ));
        }
        // As IPVS refuses it (ERANGE): a lower threshold needs an upper one above it.
        if real.lower_threshold > real.upper_threshold {
            return Err(invalid(
                format!("{at}.lower_threshold"),
                format!(
                    "lower threshold {} is above the upper threshold {} (0: none)",
                    real.lower_threshold, real.upper_threshold
                ),
            ));
        }
    }
    Ok(())
}

/// A prime (every real server's skip through the table then reaches every bucket), of
/// a sensible size, at least one bucket per real server (as IPVS refuses more), and
/// only for mh.
fn check_mh_table_size(at: &str, service: &VirtualService) -> Result<(), Invalid> {
    let Some(size) = service.mh_table_size else { return Ok(()) };
    let field = format!("{at}.mh_table_size");
    if service.scheduler != Scheduler::Mh {
        return Err(invalid(field, format!("the table size is mh's; the scheduler is {}", service.scheduler)));
    }
    if !MH_TABLE_SIZES.contains(&size) || !is_prime(size) {
        return Err(invalid(
            field,
            format!(
                "{size} is not a prime from {} to {} (65537 if left out)",
                MH_TABLE_SIZES.start(),
                MH_TABLE_SIZES.end()
            ),
        ));
    }
    if service.reals.len() > size as usize {
        return Err(invalid(field, format!("{size} buckets cannot hold {} real servers", service.reals.len())));
    }
    Ok(())
}

/// IPVS's sysctls `lblc_expiration` and `lblcr_expiration`, per service: each for its
/// own scheduler, a second or more.
fn check_locality_expiration(at: &str, service: &VirtualService) -> Result<(), Invalid> {
    let expirations = [
        ("lblc_expiration", service.lblc_expiration, Scheduler::Lblc),
        ("lblcr_expiration", service.lblcr_expiration, Scheduler::Lblcr),
    ];
    for (name, seconds, scheduler) in expirations {
        let Some(seconds) = seconds else { continue };
        let field = format!("{at}.{name}");
        if service.scheduler != scheduler {
            return Err(invalid(
                field,
                format!("the expiration is {scheduler}'s; the scheduler is {}", service.scheduler),
            ));
        }
        if seconds == 0 {
            return Err(invalid(field, "0 seconds is too short (at least 1)"));
        }
    }
    Ok(())
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// A port of its own only where the packet is rewritten (NAT, Full-NAT), and not on a
/// port-0 service, whose connections keep the port the client asked for.
fn check_real_port(at: &str, service: &VirtualService, real: &Real) -> Result<(), Invalid> {
    let Some(port) = real.port else { return Ok(()) };
    let forwarding = service.forwarding_of(real);
    if Some(port) == service.port {
        return Ok(());
    }
    if !matches!(forwarding, Forwarding::Nat | Forwarding::Fnat) {
        return Err(invalid(
            format!("{at}.port"),
            format!(
                "{forwarding} does not rewrite the packet, so the real server serves the port the client asked \
                 for; port mapping needs nat or fnat"
            ),
        ));
    }
    if service.keeps_ports() || port == 0 {
        return Err(invalid(
            format!("{at}.port"),
            "a port-0 or firewall-mark service keeps the port each client asks for; a real server of it cannot \
             map it to another",
        ));
    }
    Ok(())
}

/// Full-NAT needs a local address of the VIP's family, and a range of local ports.
fn check_full_nat(at: &str, service: &VirtualService) -> Result<(), Invalid> {
    for (k, local) in service.local_addresses.iter().enumerate() {
        check_address(&format!("{at}.local_addresses[{k}]"), *local)?;
    }
    let [first, last] = service.local_port_range;
    if first == 0 || first > last {
        return Err(invalid(
            format!("{at}.local_port_range"),
            format!("[{first}, {last}] is not a range of ports (first from 1, first <= last)"),
        ));
    }
    let full_nat = service.reals.iter().any(|real| service.forwarding_of(real) == Forwarding::Fnat)
        || service.forwarding == Forwarding::Fnat;
    if service.toa {
        check_toa(&format!("{at}.toa"), service, full_nat)?;
    }
    let (ipv4, ipv6) = service.families();
    let served_locals =
        service.local_addresses.iter().filter(|local| if local.is_ipv4() { ipv4 } else { ipv6 }).count();
    if served_locals > MAX_LOCAL_ADDRESSES as usize {
        return Err(invalid(
            format!("{at}.local_addresses"),
            format!("at most {MAX_LOCAL_ADDRESSES} local addresses of the service's IP versions fit, in all"),
        ));
    }
    for (version, ipv4, served) in [("IPv4", true, ipv4), ("IPv6", false, ipv6)] {
        let locals = service.local_addresses_of(ipv4).count();
        let fnat_reals = service
            .reals
            .iter()
            .any(|real| service.forwarding_of(real) == Forwarding::Fnat && real.address.is_ipv4() == ipv4)
            || (service.reals.is_empty() && service.forwarding == Forwarding::Fnat);
        if served && fnat_reals && locals == 0 {
            return Err(invalid(
                format!("{at}.local_addresses"),
                format!(
                    "fnat needs a local address of the VIP's IP version ({version}) for its connections to leave from"
                ),
            ));
        }
    }
    Ok(())
}

/// ipvsadm `-p` / `-M`: a timeout of a second or more, a netmask that is one (of a
/// family the service serves).
fn check_persistence(at: &str, service: &VirtualService) -> Result<(), Invalid> {
    let Some(persistence) = service.persistence else {
        if service.expire_quiescent_template {
            return Err(invalid(
                format!("{at}.expire_quiescent_template"),
                "applies to persistence templates; the service has no persistence:",
            ));
        }
        return Ok(());
    };
    if persistence.timeout == 0 {
        return Err(invalid(format!("{at}.persistence.timeout"), "0 seconds is too short (at least 1)"));
    }
    let (ipv4, ipv6) = service.families();
    let field = format!("{at}.persistence.netmask");
    match persistence.netmask {
        None => Ok(()),
        Some(Netmask::Mask(mask)) if Netmask::mask_prefix(mask).is_none() => {
            Err(invalid(field, format!("{mask} is not a netmask (its ones must come first)")))
        }
        Some(Netmask::Mask(mask)) if !ipv4 => Err(invalid(
            field,
            format!("{mask} is an IPv4 netmask, and the service has no IPv4 VIP; give a prefix length (64)"),
        )),
        Some(Netmask::Prefix(prefix)) if prefix > 128 || (!ipv6 && prefix > 32) => {
            Err(invalid(field, format!("/{prefix} is longer than an address of the service's IP version")))
        }
        Some(_) => Ok(()),
    }
}

/// TOA is a TCP option that only Full-NAT needs: NAT keeps the client's address as the
/// source, and `dr` and `tun` do not rewrite it at all.
fn check_toa(field: &str, service: &VirtualService, full_nat: bool) -> Result<(), Invalid> {
    if let Some(endpoint) = service.endpoints().into_iter().find(|endpoint| endpoint.protocol != Protocol::Tcp) {
        return Err(invalid(field, format!("TOA is a TCP option; a {} service has none to carry", endpoint.protocol)));
    }
    if !full_nat {
        return Err(invalid(
            field,
            format!(
                "TOA goes with fnat, whose real servers see a local address; with {} they see the client's own",
                service.forwarding
            ),
        ));
    }
    Ok(())
}

/// The checks, each where it is written, and the sorry server: a real server of the
/// service's IP version that is not one of its real servers.
fn check_health(at: &str, service: &VirtualService) -> Result<(), Invalid> {
    if let Some(check) = &service.check {
        check.validate(&format!("{at}.check"), service.port.unwrap_or(0))?;
    }
    for (j, real) in service.reals.iter().enumerate() {
        if let Some(check) = &real.check {
            check.validate(&format!("{at}.reals[{j}].check"), service.port_of(real))?;
        }
    }
    if service.quorum == Some(0) {
        return Err(invalid(format!("{at}.quorum"), "a quorum is at least 1 (a sum of weights)"));
    }
    let Some(sorry) = service.sorry_real() else { return Ok(()) };
    let field = format!("{at}.sorry_server");
    check_address(&field, sorry.address)?;
    let (ipv4, ipv6) = service.families();
    if (ipv4 && !service.serves(&sorry, true)) || (ipv6 && !service.serves(&sorry, false)) {
        return Err(invalid(field, format!("{} is not of the service's IP version", sorry.address)));
    }
    if service.reals.iter().any(|real| real.address == sorry.address) {
        return Err(invalid(field, format!("{} is one of the service's real servers", sorry.address)));
    }
    Ok(())
}

fn check_address(field: &str, address: IpAddr) -> Result<(), Invalid> {
    if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
        return Err(invalid(field, format!("{address} cannot be a service or real-server address")));
    }
    Ok(())
}
