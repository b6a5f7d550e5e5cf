//! Fragments of IP datagrams: only a datagram's first fragment carries the ports, so
//! the data path remembers them for the fragments that follow.

/// A datagram, as each of its fragments carries it: addresses, protocol and the IP
/// identification (IPv4's 16 bits, IPv6's 32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// What the first fragment said: its ports, and when it passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstFragment {
    /// Network byte order, as on the wire.
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// Seconds of the kernel's monotonic clock.
    pub seen: u32,
}

/// How long later fragments follow their first one: Linux's IPv6 reassembly timeout
/// (IPv4's is 30 s), after which no receiver would complete the datagram anyway, and
/// an identification that came round again cannot take stale ports.
pub const FRAGMENT_TIMEOUT: u32 = 60;
/// Datagrams in flight whose fragments the data path follows.
pub const FRAGMENT_TABLE_SIZE: u32 = 1 << 16;

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<FragmentKey>() == 40);
const _: () = assert!(core::mem::size_of::<FirstFragment>() == 8);
