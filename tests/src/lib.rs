//! What the tests, the demo and the benchmark share: network namespaces, the labs built
//! from them (one director, and the high-availability ones), packets to feed the data
//! path, connections opened at a rate and held, a reader of Prometheus text, and the
//! queries of `deploy/`'s Prometheus and Grafana files.

pub mod bed;
pub mod capture;
pub mod deploy;
pub mod halab;
pub mod lab;
pub mod load;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod tunlab;
