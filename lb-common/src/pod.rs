//! aya's `Pod` for every type that crosses the map boundary.
//!
//! SAFETY (for each impl): the type is `#[repr(C)]`, `Copy`, made only of integers and
//! byte arrays, with its padding written out as fields, so any bit pattern is valid.

use crate::{
    conn::{Conn, FlowKey},
    decap::{AddressKey, Traffic},
    interface::{Interface, InterfaceKey, InterfaceSlot},
    locality::{Locality, LocalityKey},
    persist::{Persist, PersistKey},
    real::RealServer,
    service::{SchedCursor, Service, ServiceKey, ServiceSlot},
    stats::Counters,
    sync::SyncSettings,
};

unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for Service {}
unsafe impl aya::Pod for RealServer {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for Conn {}
unsafe impl aya::Pod for crate::conn::table::ConnTableInfo {}
unsafe impl aya::Pod for Counters {}
unsafe impl aya::Pod for SchedCursor {}
unsafe impl aya::Pod for Interface {}
unsafe impl aya::Pod for InterfaceKey {}
unsafe impl aya::Pod for InterfaceSlot {}
unsafe impl aya::Pod for ServiceSlot {}
unsafe impl aya::Pod for AddressKey {}
unsafe impl aya::Pod for Traffic {}
unsafe impl aya::Pod for PersistKey {}
unsafe impl aya::Pod for Persist {}
unsafe impl aya::Pod for LocalityKey {}
unsafe impl aya::Pod for Locality {}
unsafe impl aya::Pod for SyncSettings {}
