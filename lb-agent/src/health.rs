//! The real servers' health: each checked real server has a task of its own
//! (`checker`) that probes it (`probe`) and counts successes and failures in a row;
//! what the data path serves while some fail is `serving`'s.

pub mod checker;
pub mod probe;

use std::{collections::HashSet, net::IpAddr};

use crate::config::{Config, OnFailure, Real};

/// A real server of a service, as its check knows it.
pub type Owner = (String, IpAddr);

/// The real servers whose check failed (and has not risen since).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Down(pub HashSet<Owner>);

impl Down {
    pub fn contains(&self, service: &str, address: IpAddr) -> bool {
        self.0.contains(&(service.to_owned(), address))
    }
}

/// What the data path serves of `config` while `down` fail, as keepalived would leave
/// IPVS: each failed real server is quiesced (weight 0) or removed, as its service's
/// `on_failure` says; a service whose healthy real servers' weights sum to less than
/// its quorum (at most their total weight, as keepalived lowers it) has its sorry
/// server serve, if it has one, and every real server taken out the same way.
pub fn serving(config: &Config, down: &Down) -> Config {
    let mut serving = config.clone();
    for service in &mut serving.services {
        let name = service.name.clone();
        let weight = |real: &Real| u64::from(real.weight);
        let total: u64 = service.reals.iter().map(weight).sum();
        let healthy: u64 = service.reals.iter().filter(|real| !down.contains(&name, real.address)).map(weight).sum();
        let sorry = service.sorry_real().filter(|_| healthy < service.quorum().min(total));
        let out = |real: &Real| sorry.is_some() || down.contains(&name, real.address);
        match service.on_failure {
            OnFailure::Remove => service.reals.retain(|real| !out(real)),
            OnFailure::Quiesce => service.reals.iter_mut().filter(|real| out(real)).for_each(|real| real.weight = 0),
        }
        service.reals.extend(sorry);
    }
    serving
}

#[cfg(test)]
mod tests;
