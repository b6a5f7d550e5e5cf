//! The decapsulator (`lb_decap`) on a real server behind a tunnelling (`tun`) director:
//! the addresses it accepts tunnels for, what it counts, and the names both sides use.
//!
//! A director forwards a packet in an IP tunnel: an outer IPv4 header with protocol 4
//! (IPIP) or 41 (IPv6), or an outer IPv6 header with next header 41 or 4, whose
//! destination is the real server, around the client's packet unchanged. `lb_decap`
//! strips the outer header when the outer destination is one of this host's addresses
//! (`DECAP_LOCAL`) and the inner destination one of its VIPs (`DECAP_VIPS`).

use core::net::IpAddr;

use crate::{FAMILY_IPV4, FAMILY_IPV6};

/// An address in `DECAP_VIPS` or `DECAP_LOCAL`: 16 bytes in network order, an IPv4
/// address in the first four and the rest zero, as everywhere in this contract.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressKey {
    pub address: [u8; 16],
    /// [`crate::FAMILY_IPV4`] or [`crate::FAMILY_IPV6`].
    pub family: u8,
    pub _pad: [u8; 3],
}

impl AddressKey {
    pub const fn ipv4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Self { address: [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], family: FAMILY_IPV4, _pad: [0; 3] }
    }

    pub const fn ipv6(octets: [u8; 16]) -> Self {
        Self { address: octets, family: FAMILY_IPV6, _pad: [0; 3] }
    }

    /// The address, if `family` is one.
    pub fn ip(&self) -> Option<IpAddr> {
        let [a, b, c, d, ..] = self.address;
        match self.family {
            FAMILY_IPV4 => Some(IpAddr::V4([a, b, c, d].into())),
            FAMILY_IPV6 => Some(IpAddr::V6(self.address.into())),
            _ => None,
        }
    }
}

impl From<IpAddr> for AddressKey {
    fn from(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self::ipv4(v4.octets()),
            IpAddr::V6(v6) => Self::ipv6(v6.octets()),
        }
    }
}

/// The value of every entry in `DECAP_VIPS` and `DECAP_LOCAL`: the key is what counts.
pub const PRESENT: u8 = 1;

/// Packets decapsulated and handed to the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    /// Bytes of the inner IP packets, as their headers state: what the kernel received.
    pub bytes: u64,
}

/// Generates [`Refusal`], its count, list and labels from one table.
macro_rules! refusals {
    ($($(#[$doc:meta])* $name:ident = $value:literal => $label:literal,)*) => {
        /// Why a tunnel packet was dropped instead of decapsulated. The value is its slot
        /// in `DECAP_REFUSED`. Packets that are not tunnel packets pass untouched and are
        /// not counted.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Refusal {
            $($(#[$doc])* $name = $value,)*
        }

        impl Refusal {
            pub const ALL: &[Refusal] = &[$(Self::$name,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The `reason` label of the counters.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Self::$name => $label,)*
                }
            }
        }
    };
}

refusals! {
    /// The outer destination is not an address of this host.
    NotLocal = 0 => "not_local",
    /// The inner destination is not one of the VIPs.
    NotAVip = 1 => "not_a_vip",
    /// The outer IP header is cut, or its version, lengths or (IPv4) checksum are wrong.
    MalformedOuter = 2 => "malformed_outer",
    /// An outer IPv4 fragment: only a whole tunnel packet can be decapsulated.
    Fragment = 3 => "fragment",
    /// The tunnel's payload ends inside the inner IP header.
    TruncatedInner = 4 => "truncated_inner",
    /// The inner header's version is not the one the outer header announced, or its
    /// lengths do not fit the tunnel's payload, or its (IPv4) checksum is wrong.
    MalformedInner = 5 => "malformed_inner",
}

/// VIPs one decapsulator accepts.
pub const MAX_VIPS: u32 = 1024;
/// Addresses of this host one decapsulator knows.
pub const MAX_LOCAL_ADDRESSES: u32 = 1024;

/// Names of the program and its maps in the object, and of their pins.
pub mod names {
    pub const PROGRAM: &str = "lb_decap";
    pub const VIPS: &str = "DECAP_VIPS";
    pub const LOCAL: &str = "DECAP_LOCAL";
    pub const DECAPSULATED: &str = "DECAP_STATS";
    pub const REFUSED: &str = "DECAP_REFUSED";
}

// The layout is the contract: no implicit padding, the same size on both sides.
const _: () = assert!(core::mem::size_of::<AddressKey>() == 20);
const _: () = assert!(core::mem::size_of::<Traffic>() == 16);
