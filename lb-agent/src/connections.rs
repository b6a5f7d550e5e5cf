//! The connection list (`lbctl list -c`, `ipvsadm -Lnc`): the table's client entries
//! as an operator reads them, with the time each has left if it stays idle.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_api::ConnectionStatus;
use lb_common::{
    FAMILY_IPV4, IPPROTO_TCP,
    conn::{Conn, FlowKey},
    real::Forwarding,
    state::TCP_STATE_NAMES,
};

use crate::config::Timeouts;

/// The client entry `conn` at `key` as listed at `now` (the data path's clock), its
/// real server at `real` (unknown: none listed); `None` for a reply entry.
pub fn status(
    key: &FlowKey,
    conn: &Conn,
    now: u32,
    timeouts: &Timeouts,
    real: Option<IpAddr>,
) -> Option<ConnectionStatus> {
    if conn.is_reply() {
        return None;
    }
    let tcp = key.protocol == IPPROTO_TCP;
    let idle = now.saturating_sub(conn.last_seen);
    let rewritten = matches!(Forwarding::from_u8(conn.forwarding), Some(Forwarding::Nat | Forwarding::Fnat));
    let destination = if rewritten {
        SocketAddr::new(address(&conn.dst, key.family), u16::from_be_bytes(conn.dst_port))
    } else {
        SocketAddr::new(real?, u16::from_be_bytes(key.dst_port))
    };
    Some(ConnectionStatus {
        protocol: if tcp { "tcp" } else { "udp" }.into(),
        expires: timeouts.of(key.protocol, conn.state).saturating_sub(idle),
        state: if tcp { TCP_STATE_NAMES.get(usize::from(conn.state)).copied().unwrap_or("ERR!") } else { "UDP" }.into(),
        source: SocketAddr::new(address(&key.src, key.family), u16::from_be_bytes(key.src_port)),
        virtual_address: SocketAddr::new(address(&key.dst, key.family), u16::from_be_bytes(key.dst_port)),
        destination,
    })
}

/// An address as the maps store it (an IPv4 one in the first four bytes).
pub fn address(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}
