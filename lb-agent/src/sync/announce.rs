//! The master's half: a connection the data path announced (or the ager refreshes)
//! becomes a record in the words both directors share, with its persistence
//! template when its service has one.

use lb_common::{
    conn::{CONN_EXPIRE_NODEST, CONN_TOA, CONN_TOA_ACK, CONN_TOA_DONE, Conn, FlowKey},
    persist::{Persist, PersistKey},
    real::Forwarding,
    service::SERVICE_PERSISTENT,
    state,
    sync::SyncEvent,
};

use super::{
    directory::{Directory, serves_on},
    wire::{FLAG_EXPIRE_NODEST, FLAG_TOA, FLAG_TOA_ACK, FLAG_TOA_DONE, Kind, Record},
};

/// The connection flags a peer must keep, as the wire says them.
pub const FLAGS: [(u8, u8); 4] = [
    (CONN_EXPIRE_NODEST, FLAG_EXPIRE_NODEST),
    (CONN_TOA, FLAG_TOA),
    (CONN_TOA_DONE, FLAG_TOA_DONE),
    (CONN_TOA_ACK, FLAG_TOA_ACK),
];

/// An event of the ring buffer, as the data path wrote it.
pub fn event(bytes: &[u8]) -> Option<SyncEvent> {
    // SAFETY: `SyncEvent` is `#[repr(C)]` plain data; the length is checked, and the
    // read does not assume alignment.
    (bytes.len() == size_of::<SyncEvent>()).then(|| unsafe { bytes.as_ptr().cast::<SyncEvent>().read_unaligned() })
}

/// The record of the client entry `conn` at `flow`, at `now` (the data path's clock);
/// `None` if its real server is unknown (removed and forgotten meanwhile).
pub fn connection(flow: &FlowKey, conn: &Conn, now: u32, directory: &Directory) -> Option<Record> {
    let real = directory.real(conn.real)?;
    let rewritten = matches!(Forwarding::from_u8(conn.forwarding), Some(Forwarding::Nat | Forwarding::Fnat));
    let real_port = if rewritten { u16::from_be_bytes(conn.dst_port) } else { serves_on(real, flow) };
    let fnat = conn.forwarding == Forwarding::Fnat as u8;
    Some(Record {
        kind: Kind::Connection,
        protocol: flow.protocol,
        family: flow.family,
        state: conn.state,
        forwarding: conn.forwarding,
        flags: FLAGS.iter().filter(|(ours, _)| conn.flags & ours != 0).fold(0, |flags, (_, wire)| flags | wire),
        idle: now.saturating_sub(conn.last_seen),
        client: (flow.src, u16::from_be_bytes(flow.src_port)),
        virtual_service: (flow.dst, u16::from_be_bytes(flow.dst_port)),
        real: (real.address, real_port),
        local: if fnat { (conn.src, u16::from_be_bytes(conn.src_port)) } else { ([0; 16], 0) },
    })
}

/// The key of the persistence template the connection at `flow` of service `conn`
/// came by, if its service is persistent.
pub fn template_key(flow: &FlowKey, conn: &Conn, directory: &Directory) -> Option<PersistKey> {
    let service = directory.service_by_index(conn.service, flow.family)?;
    (service.flags & SERVICE_PERSISTENT != 0)
        .then(|| PersistKey::of(&flow.src, flow.family, service.index, service.persist_prefix))
}

/// The record of the template `key` (found for the connection at `flow`).
pub fn template(
    flow: &FlowKey,
    key: &PersistKey,
    template: &Persist,
    now: u32,
    directory: &Directory,
) -> Option<Record> {
    let real = directory.real(template.real)?;
    Some(Record {
        kind: Kind::Template,
        protocol: flow.protocol,
        family: flow.family,
        state: state::NONE,
        forwarding: real.forwarding,
        flags: 0,
        idle: now.saturating_sub(template.last_used),
        client: (key.client_net, 0),
        virtual_service: (flow.dst, u16::from_be_bytes(flow.dst_port)),
        real: (real.address, serves_on(real, flow)),
        local: ([0; 16], 0),
    })
}
