//! `lb-decap`: the real server's side of tunnelling (LVS-TUN). It attaches `lb_decap`
//! (`lb-ebpf/src/bin/lb-decap`), gives it the VIPs, keeps the host's addresses in it
//! current, pins its maps for `lb-decap status`, and detaches on SIGTERM or SIGINT.
//!
//! `main` wires these together; the tests use them directly.

pub mod addresses;
pub mod decapsulator;
pub mod status;
