//! Telling systemd how the agent is doing, for `Type=notify` units: the sd_notify
//! protocol, one datagram to `$NOTIFY_SOCKET`. Outside systemd it does nothing.

use std::os::{
    linux::net::SocketAddrExt,
    unix::net::{SocketAddr, UnixDatagram},
};

/// Sends `state` (`READY=1`, `RELOADING=1`, `STOPPING=1`, ...); a failure is logged,
/// never fatal: the service works the same, systemd only knows less.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy();
    // A leading '@' names a socket in the abstract namespace.
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path.as_ref()),
    };
    let sent = address.and_then(|address| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address));
    if let Err(err) = sent {
        log::warn!("telling systemd {state}: {err}");
    }
}
