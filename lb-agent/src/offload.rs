//! The receive VLAN offload of an interface. With it on, the driver takes 802.1Q tags
//! out of the frame before XDP sees it, so `lb_ingress` would take a tagged client for
//! an untagged one and could forward it to a real server on another VLAN. The agent
//! turns it off where it attaches, and back on when it detaches.
//!
//! This is ethtool's flags ioctl (ETHTOOL_GFLAGS/SFLAGS), the same switch as
//! `ethtool -K <interface> rxvlan off`.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
const ETH_FLAG_RXVLAN: u32 = 1 << 8;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union.
#[repr(C)]
struct Ifreq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _rest: [u8; 16],
}

pub fn rx_vlan_offload(interface: &str) -> io::Result<bool> {
    Ok(flags(interface)? & ETH_FLAG_RXVLAN != 0)
}

pub fn set_rx_vlan_offload(interface: &str, on: bool) -> io::Result<()> {
    let flags = flags(interface)?;
    let flags = if on { flags | ETH_FLAG_RXVLAN } else { flags & !ETH_FLAG_RXVLAN };
    ethtool(interface, ETHTOOL_SFLAGS, flags).map(drop)
}

fn flags(interface: &str) -> io::Result<u32> {
    ethtool(interface, ETHTOOL_GFLAGS, 0)
}

fn ethtool(interface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut name = [0u8; libc::IFNAMSIZ];
    if interface.len() >= name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    name[..interface.len()].copy_from_slice(interface.as_bytes());
    let mut value = EthtoolValue { cmd, data };
    let mut request = Ifreq { name, data: &mut value, _rest: [0; 16] };
    // SAFETY: a plain datagram socket, owned at once.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: the request and the value it points at live across the call, laid out as
    // the kernel's ifreq and ethtool_value.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
