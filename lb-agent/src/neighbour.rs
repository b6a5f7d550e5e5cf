//! How each real server is reached, from the kernel's routing and neighbour tables: the
//! director never asks the operator for a MAC address.
//!
//! The routing table names the interface and the next hop (the real server itself when
//! it is on-link, else a gateway); that interface must be an attached one or a VLAN
//! over one, and only the next hop's neighbour entry there counts, so an entry on
//! another link (a real server answering ARP on every link it has) never wins. A
//! missing or failed entry is solicited (netlink `NTF_USE`: the kernel then sends ARP
//! or neighbour solicitation itself), and a stale one is re-probed, so a next hop whose
//! MAC changes is followed. Changes in the table wake the agent through [`watch`].

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, IpVersion,
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{InfoData, InfoVlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
    },
    sys::{AsyncSocket, SocketAddr},
};
use tokio::sync::mpsc;

/// How the data path reaches a real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The attached interface it is reached through.
    pub ifindex: u32,
    /// The 802.1Q VLAN the next hop is on there, 0 for none.
    pub vlan: u16,
    /// The next hop's MAC: the real server's own when it is on-link.
    pub mac: [u8; 6],
    /// The MAC of the director's device on that link (the interface, or its VLAN).
    pub director_mac: [u8; 6],
    /// The gateway the route names, when the real server is not on-link.
    pub gateway: Option<IpAddr>,
    /// The largest packet the route carries: its own MTU, else the device's.
    pub mtu: u16,
    /// The director's address the route prefers as a source (`ip route get`'s `src`):
    /// the default outer source of tunnelled packets.
    pub source: Option<IpAddr>,
}

/// What the data path needs to know of the links: each resolved real server, the MAC of
/// each of the director's devices, by (attached ifindex, VLAN), and why each real server
/// that did not resolve did not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    pub reals: HashMap<IpAddr, Link>,
    pub interfaces: BTreeMap<(u32, u16), [u8; 6]>,
    pub unresolved: BTreeMap<IpAddr, String>,
}

/// What the routing table says of a destination.
struct Route {
    device: u32,
    gateway: Option<IpAddr>,
    mtu: Option<u32>,
    source: Option<IpAddr>,
}

/// Whether a look at the table may also ask the kernel to resolve what is missing or
/// stale. A look that follows a neighbour event does not, or every solicitation's own
/// events would start the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solicit {
    Yes,
    No,
}

/// A device real servers can be on: an attached interface, or a VLAN on one.
#[derive(Debug)]
struct Port {
    device: u32,
    attached: u32,
    vlan: u16,
    mac: [u8; 6],
    mtu: u32,
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

    /// The links of `addresses` through the `attached` interfaces, by the routing
    /// table. An address without a usable route and neighbour entry is left out (with
    /// the reason in `unresolved`, and its next hop solicited if `solicit` says so); a
    /// later call finds it.
    pub async fn resolve(&self, addresses: &[IpAddr], attached: &[u32], solicit: Solicit) -> Result<Links> {
        let ports = self.ports(attached).await?;
        let table = self.table().await?;
        let mut links = Links::default();
        for port in &ports {
            links.interfaces.insert((port.attached, port.vlan), port.mac);
        }
        for &address in addresses {
            let route = match self.route(address).await {
                Ok(route) => route,
                Err(why) => {
                    links.unresolved.insert(address, why);
                    continue;
                }
            };
            let Some(port) = ports.iter().find(|port| port.device == route.device) else {
                let why = format!(
                    "its route leaves through interface {} (ifindex {}), which the director is not attached to",
                    interface_name(route.device),
                    route.device
                );
                links.unresolved.insert(address, why);
                continue;
            };
            let next_hop = route.gateway.unwrap_or(address);
            let entry = table.get(&(port.device, next_hop));
            match entry {
                Some(Entry { state, mac: Some(mac) }) if usable(*state) => {
                    let link = Link {
                        ifindex: port.attached,
                        vlan: port.vlan,
                        mac: *mac,
                        director_mac: port.mac,
                        gateway: route.gateway,
                        mtu: route.mtu.unwrap_or(port.mtu).min(u32::from(u16::MAX)) as u16,
                        source: route.source,
                    };
                    links.reals.insert(address, link);
                }
                _ => {
                    let why = format!("its next hop {next_hop} has no link-layer address yet");
                    links.unresolved.insert(address, why);
                }
            }
            if solicit == Solicit::Yes && entry.is_none_or(|entry| needs_probe(entry.state)) {
                self.solicit(port.device, next_hop).await;
            }
        }
        Ok(links)
    }

    /// The route the kernel would take to `address` (RTM_GETROUTE for one destination,
    /// as `ip route get` asks), or why there is none to use.
    async fn route(&self, address: IpAddr) -> Result<Route, String> {
        let mut message = RouteMessage::default();
        message.header.address_family = match address {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.destination_prefix_length = if address.is_ipv4() { 32 } else { 128 };
        message.attributes.push(RouteAttribute::Destination(address.into()));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(message));
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut replies = handle.request(request).map_err(|err| format!("asking for its route: {err}"))?;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => return route_of(&route),
                NetlinkPayload::Error(err) => return Err(format!("no route to it ({err})")),
                _ => {}
            }
        }
        Err("no route to it".to_owned())
    }

    /// Asks the kernel to resolve (or re-verify) `address` on `device`. A real server
    /// that is not on that link simply never answers there.
    async fn solicit(&self, device: u32, address: IpAddr) {
        let request = self
            .handle
            .neighbours()
            .add(device, address)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace();
        if let Err(err) = request.execute().await {
            log::debug!("soliciting {address} on ifindex {device}: {err}");
        }
    }

    /// The attached interfaces and the VLANs on them, in ifindex order.
    async fn ports(&self, attached: &[u32]) -> Result<Vec<Port>> {
        let mut ports = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("reading the interfaces")? {
            if let Some(port) = port(&link, attached) {
                ports.push(port);
            }
        }
        for &ifindex in attached {
            if !ports.iter().any(|port| port.device == ifindex) {
                bail!("interface {ifindex} is gone, or has no Ethernet address");
            }
        }
        ports.sort_by_key(|port| port.device);
        Ok(ports)
    }

    /// The neighbour table of both families, by (device, address).
    async fn table(&self) -> Result<HashMap<(u32, IpAddr), Entry>> {
        let mut table = HashMap::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut entries = self.handle.neighbours().get().set_family(version).execute();
            while let Some(message) = entries.try_next().await.context("reading the neighbour table")? {
                if let (Some(address), mac) = destination_and_mac(&message) {
                    table.insert((message.header.ifindex, address), Entry { state: message.header.state, mac });
                }
            }
        }
        Ok(table)
    }
}

fn route_of(route: &RouteMessage) -> Result<Route, String> {
    if route.header.kind == RouteType::Local {
        return Err("it is one of the director's own addresses".to_owned());
    }
    let mut device = None;
    let mut gateway = None;
    let mut mtu = None;
    let mut source = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => device = Some(*index),
            RouteAttribute::Gateway(address) => gateway = ip_of(address),
            RouteAttribute::PrefSource(address) => source = ip_of(address),
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|metric| match metric {
                    RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let device = device.ok_or("its route names no interface")?;
    Ok(Route { device, gateway, mtu, source })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The name of interface `index`, for messages.
fn interface_name(index: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if found.is_null() {
        return format!("#{index}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned()
}

/// `link` as a port: an attached interface, or a VLAN whose parent is attached.
fn port(link: &LinkMessage, attached: &[u32]) -> Option<Port> {
    let device = link.header.index;
    let mut mac = None;
    let mut parent = None;
    let mut vlan = None;
    let mut mtu = 0;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Mtu(value) => mtu = *value,
            LinkAttribute::Link(index) => parent = Some(*index),
            LinkAttribute::LinkInfo(infos) => vlan = vlan_id(infos),
            _ => {}
        }
    }
    let mac = mac?;
    if attached.contains(&device) {
        return Some(Port { device, attached: device, vlan: 0, mac, mtu });
    }
    match (parent, vlan) {
        (Some(parent), Some(vlan)) if attached.contains(&parent) => {
            Some(Port { device, attached: parent, vlan, mac, mtu })
        }
        _ => None,
    }
}

fn vlan_id(infos: &[LinkInfo]) -> Option<u16> {
    infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vlan(vlan)) => vlan.iter().find_map(|attribute| match attribute {
            InfoVlan::Id(id) => Some(*id),
            _ => None,
        }),
        _ => None,
    })
}

fn destination_and_mac(message: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
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
    (address, mac)
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

/// The addresses whose neighbour entries change, as the kernel reports them. Events
/// that do not fit the channel are dropped: the agent's periodic check catches up.
pub fn watch() -> Result<mpsc::Receiver<IpAddr>> {
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().context("opening a netlink socket for neighbour events")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_NEIGH))
        .context("subscribing to neighbour events")?;
    tokio::spawn(connection);
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if let Some(address) = changed_address(&message)
                && let Err(mpsc::error::TrySendError::Closed(_)) = sender.try_send(address)
            {
                return;
            }
        }
    });
    Ok(receiver)
}

fn changed_address(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<IpAddr> {
    match &message.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewNeighbour(neighbour) | RouteNetlinkMessage::DelNeighbour(neighbour),
        ) => destination_and_mac(neighbour).0,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::InfoKind;

    use super::*;

    fn link(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes = attributes;
        message
    }

    fn vlan(index: u32, parent: u32, id: u16) -> LinkMessage {
        link(
            index,
            vec![
                LinkAttribute::Address(vec![2, 0, 0, 0, 0, index as u8]),
                LinkAttribute::Link(parent),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vlan),
                    LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
                ]),
            ],
        )
    }

    #[test]
    fn attached_interfaces_and_their_vlans_are_ports() {
        let eth0 = link(2, vec![LinkAttribute::Address(vec![2, 0, 0, 0, 0, 2])]);
        let port0 = port(&eth0, &[2]).unwrap();
        assert_eq!((port0.device, port0.attached, port0.vlan, port0.mac), (2, 2, 0, [2, 0, 0, 0, 0, 2]));
        let port100 = port(&vlan(7, 2, 100), &[2]).unwrap();
        assert_eq!((port100.device, port100.attached, port100.vlan, port100.mac), (7, 2, 100, [2, 0, 0, 0, 0, 7]));
        assert!(port(&vlan(8, 3, 100), &[2]).is_none(), "a VLAN on an interface we are not attached to");
        assert!(port(&link(4, vec![]), &[4]).is_none(), "no Ethernet address");
        assert!(port(&eth0, &[5]).is_none(), "not attached");
    }

    #[test]
    fn the_mtu_towards_a_real_server_is_its_devices_or_its_routes() {
        let jumbo = link(2, vec![LinkAttribute::Address(vec![2, 0, 0, 0, 0, 2]), LinkAttribute::Mtu(9000)]);
        assert_eq!(port(&jumbo, &[2]).unwrap().mtu, 9000);
        assert_eq!(port(&vlan(7, 2, 100), &[2]).unwrap().mtu, 0, "none reported: unknown");

        let mut route = RouteMessage::default();
        route.attributes.push(RouteAttribute::Oif(2));
        assert_eq!(route_of(&route).unwrap().mtu, None);
        route.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Hoplimit(64), RouteMetric::Mtu(1400)]));
        assert_eq!(route_of(&route).unwrap().mtu, Some(1400));
    }
}
