//! The rules a configuration must meet beyond its syntax, each naming the field at fault.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{MAX_LOCAL_ADDRESSES, MAX_REALS, MAX_SERVICES};

use super::{Config, Forwarding, Protocol, Real, Scheduler, VirtualService};

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
    check_timeouts(config)?;
    if config.services.len() > MAX_SERVICES as usize {
        return Err(invalid("services", format!("at most {MAX_SERVICES} services fit")));
    }
    let reals: usize = config.services.iter().map(|service| service.reals.len()).sum();
    if reals > MAX_REALS as usize {
        return Err(invalid("services", format!("at most {MAX_REALS} real servers fit, in all")));
    }
    let mut names = HashMap::new();
    let mut addresses = HashMap::new();
    for (i, service) in config.services.iter().enumerate() {
        let at = format!("services[{i}]");
        if let Some(first) = names.insert(service.name.as_str(), i) {
            return Err(invalid(
                format!("{at}.name"),
                format!("service name `{}` is already used by services[{first}]", service.name),
            ));
        }
        let address = (service.vip, service.port, service.protocol);
        if let Some(first) = addresses.insert(address, i) {
            return Err(invalid(
                format!("{at}.port"),
                format!("{} port {} is already served by services[{first}]", service.protocol, service.port),
            ));
        }
        check_service(&at, service)?;
    }
    Ok(())
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
    check_address(&format!("{at}.vip"), service.vip)?;
    lb_common::service::Scheduler::try_from(service.scheduler)
        .map_err(|unsupported| invalid(format!("{at}.scheduler"), unsupported.to_string()))?;
    for (i, flag) in service.scheduler_flags.iter().enumerate() {
        if flag.scheduler() != service.scheduler {
            return Err(invalid(
                format!("{at}.scheduler_flags[{i}]"),
                format!("`{flag}` is a flag of the {} scheduler, not of {}", flag.scheduler(), service.scheduler),
            ));
        }
    }
    check_mh_table_size(at, service)?;
    check_full_nat(at, service)?;
    for (j, real) in service.reals.iter().enumerate() {
        let at = format!("{at}.reals[{j}]");
        check_address(&format!("{at}.address"), real.address)?;
        if real.address.is_ipv4() != service.vip.is_ipv4() && service.forwarding_of(real) != Forwarding::Tun {
            return Err(invalid(
                format!("{at}.address"),
                format!(
                    "{} and the VIP {} are of different IP versions; {} keeps the packet's IP version (only tun \
                     carries one in the other)",
                    real.address,
                    service.vip,
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
        let dynamic = lb_common::service::Scheduler::try_from(service.scheduler).is_ok_and(|s| s.is_dynamic());
        if real.upper_threshold != 0 && !dynamic {
            return Err(invalid(
                format!("{at}.upper_threshold"),
                format!(
                    "thresholds are not supported with {} yet (they are with lc, wlc, sed, nq, fo, ovf)",
                    service.scheduler
                ),
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

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// A port of its own only where the packet is rewritten (NAT, Full-NAT), and not on a
/// port-0 service, whose connections keep the port the client asked for.
fn check_real_port(at: &str, service: &VirtualService, real: &Real) -> Result<(), Invalid> {
    let Some(port) = real.port else { return Ok(()) };
    let forwarding = service.forwarding_of(real);
    if port == service.port {
        return Ok(());
    }
    if !matches!(forwarding, Forwarding::Nat | Forwarding::Fnat) {
        return Err(invalid(
            format!("{at}.port"),
            format!(
                "{forwarding} does not rewrite the packet, so the real server serves the service's port {}; \
                 port mapping needs nat or fnat",
                service.port
            ),
        ));
    }
    if service.port == 0 || port == 0 {
        return Err(invalid(
            format!("{at}.port"),
            "a port-0 service keeps the port each client asks for; a real server of it cannot map it to another",
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
    let locals = service.local_addresses_of_family().count();
    if locals > MAX_LOCAL_ADDRESSES as usize {
        return Err(invalid(
            format!("{at}.local_addresses"),
            format!("at most {MAX_LOCAL_ADDRESSES} local addresses of one IP version fit"),
        ));
    }
    let full_nat = service.reals.iter().any(|real| service.forwarding_of(real) == Forwarding::Fnat)
        || service.forwarding == Forwarding::Fnat;
    if service.toa {
        check_toa(&format!("{at}.toa"), service, full_nat)?;
    }
    if full_nat && locals == 0 {
        let version = if service.vip.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(invalid(
            format!("{at}.local_addresses"),
            format!("fnat needs a local address of the VIP's IP version ({version}) for its connections to leave from"),
        ));
    }
    Ok(())
}

/// TOA is a TCP option that only Full-NAT needs: NAT keeps the client's address as the
/// source, and `dr` and `tun` do not rewrite it at all.
fn check_toa(field: &str, service: &VirtualService, full_nat: bool) -> Result<(), Invalid> {
    if service.protocol != Protocol::Tcp {
        return Err(invalid(field, format!("TOA is a TCP option; a {} service has none to carry", service.protocol)));
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

fn check_address(field: &str, address: IpAddr) -> Result<(), Invalid> {
    if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
        return Err(invalid(field, format!("{address} cannot be a service or real-server address")));
    }
    Ok(())
}
