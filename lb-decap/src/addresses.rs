//! This host's addresses and interfaces, from rtnetlink, and the events that change
//! the addresses.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle,
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR},
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage},
    },
    sys::{AsyncSocket, SocketAddr},
};
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A netlink connection, driven by a task of its own.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every address of every interface of this network namespace.
    pub async fn addresses(&self) -> Result<BTreeSet<IpAddr>> {
        let mut addresses = BTreeSet::new();
        let mut messages = self.handle.address().get().execute();
        while let Some(message) = messages.try_next().await.context("reading the host's addresses")? {
            addresses.extend(local_address(&message));
        }
        Ok(addresses)
    }

    /// The interfaces `lb-decap` attaches to when none is named: up, not the loopback,
    /// with an Ethernet address.
    pub async fn default_interfaces(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("reading the interfaces")? {
            names.extend(ethernet_and_up(&link));
        }
        Ok(names)
    }
}

/// The address an interface answers to: for IPv4 `IFA_LOCAL` (on a point-to-point link
/// `IFA_ADDRESS` is the peer's), for IPv6 `IFA_ADDRESS`.
fn local_address(message: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(local) => return Some(*local),
            AddressAttribute::Address(other) => address = Some(*other),
            _ => {}
        }
    }
    address
}

fn ethernet_and_up(link: &LinkMessage) -> Option<String> {
    let flags = link.header.flags;
    if !flags.contains(LinkFlags::Up) || flags.contains(LinkFlags::Loopback) {
        return None;
    }
    if link.header.link_layer_type != LinkLayerType::Ether {
        return None;
    }
    let mut name = None;
    let mut ethernet = false;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(ifname) => name = Some(ifname.clone()),
            LinkAttribute::Address(bytes) => ethernet = bytes.len() == 6,
            _ => {}
        }
    }
    name.filter(|_| ethernet)
}

/// A message each time the host's addresses change (added or removed, either family).
/// Events that do not fit the channel are dropped: one pending is enough, the receiver
/// reads the whole table again.
pub fn watch() -> Result<mpsc::Receiver<()>> {
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().context("opening a netlink socket for address events")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        .context("subscribing to address events")?;
    tokio::spawn(connection);
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let changed = matches!(
                message.payload,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_))
            );
            if changed && let Err(mpsc::error::TrySendError::Closed(())) = sender.try_send(()) {
                return;
            }
        }
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.attributes = attributes;
        message
    }

    #[test]
    fn the_local_address_is_ifa_local_when_there_is_one() {
        let ours: IpAddr = "198.18.1.11".parse().unwrap();
        let peer: IpAddr = "198.18.1.99".parse().unwrap();
        assert_eq!(
            local_address(&address(vec![AddressAttribute::Address(peer), AddressAttribute::Local(ours)])),
            Some(ours)
        );
        let v6: IpAddr = "2001:db8:1::11".parse().unwrap();
        assert_eq!(local_address(&address(vec![AddressAttribute::Address(v6)])), Some(v6));
        assert_eq!(local_address(&address(vec![])), None);
    }

    #[test]
    fn default_interfaces_are_up_ethernet_and_not_the_loopback() {
        let link = |flags: LinkFlags, kind: LinkLayerType, mac_len: usize| {
            let mut message = LinkMessage::default();
            message.header.flags = flags;
            message.header.link_layer_type = kind;
            message.attributes = vec![LinkAttribute::IfName("eth0".into()), LinkAttribute::Address(vec![2; mac_len])];
            ethernet_and_up(&message)
        };
        assert_eq!(link(LinkFlags::Up, LinkLayerType::Ether, 6), Some("eth0".into()));
        assert_eq!(link(LinkFlags::empty(), LinkLayerType::Ether, 6), None, "down");
        assert_eq!(link(LinkFlags::Up | LinkFlags::Loopback, LinkLayerType::Ether, 6), None, "loopback");
        assert_eq!(link(LinkFlags::Up, LinkLayerType::None, 0), None, "a tun device, no link layer");
        assert_eq!(link(LinkFlags::Up, LinkLayerType::Ether, 0), None, "no address");
    }
}
