//! Connection synchronisation (IPVS's sync daemon): the data path tells the agent which
//! connections its peers must learn of, through a ring buffer the agent drains, so a
//! packet never waits for a system call.

use crate::{
    IPPROTO_TCP, IPPROTO_UDP,
    conn::{Conn, FlowKey},
    state::{CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT, TIME_WAIT},
};

/// A connection to announce: its client direction's key and entry, as the entry is
/// once the packet that caused the announcement has changed it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncEvent {
    pub flow: FlowKey,
    pub conn: Conn,
}

/// Bytes of `SYNC_EVENTS` (a power of two, as the kernel requires): some ten thousand
/// events, a second of a busy director's new connections, while the agent is late.
pub const SYNC_RING_BYTES: u32 = 1 << 20;

/// How the data path announces, as the agent sets it (`SYNC_SETTINGS[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSettings {
    /// Not 0 while the agent is a sync master draining `SYNC_EVENTS`; 0 leaves the ring
    /// alone.
    pub announce: u32,
    /// A connection whose packet comes after this many seconds without one is announced
    /// again (0: never): its peers' copy, stamped with the last time they heard of it,
    /// may be near its timeout, and the agent's refreshes would come too late.
    pub quiet: u32,
}

/// A connection without states (UDP) is announced at this packet, as IPVS's
/// `sync_threshold`: a one-datagram flow (a DNS query) is not worth its peers' time.
pub const SYNC_THRESHOLD: u8 = 3;

/// Whether a TCP connection that enters `state` is announced (IPVS's
/// `ip_vs_sync_conn_needed`): once established, and at every step of its closing. A
/// half-open connection is not, so a SYN flood does not flood the peers too.
pub const fn announces(protocol: u8, state: u8) -> bool {
    protocol == IPPROTO_TCP && matches!(state, ESTABLISHED | FIN_WAIT | CLOSE | CLOSE_WAIT | TIME_WAIT)
}

/// Whether the peers know of the connection of client entry `conn` (its current state
/// was announced).
pub const fn announced(protocol: u8, conn: &Conn) -> bool {
    announces(protocol, conn.state) || protocol == IPPROTO_UDP && conn.packets >= SYNC_THRESHOLD
}

const _: () = assert!(core::mem::size_of::<SyncEvent>() == 96);
const _: () = assert!(core::mem::size_of::<SyncSettings>() == 8);
