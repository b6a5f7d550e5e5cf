//! The connection table: one entry per flow, so a connection stays on its real server.

/// A flow's 5-tuple as the client sent it; either family, unused address bytes zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports in network byte order, as on the wire.
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// What the director remembers of a flow: enough to forward and count its packets
/// without looking its service up again, even after the service is removed (as IPVS
/// lets a removed service's connections finish).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// The stable id of the real server the flow was scheduled to.
    pub real: u32,
    /// The index of the service it was scheduled by, for the counters.
    pub service: u32,
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Conn>() == 8);
