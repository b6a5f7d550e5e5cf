//! The director's own interfaces, where `lb_ingress` is attached.

/// A device of the director that clients reach it on: an attached interface, or a VLAN
/// over one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceKey {
    /// The attached interface's ifindex.
    pub ifindex: u32,
    /// The 802.1Q VLAN id, 0 for the untagged link.
    pub vlan: u16,
    pub _pad: [u8; 2],
}

/// The value of a device in `INTERFACES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Frames addressed to another MAC (flooded by a switch, or seen by a backup
    /// director) are not the director's to forward.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<Interface>() == 8);
const _: () = assert!(core::mem::size_of::<InterfaceKey>() == 8);
