//! What the tests, the demo and the benchmark share: network namespaces, the lab built
//! from them, packets to feed the data path, and a reader of Prometheus text.

pub mod bed;
pub mod capture;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod tunlab;
