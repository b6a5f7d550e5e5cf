//! The backup's half: a record becomes the entries the data path would have written for
//! the connection (or template), with this director's own ids, so a flow that moves here
//! goes on to the same real server with the same rewrite.

use lb_common::{
    conn::{CONN_REPLY, CONN_TOA, Conn, FlowKey},
    persist::{Persist, PersistKey},
    real::Forwarding,
    sync::SYNC_THRESHOLD,
};

use super::{
    announce::FLAGS,
    directory::Directory,
    wire::{Kind, Record},
};

/// What a record is installed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    Connection { client: (FlowKey, Conn), reply: Option<(FlowKey, Conn)> },
    Template(PersistKey, Persist),
}

/// Why a record cannot be installed yet: it is kept aside until the configuration
/// has what it names (IPVS binds such connections when their real server appears).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unbound {
    Service,
    Real,
}

/// The entries of `record` at `now` (the data path's clock).
pub fn entries(record: &Record, now: u32, directory: &Directory) -> Result<Entries, Unbound> {
    let flow = FlowKey {
        src: record.client.0,
        dst: record.virtual_service.0,
        src_port: record.client.1.to_be_bytes(),
        dst_port: record.virtual_service.1.to_be_bytes(),
        protocol: record.protocol,
        family: record.family,
        _pad: [0; 2],
    };
    let service = directory.service(record.protocol, record.family, record.virtual_service).ok_or(Unbound::Service)?;
    let real = directory.real_id(service.index, &flow, record.real).ok_or(Unbound::Real)?;
    let last_seen = now.saturating_sub(record.idle);
    if record.kind == Kind::Template {
        let key = PersistKey::of(&record.client.0, record.family, service.index, service.persist_prefix);
        return Ok(Entries::Template(key, Persist { real, last_used: last_seen }));
    }
    // Announced already (`SYNC_THRESHOLD` packets): the data path of this director does
    // not announce it again at its third packet.
    let mut conn = Conn::plain(real, service.index, record.forwarding, record.state, SYNC_THRESHOLD, last_seen);
    conn.flags = FLAGS.iter().filter(|(_, wire)| record.flags & wire != 0).fold(0, |flags, (ours, _)| flags | ours);
    let reply = match Forwarding::from_u8(record.forwarding) {
        Some(Forwarding::Nat | Forwarding::Fnat) => Some(rewrite(&flow, &mut conn, record)),
        _ => None,
    };
    Ok(Entries::Connection { client: (flow, conn), reply })
}

/// Completes a NAT or Full-NAT client entry with its rewrite, and answers the reply
/// direction's entry, as the data path's `nat::open` and `fnat::open` write them.
fn rewrite(flow: &FlowKey, conn: &mut Conn, record: &Record) -> (FlowKey, Conn) {
    conn.dst = record.real.0;
    conn.dst_port = record.real.1.to_be_bytes();
    let fnat = record.forwarding == Forwarding::Fnat as u8;
    if fnat {
        conn.src = record.local.0;
        conn.src_port = record.local.1.to_be_bytes();
    }
    let mut reply = *conn;
    // NAT's reply entry has no other flag; Full-NAT's keeps TOA's, for the SYN-ACK.
    reply.flags = if fnat { (conn.flags & CONN_TOA) | CONN_REPLY } else { CONN_REPLY };
    reply.src = flow.dst;
    reply.src_port = flow.dst_port;
    (reply.dst, reply.dst_port) = if fnat { (flow.src, flow.src_port) } else { ([0; 16], [0; 2]) };
    conn.set_deltas(flow, &mut reply);
    (conn.reply_key(flow), reply)
}
