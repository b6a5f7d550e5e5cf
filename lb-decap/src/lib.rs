//! `lb-decap`: the real server's side of tunnelling (LVS-TUN). It attaches `lb_decap`
//! (`lb-ebpf/src/bin/lb-decap`), gives it the VIPs, keeps the host's addresses in it
//! current, answers `lb-decap status` on a socket of its network namespace, and
//! detaches on SIGTERM or SIGINT.
//!
//! `main` wires these together; the tests use them directly.

pub mod addresses;
pub mod decapsulator;
pub mod status;
