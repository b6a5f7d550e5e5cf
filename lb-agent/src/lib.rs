//! The load balancer's agent: the only writer of the data path's maps.
//!
//! `main` wires these together; tests and the benchmark use them directly.

pub mod api;
pub mod config;
pub mod connections;
pub mod control;
pub mod dataplane;
pub mod director;
pub mod expiry;
pub mod group;
pub mod health;
pub mod metrics;
pub mod neighbour;
pub mod offload;
pub mod registry;
pub mod sched;
pub mod sync;
pub mod systemd;
