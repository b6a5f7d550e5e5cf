//! Where each real server is on the link, from the kernel's neighbour table: the
//! director never asks the operator for a MAC address.
//!
//! A real server's address is looked up on the attached interfaces; a missing or failed
//! entry is solicited (netlink `NTF_USE`, the kernel then sends ARP or neighbour
//! solicitation itself), and a stale one is re-probed, so a real server whose MAC
//! changes is followed. Changes in the table wake the agent through [`watch`].

use std::{collections::HashMap, net::IpAddr};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, IpVersion,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    },
    sys::{AsyncSocket, SocketAddr},
};
use tokio::sync::mpsc;

/// How the data path reaches a real server: out of which interface, to which MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub director_mac: [u8; 6],
}

/// A neighbour table entry, as far as we care.
struct Entry {
    state: NeighbourState,
    mac: Option<[u8; 6]>,
}

/// RTNLGRP_NEIGH as a multicast group bit (RTMGRP_NEIGH).
const RTMGRP_NEIGH: u32 = 1 << 2;

#[derive(Clone)]
pub struct Neighbours {
    handle: Handle,
}

impl Neighbours {
    /// A netlink connection, driven by a task of its own.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The link of each address that the table resolves on one of `interfaces`
    /// (ifindexes). Addresses that have no usable entry there are solicited and left
    /// out; they are expected on a later call.
    pub async fn resolve(&self, addresses: &[IpAddr], interfaces: &[u32]) -> Result<HashMap<IpAddr, Link>> {
        let macs = self.interface_macs(interfaces).await?;
        let table = self.table().await?;
        let mut links = HashMap::new();
        for &address in addresses {
            let mut seen = false;
            for (&ifindex, &director_mac) in &macs {
                let Some(entry) = table.get(&(ifindex, address)) else { continue };
                seen = true;
                if let (Some(mac), true) = (entry.mac, usable(entry.state)) {
                    links.insert(address, Link { ifindex, mac, director_mac });
                }
                if needs_probe(entry.state) {
                    self.solicit(ifindex, address).await;
                }
            }
            if !seen {
                for &ifindex in macs.keys() {
                    self.solicit(ifindex, address).await;
                }
            }
        }
        Ok(links)
    }

    /// Asks the kernel to resolve (or re-verify) `address` on `ifindex`. A real server
    /// that is not on that link simply never answers; resolution is retried later.
    async fn solicit(&self, ifindex: u32, address: IpAddr) {
        let request = self
            .handle
            .neighbours()
            .add(ifindex, address)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace();
        if let Err(err) = request.execute().await {
            log::debug!("soliciting {address} on ifindex {ifindex}: {err}");
        }
    }

    async fn interface_macs(&self, interfaces: &[u32]) -> Result<HashMap<u32, [u8; 6]>> {
        let mut macs = HashMap::new();
        for &ifindex in interfaces {
            let mut links = self.handle.link().get().match_index(ifindex).execute();
            let link = links
                .try_next()
                .await
                .with_context(|| format!("reading interface {ifindex}"))?
                .with_context(|| format!("interface {ifindex} is gone"))?;
            let mac = link.attributes.iter().find_map(|attribute| match attribute {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            });
            match mac {
                Some(mac) => macs.insert(ifindex, mac),
                None => anyhow::bail!("interface {ifindex} has no Ethernet address"),
            };
        }
        Ok(macs)
    }

    /// The neighbour table of both families, by (ifindex, address).
    async fn table(&self) -> Result<HashMap<(u32, IpAddr), Entry>> {
        let mut table = HashMap::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut entries = self.handle.neighbours().get().set_family(version).execute();
            while let Some(message) = entries.try_next().await.context("reading the neighbour table")? {
                if let Some((key, entry)) = entry(&message) {
                    table.insert(key, entry);
                }
            }
        }
        Ok(table)
    }
}

fn entry(message: &NeighbourMessage) -> Option<((u32, IpAddr), Entry)> {
    let mut address = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => address = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => address = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLocalAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    let key = (message.header.ifindex, address?);
    Some((key, Entry { state: message.header.state, mac }))
}

/// An entry whose MAC the data path may use: confirmed, or not yet disproved.
fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// An entry the kernel should verify again: unconfirmed for a while, or failed.
fn needs_probe(state: NeighbourState) -> bool {
    matches!(state, NeighbourState::Stale | NeighbourState::Failed | NeighbourState::None)
}

/// A channel that receives a unit each time the kernel's neighbour table changes.
pub fn watch() -> Result<mpsc::Receiver<()>> {
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().context("opening a netlink socket for neighbour events")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_NEIGH))
        .context("subscribing to neighbour events")?;
    tokio::spawn(connection);
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if is_neighbour_change(&message) && sender.try_send(()).is_err() && sender.is_closed() {
                return;
            }
        }
    });
    Ok(receiver)
}

fn is_neighbour_change(message: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    matches!(
        message.payload,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(_) | RouteNetlinkMessage::DelNeighbour(_))
    )
}
