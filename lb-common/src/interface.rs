//! The director's own interfaces, where `lb_ingress` is attached.

/// An attached interface, at its ifindex in `INTERFACES`.
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
