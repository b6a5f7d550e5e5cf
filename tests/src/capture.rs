//! Frames as a host of a lab receives them: a raw packet socket on one of its
//! interfaces, opened inside its namespace, read after the traffic.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// `sll_pkttype` of a frame the host sent itself.
const PACKET_OUTGOING: u8 = 4;

pub struct Capture {
    socket: OwnedFd,
}

impl Capture {
    /// Starts taking every frame `device` of `netns` receives.
    pub fn open(netns: &Netns, device: &str) -> Result<Self> {
        let all = (libc::ETH_P_ALL as u16).to_be();
        netns
            .within(|| {
                // SAFETY: plain system calls; the descriptor is owned from here on.
                let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(all)) };
                if fd < 0 {
                    bail!("opening a packet socket: {}", io::Error::last_os_error());
                }
                let socket = unsafe { OwnedFd::from_raw_fd(fd) };
                let name = std::ffi::CString::new(device)?;
                // SAFETY: a NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                if ifindex == 0 {
                    bail!("no interface {device}");
                }
                // SAFETY: a zeroed sockaddr_ll is valid; the fields set make it a binding.
                let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                address.sll_family = libc::AF_PACKET as u16;
                address.sll_protocol = all;
                address.sll_ifindex = ifindex as i32;
                let len = size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: `address` is a sockaddr_ll of `len` bytes.
                if unsafe { libc::bind(fd, (&raw const address).cast(), len) } != 0 {
                    bail!("binding the packet socket to {device}: {}", io::Error::last_os_error());
                }
                Ok(Self { socket })
            })
            .with_context(|| format!("capturing on {device} of {}", netns.name()))
    }

    /// The frames received since it opened (or since the last call), in order.
    pub fn received(&self) -> Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        loop {
            let mut frame = vec![0u8; 65536];
            // SAFETY: as in `open`; `from` is written by the kernel, up to `len`.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            let got = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    frame.as_mut_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if got < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    return Ok(frames);
                }
                return Err(err).context("reading the packet socket");
            }
            if from.sll_pkttype != PACKET_OUTGOING {
                frame.truncate(got as usize);
                frames.push(frame);
            }
        }
    }
}
