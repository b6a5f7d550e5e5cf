//! A task per checked real server, each with its own timer: it probes, counts
//! successes and failures in a row, and turns the real server down after `fall`
//! failures and up after `rise` successes. A real server starts up (as keepalived's
//! do), so a new one serves at once and a failing one leaves within `fall` checks.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use prometheus_client::metrics::histogram::Histogram;
use tokio::{
    sync::Notify,
    task::AbortHandle,
    time::{MissedTickBehavior, interval},
};

use super::{Down, Owner, probe};
use crate::{
    config::{Check, Config},
    control,
};

/// The buckets of `lb_health_check_duration_seconds`: from a LAN's round trip to a
/// slow page's.
const DURATION_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// What one task checks: how, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub check: Check,
    pub at: SocketAddr,
}

/// The checked real servers' states, shared by their tasks, the control that applies
/// them and the metrics.
#[derive(Debug, Default)]
pub struct Health {
    states: Mutex<HashMap<Owner, State>>,
    /// Told when a real server goes down or up.
    changed: Notify,
}

#[derive(Debug)]
pub struct State {
    pub up: bool,
    /// Failures in a row while up, successes in a row while down.
    in_a_row: u32,
    pub failures: u64,
    pub duration: Histogram,
}

impl State {
    fn new() -> Self {
        Self { up: true, in_a_row: 0, failures: 0, duration: Histogram::new(DURATION_BUCKETS) }
    }
}

impl Health {
    fn states(&self) -> MutexGuard<'_, HashMap<Owner, State>> {
        control::lock(&self.states)
    }

    /// Returns when a real server went down or up since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The real servers of `config` that are down; one it does not check yet is up.
    pub fn down(&self, config: &Config) -> Down {
        let states = self.states();
        let down = targets(config).into_keys().filter(|owner| states.get(owner).is_some_and(|state| !state.up));
        Down(down.collect())
    }

    /// Starts the real servers of `down` down (an earlier agent found them so): they
    /// serve again after `rise` passed checks, as they would have.
    pub fn seed(&self, down: &Down) {
        let mut states = self.states();
        for owner in &down.0 {
            states.insert(owner.clone(), State { up: false, ..State::new() });
        }
    }

    /// Calls `each` with every checked real server's state.
    pub fn for_each(&self, mut each: impl FnMut(&Owner, &State)) {
        for (owner, state) in self.states().iter() {
            each(owner, state);
        }
    }

    /// Starts counting `owner`'s checks anew, from the state it reached (up if new).
    pub(super) fn start(&self, owner: &Owner) {
        self.states().entry(owner.clone()).or_insert_with(State::new).in_a_row = 0;
    }

    /// Counts one check's outcome; says so when it turns the real server down or up.
    pub(super) fn record(&self, owner: &Owner, target: &Target, took: Duration, outcome: anyhow::Result<()>) {
        let mut states = self.states();
        let Some(state) = states.get_mut(owner) else { return };
        state.duration.observe(took.as_secs_f64());
        let healthy = outcome.is_ok();
        if let Err(why) = &outcome {
            state.failures += 1;
            log::debug!("service {}: {} check of {} failed: {why:#}", owner.0, target.check.kind, target.at);
        }
        // A result that agrees with the state breaks a run of the other kind.
        if healthy == state.up {
            state.in_a_row = 0;
            return;
        }
        state.in_a_row += 1;
        let (service, address, check) = (&owner.0, owner.1, &target.check);
        let what = format!("{} checks of {}", check.kind, target.at);
        if state.up && state.in_a_row >= check.fall {
            let why = outcome.err().map(|why| format!("{why:#}")).unwrap_or_default();
            log::warn!(
                "service {service}: real server {address} is down: {} {what} failed in a row (last: {why})",
                check.fall
            );
        } else if !state.up && state.in_a_row >= check.rise {
            log::info!("service {service}: real server {address} is up again: {} {what} passed in a row", check.rise);
        } else {
            return;
        }
        state.up = !state.up;
        state.in_a_row = 0;
        self.changed.notify_one();
    }
}

/// The checks of `config`'s real servers, by owner.
pub fn targets(config: &Config) -> HashMap<Owner, Target> {
    let mut targets = HashMap::new();
    for service in &config.services {
        for real in &service.reals {
            let Some(check) = service.check_of(real) else { continue };
            let at = SocketAddr::new(real.address, check.port_on(service.port_of(real)));
            targets.insert((service.name.clone(), real.address), Target { check: check.clone(), at });
        }
    }
    targets
}

/// The running tasks, one per checked real server.
pub struct Checkers {
    health: Arc<Health>,
    tasks: HashMap<Owner, (Target, AbortHandle)>,
}

impl Checkers {
    /// Checkers that keep their findings in `health`.
    pub fn new(health: Arc<Health>) -> Self {
        Self { health, tasks: HashMap::new() }
    }

    /// Checks what `config` asks to: a real server whose check is unchanged keeps its
    /// task and state; a changed check starts again from the state it reached; the
    /// real servers no longer checked are forgotten.
    pub fn follow(&mut self, config: &Config) {
        let mut targets = targets(config);
        self.tasks.retain(|owner, (target, task)| {
            let kept = targets.get(owner) == Some(target);
            if kept {
                targets.remove(owner);
            } else {
                task.abort();
            }
            kept
        });
        self.health.states().retain(|owner, _| self.tasks.contains_key(owner) || targets.contains_key(owner));
        for (owner, target) in targets {
            self.health.start(&owner);
            let task = tokio::spawn(run(owner.clone(), target.clone(), self.health.clone()));
            self.tasks.insert(owner, (target, task.abort_handle()));
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// Checks one real server every `interval` (the first at once), for as long as the
/// task lives.
async fn run(owner: Owner, target: Target, health: Arc<Health>) {
    let mut ticks = interval(target.check.interval.0);
    // A check that takes longer than the interval delays the next, never doubles it.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let outcome = probe::probe(&target.check, target.at).await;
        health.record(&owner, &target, started.elapsed(), outcome);
    }
}
