//! Changes to a configuration (lbctl's, ipvsadm's): each makes a new configuration from
//! the running one, read with the file's own rules (its keys, its checks), so a change
//! can say nothing the file could not, and a refused one leaves the old in place.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use lb_api::{Change, Map, RealRef, ServiceRef, Value};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    Config, Real, VirtualService,
    sync::{Role, Sync},
    validate,
};

/// `config` with every change made, in order, and checked as a whole.
pub fn apply(config: &Config, changes: &[Change]) -> Result<Config> {
    let mut edited = config.clone();
    for change in changes {
        edited = apply_one(edited, change)?;
    }
    // Who may use the socket, and where it and the metrics are, are root's to set in the
    // file: a member of the socket's group must not widen or move them.
    if let Some(field) = config.restart_only_changes(&edited).first() {
        bail!("{field} is set in the configuration file by root, not through lbctl");
    }
    validate::check(&edited)
        .map_err(|invalid| anyhow!("{}: {}", readable_field(&edited, &invalid.field), invalid.message))?;
    Ok(edited)
}

fn apply_one(mut config: Config, change: &Change) -> Result<Config> {
    match change {
        Change::AddService { service } => {
            let service = new_service(&config, service)?;
            if let Some(existing) = config.services.iter().find(|s| same_address(s, &service)) {
                bail!("the service already exists, as `{}`", existing.name);
            }
            config.services.push(service);
        }
        Change::EditService { service, set } => {
            let index = service_index(&config, service)?;
            let edited = merged(&config.services[index], set).with_context(|| format!("service {service}"))?;
            config.services[index] = edited;
        }
        Change::DeleteService { service } => {
            let index = service_index(&config, service)?;
            config.services.remove(index);
        }
        Change::Clear => config.services.clear(),
        Change::AddReal { service, real } => {
            let index = service_index(&config, service)?;
            let target = &mut config.services[index];
            let real: Real = read(Value::Object(real.clone())).with_context(|| format!("service {service}: real"))?;
            if target.reals.iter().any(|existing| existing.address == real.address) {
                bail!("service {service}: real server {} already exists", real.address);
            }
            target.reals.push(real);
        }
        Change::EditReal { service, real, set } => {
            let index = service_index(&config, service)?;
            let target = &mut config.services[index];
            let at = real_index(target, real).with_context(|| format!("service {service}"))?;
            let edited = merged(&target.reals[at], set).with_context(|| format!("service {service}: real {real}"))?;
            target.reals[at] = edited;
        }
        Change::DeleteReal { service, real } => {
            let index = service_index(&config, service)?;
            let target = &mut config.services[index];
            let at = real_index(target, real).with_context(|| format!("service {service}"))?;
            target.reals.remove(at);
        }
        Change::SetTimeouts { set } => config.timeouts = merged(&config.timeouts, set).context("timeouts")?,
        Change::StartDaemon { state, set } => config.sync = Some(started(config.sync.take(), state, set)?),
        Change::StopDaemon { state } => {
            let mut sync = config.sync.take().context("no sync daemon runs")?;
            sync.role = sync.role.without(daemon_state(state)?);
            config.sync = Some(sync);
        }
        Change::Replace { yaml } => return Ok(Config::parse(yaml, Path::new("(the configuration given)"))?),
    }
    Ok(config)
}

/// The `sync:` block once `state`'s daemon starts with the settings `set`: a new block
/// needs its interface (ipvsadm's `--mcast-interface`); the rest keeps IPVS's defaults.
fn started(sync: Option<Sync>, state: &str, set: &Map<String, Value>) -> Result<Sync> {
    let state = daemon_state(state)?;
    let mut sync = match sync {
        Some(sync) => merged(&sync, set).context("sync")?,
        None => {
            let mut fields = set.clone();
            fields.insert("role".into(), Value::String(state.to_string()));
            read(Value::Object(fields)).context("sync (a new sync daemon needs --mcast-interface)")?
        }
    };
    sync.role = sync.role.with(state);
    Ok(sync)
}

fn daemon_state(state: &str) -> Result<Role> {
    match state {
        "master" => Ok(Role::Master),
        "backup" => Ok(Role::Backup),
        other => bail!("`{other}` is not a sync daemon's state: master or backup"),
    }
}

/// A service from an `add`: named after its address when it has no name (ipvsadm's
/// services have none), and never by a name in use.
fn new_service(config: &Config, fields: &Map<String, Value>) -> Result<VirtualService> {
    let mut fields = fields.clone();
    if !fields.contains_key("name") {
        fields.insert("name".into(), Value::String(String::new()));
    }
    let mut service: VirtualService = read(Value::Object(fields)).context("service")?;
    if service.name.is_empty() {
        service.name = free_name(config, &derived_name(&service));
    }
    if config.services.iter().any(|existing| existing.name == service.name) {
        bail!("service name `{}` is already used", service.name);
    }
    Ok(service)
}

/// ipvsadm's way of naming a service, made one word: `tcp-203.0.113.10-80`,
/// `fwm-11`.
fn derived_name(service: &VirtualService) -> String {
    match (service.fwmark, service.protocol, service.vip, service.port) {
        (Some(mark), ..) => format!("fwm-{mark}"),
        (None, Some(protocol), Some(vip), Some(port)) => format!("{protocol}-{vip}-{port}"),
        _ => "service".into(),
    }
}

fn free_name(config: &Config, base: &str) -> String {
    let taken = |name: &str| config.services.iter().any(|service| service.name == name);
    (1..)
        .map(|n| if n == 1 { base.to_owned() } else { format!("{base}-{n}") })
        .find(|name| !taken(name))
        .unwrap_or_default()
}

/// Whether two services answer at the same place (ipvsadm's identity of a service).
fn same_address(a: &VirtualService, b: &VirtualService) -> bool {
    match (a.fwmark, b.fwmark) {
        (Some(x), Some(y)) => x == y,
        (None, None) => (a.vip, a.port, a.protocol) == (b.vip, b.port, b.protocol),
        _ => false,
    }
}

pub fn service_index(config: &Config, wanted: &ServiceRef) -> Result<usize> {
    config.services.iter().position(|service| is_service(service, wanted)).ok_or_else(|| anyhow!("no service {wanted}"))
}

fn is_service(service: &VirtualService, wanted: &ServiceRef) -> bool {
    let protocol = service.protocol.map(|protocol| protocol.to_string());
    let address = match (&protocol, service.vip, service.port) {
        (Some(protocol), Some(vip), Some(port)) => Some((protocol.as_str(), vip, port)),
        _ => None,
    };
    wanted.names(&service.name, service.fwmark, address)
}

fn real_index(service: &VirtualService, wanted: &RealRef) -> Result<usize> {
    service
        .reals
        .iter()
        .position(|real| real.address == wanted.address && wanted.port.is_none_or(|port| service.port_of(real) == port))
        .ok_or_else(|| anyhow!("no real server {wanted}"))
}

/// `value` with the keys of `set` replaced (`null` takes a key out, back to its
/// default), read again by the file's rules.
fn merged<T: Serialize + DeserializeOwned>(value: &T, set: &Map<String, Value>) -> Result<T> {
    let Value::Object(mut fields) = serde_json::to_value(value)? else { bail!("not a mapping") };
    for (key, new) in set {
        match new {
            Value::Null => fields.remove(key),
            new => fields.insert(key.clone(), new.clone()),
        };
    }
    read(Value::Object(fields))
}

fn read<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|err| anyhow!("{err}"))
}

/// A checker's field path (`services[2].reals[0].weight`) with the service named, as
/// an operator who never saw the file's order knows it.
fn readable_field(config: &Config, field: &str) -> String {
    let Some(rest) = field.strip_prefix("services[") else { return field.to_owned() };
    let Some((index, rest)) = rest.split_once(']') else { return field.to_owned() };
    match index.parse::<usize>().ok().and_then(|index| config.services.get(index)) {
        Some(service) if rest.is_empty() => format!("service {}", service.name),
        Some(service) => format!("service {}: {}", service.name, rest.trim_start_matches('.')),
        None => field.to_owned(),
    }
}

#[cfg(test)]
pub(super) mod tests;
