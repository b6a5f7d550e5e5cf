//! What a restarted agent needs to carry on with the maps it adopts (see
//! `dataplane::pins`): whose each id is, which real servers had failed their checks,
//! and mh's last weights. The rest, what the maps hold, is read back from them.

use std::{
    collections::{HashMap, HashSet},
    ops::Range,
    time::Instant,
};

use anyhow::Result;
use lb_common::{MAX_REALS, MAX_SERVICES, SCHED_RING_SLOTS};
use serde::{Deserialize, Serialize};

use super::{Director, Ids, RealOwner, Written};
use crate::{
    dataplane::Dataplane,
    health::Down,
    registry::{Registry, SavedRegistry},
    sched::{Ring, Slots},
};

/// The director's part of the agent's saved state. A field added later must have a
/// default, so that a new binary reads the state an older one saved.
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
    /// are that agent's (and those the connection table, templates and lblc entries
    /// still name stay taken), and what the maps hold is read back from them, so the
    /// first change writes only what differs. Answers the real servers that were down.
    pub fn adopt(dataplane: Dataplane, saved: SavedDirector) -> Result<(Self, Down)> {
        let now = Instant::now();
        let in_use = dataplane.conn_references()?;
        let reals = Registry::restore(MAX_REALS, saved.reals, &in_use.reals, now);
        let (written, taken) = read_back(&dataplane, &reals)?;
        let ids = Ids {
            services: Registry::restore(MAX_SERVICES, saved.services, &in_use.services, now),
            reals,
            ring: Ring::with_taken(SCHED_RING_SLOTS, taken),
            last_weights: saved.last_weights.into_iter().collect(),
        };
        let down = Down(saved.down.into_iter().collect());
        Ok((Self { dataplane, ids, written, running: None, sync: None }, down))
    }

    /// Saves what the next agent needs to adopt the maps: `ids` (those the maps name,
    /// or are about to) and the real servers `down`; the attachments come with them.
    pub(super) fn save(&self, ids: &Ids, down: &Down) -> Result<()> {
        let mut last_weights: Vec<(RealOwner, u32)> =
            ids.last_weights.iter().map(|(owner, &weight)| (owner.clone(), weight)).collect();
        last_weights.sort();
        let mut down: Vec<RealOwner> = down.0.iter().cloned().collect();
        down.sort();
        let saved = SavedDirector { services: ids.services.save(), reals: ids.reals.save(), last_weights, down };
        self.dataplane.save_state(saved)
    }
}

/// What the maps hold of the services, real servers (those `reals` names), sequences,
/// local addresses and interfaces; and every run of ring slots a published service
/// names.
fn read_back(dataplane: &Dataplane, reals: &Registry<RealOwner>) -> Result<(Written, Vec<Slots>)> {
    let services = dataplane.services()?;
    // Per service and family, the runs its keys name: one, unless an apply failed
    // while it published them (then the plan publishes a new run to all).
    let mut runs: HashMap<(u32, u8), HashSet<Slots>> = HashMap::new();
    // Per service: the run of local addresses its values name (IPv4's, then IPv6's).
    let mut local_runs: HashMap<u32, Range<u32>> = HashMap::new();
    for (key, service) in &services {
        let slots = service.sequence_start..service.sequence_start + service.sequence_len;
        runs.entry((service.index, key.family)).or_default().insert(slots);
        if service.locals_len > 0 {
            let run = service.locals_start..service.locals_start + u32::from(service.locals_len);
            let all = local_runs.entry(service.index).or_insert_with(|| run.clone());
            *all = all.start.min(run.start)..all.end.max(run.end);
        }
    }
    let taken = runs.values().flatten().cloned().collect();
    let mut sequences = HashMap::new();
    for (key, runs) in runs {
        if let [slots] = runs.into_iter().collect::<Vec<_>>().as_slice() {
            sequences.insert(key, (slots.clone(), dataplane.sequence(slots)?));
        }
    }
    let locals = local_runs
        .into_iter()
        .map(|(index, run)| Ok((index, (run.start, dataplane.local_addresses(run)?))))
        .collect::<Result<_>>()?;
    let reals = reals.ids().map(|id| Ok((id, dataplane.real(id)?))).collect::<Result<_>>()?;
    Ok((Written { interfaces: dataplane.interfaces()?, services, reals, sequences, locals }, taken))
}
