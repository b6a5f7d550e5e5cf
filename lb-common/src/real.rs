//! Real servers: where the data path sends a scheduled packet, and how.

/// How a packet reaches its real server.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Direct routing: only the Ethernet addresses change.
    Dr = 0,
}

impl Forwarding {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Dr),
            _ => None,
        }
    }
}

/// A real server, at its stable id in `REALS`.
///
/// An id is bound to one (service, address) for as long as any connection may use it,
/// so a connection entry that records the id keeps its real server across reloads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealServer {
    pub address: [u8; 16],
    /// The real server's link-layer address, from the director's neighbour table.
    pub mac: [u8; 6],
    /// The link-layer address of the director's interface that reaches it.
    pub director_mac: [u8; 6],
    /// That interface; 0 while the real server is not resolved.
    pub ifindex: u32,
    pub family: u8,
    /// A [`Forwarding`].
    pub forwarding: u8,
    /// The 802.1Q VLAN the real server is on, 0 for none: a frame is forwarded only
    /// from the same VLAN, as direct routing keeps the real server on the client's link.
    pub vlan: u16,
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<RealServer>() == 36);
