//! What a restarted agent needs to carry on with the maps it adopts (see
//! `dataplane::pins`): whose each id is, which real servers had failed their checks,
//! and mh's last weights. The rest, what the maps hold, is read back from them.

use std::{collections::HashMap, ops::Range, time::Instant};

use anyhow::Result;
use lb_common::{MAX_REALS, MAX_SERVICES, SCHED_RING_SLOTS};
use serde::{Deserialize, Serialize};

use super::{Director, Ids, RealOwner, Written};
use crate::{
    dataplane::Dataplane,
    health::Down,
    registry::{Registry, SavedRegistry},
    sched::Ring,
};

/// The director's part of the agent's saved state.
#[derive(Serialize, Deserialize)]
pub struct SavedDirector {
    services: SavedRegistry<String>,
    reals: SavedRegistry<RealOwner>,
    last_weights: Vec<(RealOwner, u32)>,
    /// The real servers whose checks had failed: they stay out until they pass `rise`
    /// checks, as if the agent had not stopped.
    down: Vec<RealOwner>,
}

impl Director {
    /// A director over the maps an earlier agent left, which saved `saved`: the ids
    /// are that agent's, and what the maps hold is read back from them, so the first
    /// change writes only what differs. Answers the real servers that were down.
    pub fn adopt(dataplane: Dataplane, saved: SavedDirector) -> Result<(Self, Down)> {
        let now = Instant::now();
        let reals = Registry::restore(MAX_REALS, saved.reals, now);
        let written = read_back(&dataplane, &reals)?;
        let ids = Ids {
            services: Registry::restore(MAX_SERVICES, saved.services, now),
            reals,
            ring: Ring::with_taken(SCHED_RING_SLOTS, written.sequences.values().map(|(slots, _)| slots.clone())),
            last_weights: saved.last_weights.into_iter().collect(),
        };
        let down = Down(saved.down.into_iter().collect());
        Ok((Self { dataplane, ids, written, running: None }, down))
    }

    /// Saves what the next agent needs (after every change). A failure is logged: the
    /// change is made, and only a restart would miss it.
    pub(super) fn save(&self) {
        let mut last_weights: Vec<(RealOwner, u32)> =
            self.ids.last_weights.iter().map(|(owner, &weight)| (owner.clone(), weight)).collect();
        last_weights.sort();
        let mut down: Vec<RealOwner> = self.running.iter().flat_map(|running| running.down.0.iter().cloned()).collect();
        down.sort();
        let saved =
            SavedDirector { services: self.ids.services.save(), reals: self.ids.reals.save(), last_weights, down };
        if let Err(err) = self.dataplane.save_state(saved) {
            log::error!("saving the agent's state: {err:#}; an agent started after this one could not adopt the maps");
        }
    }
}

/// What the maps hold of the services, real servers (those `reals` names), sequences,
/// local addresses and interfaces.
fn read_back(dataplane: &Dataplane, reals: &Registry<RealOwner>) -> Result<Written> {
    let services = dataplane.services()?;
    let mut sequences = HashMap::new();
    // Per service: the run of local addresses its values name (IPv4's, then IPv6's).
    let mut local_runs: HashMap<u32, Range<u32>> = HashMap::new();
    for (key, service) in &services {
        let slots = service.sequence_start..service.sequence_start + service.sequence_len;
        if let std::collections::hash_map::Entry::Vacant(entry) = sequences.entry((service.index, key.family)) {
            let sequence = dataplane.sequence(&slots)?;
            entry.insert((slots, sequence));
        }
        if service.locals_len > 0 {
            let run = service.locals_start..service.locals_start + u32::from(service.locals_len);
            let all = local_runs.entry(service.index).or_insert_with(|| run.clone());
            *all = all.start.min(run.start)..all.end.max(run.end);
        }
    }
    let locals = local_runs
        .into_iter()
        .map(|(index, run)| Ok((index, (run.start, dataplane.local_addresses(run)?))))
        .collect::<Result<_>>()?;
    let reals = reals.ids().map(|id| Ok((id, dataplane.real(id)?))).collect::<Result<_>>()?;
    Ok(Written { interfaces: dataplane.interfaces()?, services, reals, sequences, locals })
}
