//! The sync daemon's sockets: datagrams go out of `interface` to the multicast group
//! (one hop, not looped back to this host), or to each of `peers`; a backup listens on
//! the group joined on `interface`, or (with `peers`) on its own addresses there.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::{config::sync::Sync, dataplane};

/// The queue asked for a backup's socket, in bytes; the kernel doubles it for its
/// accounting, and holds some 3,600 full datagrams (54,000 connections) in it.
const RECEIVE_QUEUE: usize = 4 << 20;

pub struct Sender {
    socket: UdpSocket,
    destinations: Vec<SocketAddr>,
}

impl Sender {
    pub fn open(sync: &Sync) -> Result<Self> {
        let destinations: Vec<SocketAddr> = if sync.peers.is_empty() {
            vec![SocketAddr::new(sync.group, sync.port)]
        } else {
            sync.peers.iter().map(|peer| SocketAddr::new(*peer, sync.port)).collect()
        };
        let family = destinations[0].ip();
        let socket = udp(family, &sync.interface)?;
        if sync.peers.is_empty() {
            match family {
                IpAddr::V4(_) => {
                    socket.set_multicast_ttl_v4(1)?;
                    socket.set_multicast_loop_v4(false)?;
                }
                IpAddr::V6(_) => {
                    socket.set_multicast_hops_v6(1)?;
                    socket.set_multicast_loop_v6(false)?;
                    socket.set_multicast_if_v6(dataplane::ifindex(&sync.interface)?)?;
                }
            }
        }
        socket.bind(&SocketAddr::new(unspecified(family), 0).into())?;
        Ok(Self { socket: tokio_socket(socket)?, destinations })
    }

    /// Sends `datagram` to every destination; answers how many took it.
    pub async fn send(&self, datagram: &[u8]) -> usize {
        let mut sent = 0;
        for destination in &self.destinations {
            match self.socket.send_to(datagram, destination).await {
                Ok(_) => sent += 1,
                Err(err) => log::warn!("sync: sending to {destination}: {err}"),
            }
        }
        sent
    }
}

/// A backup's socket: the group joined on `interface`, or with `peers`, the port on
/// `interface`'s own addresses.
pub fn listen(sync: &Sync) -> Result<UdpSocket> {
    let family = sync.peers.first().copied().unwrap_or(sync.group);
    let socket = udp(family, &sync.interface)?;
    socket.set_reuse_address(true)?;
    deepen_receive_queue(&socket);
    if sync.peers.is_empty() {
        let ifindex = dataplane::ifindex(&sync.interface)?;
        match sync.group {
            IpAddr::V4(group) => socket.join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(ifindex))?,
            IpAddr::V6(group) => socket.join_multicast_v6(&group, ifindex)?,
        }
        // Bound to the group, the socket takes only the group's datagrams.
        socket.bind(&SocketAddr::new(sync.group, sync.port).into())?;
    } else {
        socket.bind(&SocketAddr::new(unspecified(family), sync.port).into())?;
    }
    tokio_socket(socket)
}

/// Room for bursts of datagrams (a master's after a pause, thousands at once), where the
/// kernel's default holds about a hundred: past `net.core.rmem_max` as the agent may
/// (CAP_NET_ADMIN), else as far as that allows.
fn deepen_receive_queue(socket: &Socket) {
    let size = RECEIVE_QUEUE as libc::c_int;
    // SAFETY: the option's value is a c_int that outlives the call, its size given.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        // Without the capability the kernel caps the size at `rmem_max`, silently.
        let got = socket.set_recv_buffer_size(RECEIVE_QUEUE).and_then(|()| socket.recv_buffer_size());
        match got {
            Ok(size) if size >= RECEIVE_QUEUE => {}
            Ok(size) => log::warn!(
                "sync: the receive queue holds {size} bytes, not {RECEIVE_QUEUE} (net.core.rmem_max, or run with \
                 CAP_NET_ADMIN): a burst of datagrams may be lost"
            ),
            Err(err) => log::warn!("sync: the receive queue stays the kernel's default: {err}"),
        }
    }
}

fn udp(family: IpAddr, interface: &str) -> Result<Socket> {
    let socket = Socket::new(Domain::for_address(SocketAddr::new(family, 0)), Type::DGRAM, Some(Protocol::UDP))
        .context("opening a UDP socket")?;
    socket.bind_device(Some(interface.as_bytes())).with_context(|| format!("binding to {interface}"))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn unspecified(family: IpAddr) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn tokio_socket(socket: Socket) -> Result<UdpSocket> {
    UdpSocket::from_std(socket.into()).context("registering the sync socket")
}
