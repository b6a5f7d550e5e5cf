//! The director's own interfaces, where `lb_ingress` is attached.

/// A device of the director that clients reach it on: an attached interface, or a VLAN
/// over one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceKey {
    /// The attached interface's ifindex.
    pub ifindex: u32,
    /// The 802.1Q VLAN id, 0 for the untagged link.
    pub vlan: u16,
    pub _pad: [u8; 2],
}

/// The value of a device in `INTERFACES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Frames addressed to another MAC (flooded by a switch, or seen by a backup
    /// director) are not the director's to forward.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Slots of `INTERFACE_SLOTS`, the array in front of `INTERFACES`: a device is looked
/// for in its slot first (an array read), and in the hash map only when another device
/// holds the slot. The hash lookup it spares is some 20 ns of a new flow's time.
pub const SLOTS: u32 = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 8;

/// A device in its slot of `INTERFACE_SLOTS`. A free slot has ifindex 0, which no
/// device has.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceSlot {
    pub key: InterfaceKey,
    pub interface: Interface,
}

impl InterfaceKey {
    /// The device's slot of `INTERFACE_SLOTS`: the top bits of a Fibonacci hash, as
    /// ifindexes and VLAN ids are small numbers that often differ only in low bits.
    pub fn slot(&self) -> u32 {
        (self.ifindex ^ u32::from(self.vlan) << 16).wrapping_mul(0x9e37_79b1) >> (32 - SLOT_BITS)
    }
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<Interface>() == 8);
const _: () = assert!(core::mem::size_of::<InterfaceKey>() == 8);
const _: () = assert!(core::mem::size_of::<InterfaceSlot>() == 16);
