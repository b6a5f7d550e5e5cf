//! The real servers' health: each checked real server has a task of its own
//! (`checker`) that probes it (`probe`) and counts successes and failures in a row;
//! what the data path serves while some fail is `serving`'s.

pub mod checker;
pub mod probe;

use std::{collections::HashSet, net::IpAddr};

use crate::config::{Config, OnFailure};

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
/// IPVS: a service whose healthy real servers' weights sum to less than its quorum
/// is served by its sorry server alone, if it has one; else each failed real server
/// is quiesced (weight 0) or removed, as its service's `on_failure` says.
pub fn serving(config: &Config, down: &Down) -> Config {
    let mut serving = config.clone();
    for service in &mut serving.services {
        let name = service.name.clone();
        let failed = |address: IpAddr| down.contains(&name, address);
        let healthy: u64 =
            service.reals.iter().filter(|real| !failed(real.address)).map(|real| u64::from(real.weight)).sum();
        if let Some(sorry) = service.sorry_real().filter(|_| healthy < service.quorum()) {
            service.reals = vec![sorry];
            continue;
        }
        match service.on_failure {
            OnFailure::Remove => service.reals.retain(|real| !failed(real.address)),
            OnFailure::Quiesce => {
                service.reals.iter_mut().filter(|real| failed(real.address)).for_each(|real| real.weight = 0)
            }
        }
    }
    serving
}

#[cfg(test)]
mod tests;
