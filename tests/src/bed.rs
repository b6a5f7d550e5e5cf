//! The test bed for `BPF_PROG_TEST_RUN`: a data path whose maps the agent's own
//! director filled from YAML, with the real servers' links given rather than resolved,
//! and single runs of a frame through a program.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    ops::{Deref, DerefMut},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::sleep,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_agent::{
    config::Config,
    dataplane::{Clock, Dataplane, EbpfLogLevel},
    director::{Director, address_bytes},
    expiry::{Expiry, Sweep},
    neighbour::{Link, Links},
};
use lb_common::{conn::FlowKey, stats::Reason};

use crate::packet::DIRECTOR_MAC;

/// XDP verdicts, as `BPF_PROG_TEST_RUN` reports them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The loopback's ifindex: the interface frames arrive on in these runs (it exists in
/// every namespace, and `XDP_TX` needs the real server behind the same interface).
pub const INGRESS: u32 = 1;

/// One run of one frame.
pub struct Run {
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The kernel's measure of the program's run.
    pub duration: Duration,
}

/// Runs `frame` through `program` once, arriving on [`INGRESS`].
pub fn run(program: &Xdp, frame: &[u8]) -> Result<Run> {
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = xdp_md(frame.len());
    let mut ctx_out = ctx.clone();
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(result.data_size_out as usize);
    Ok(Run { verdict: result.return_value, frame: out, duration: result.duration })
}

/// `struct xdp_md` with the ingress interface set: data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex.
fn xdp_md(len: usize) -> Vec<u8> {
    [0, len as u32, 0, INGRESS, 0, 0].iter().flat_map(|word| word.to_ne_bytes()).collect()
}

/// Where a real server is, for the test bed: on which interface (ifindex) and VLAN.
pub type Reach = fn(&str) -> Option<(u32, u16)>;

/// Every real server on the ingress interface, untagged.
pub fn on_ingress(_: &str) -> Option<(u32, u16)> {
    Some((INGRESS, 0))
}

/// A loaded data path holding `services` (the YAML list under `services:`), each real
/// server where `reach` says (`None`: unresolved), at the MAC [`real_mac`] gives. The
/// director's devices are [`INGRESS`] and the VLANs over it that real servers are on,
/// all with [`DIRECTOR_MAC`].
pub fn director(services: &str, conn_table_size: u32, reach: Reach) -> Result<Director> {
    let dataplane = Dataplane::load(conn_table_size, EbpfLogLevel::Off).context("loading lb_ingress (as root?)")?;
    director_on(dataplane, services, reach)
}

/// Like [`director`], on a data path the caller loaded.
pub fn director_on(dataplane: Dataplane, services: &str, reach: Reach) -> Result<Director> {
    let mut director = Director::new(dataplane);
    reconfigure(&mut director, services, reach)?;
    Ok(director)
}

/// Applies new `services` to a test bed's director (the maps only: the program stays
/// unattached).
pub fn reconfigure(director: &mut Director, services: &str, reach: Reach) -> Result<()> {
    reconfigure_with(director, "", services, reach)
}

/// Like [`reconfigure`], with top-level `settings` too (whole YAML lines, such as
/// `timeouts: { udp: 1 }\n`).
pub fn reconfigure_with(director: &mut Director, settings: &str, services: &str, reach: Reach) -> Result<()> {
    let yaml = format!("interfaces: [{{ name: lo }}]\n{settings}services:\n{services}");
    let config = Config::parse(&yaml, Path::new("test-bed.yaml"))?;
    let reals: HashMap<IpAddr, Link> = config
        .services
        .iter()
        .flat_map(|service| &service.reals)
        .filter_map(|real| {
            let address = real.address.to_string();
            let (ifindex, vlan) = reach(&address)?;
            let link = Link {
                ifindex,
                vlan,
                mac: real_mac(&address),
                director_mac: DIRECTOR_MAC,
                gateway: None,
                mtu: LINK_MTU,
                source: Some(tunnel_source(real.address)),
            };
            Some((real.address, link))
        })
        .collect();
    // The director's devices: the ingress interface, and the VLANs real servers are on.
    let mut interfaces = BTreeMap::from([((INGRESS, 0), DIRECTOR_MAC)]);
    interfaces.extend(reals.values().map(|link| ((link.ifindex, link.vlan), DIRECTOR_MAC)));
    let links = Links { reals, interfaces, unresolved: Default::default() };
    director.apply_maps(config, links)
}

/// The MTU of every link towards real servers in the test bed.
pub const LINK_MTU: u16 = 1500;
/// The director's address towards real servers in the test bed, by IP version: what a
/// route's preferred source would be, the outer source of tunnelled packets.
pub const TUNNEL_SOURCE4: &str = "198.18.21.1";
pub const TUNNEL_SOURCE6: &str = "2001:db8:21::1";

pub fn tunnel_source(real: IpAddr) -> IpAddr {
    let source = if real.is_ipv4() { TUNNEL_SOURCE4 } else { TUNNEL_SOURCE6 };
    source.parse().expect("an address")
}

/// Each real server's MAC in the test bed, by address: one per address, so a forwarded
/// frame names the address it was meant for.
pub fn real_mac(address: &str) -> [u8; 6] {
    let last = address.rsplit(['.', ':']).next().and_then(|last| last.parse::<u8>().ok()).unwrap_or(0);
    let family = if address.contains(':') { 6 } else { 4 };
    [0x02, 0xaa, 0, 0, family, last]
}

/// Which of `reals` a forwarded frame was sent to, by its destination MAC.
pub fn real_at<'a>(frame: &[u8], reals: impl IntoIterator<Item = &'a &'a str>) -> &'a str {
    reals
        .into_iter()
        .find(|real| real_mac(real) == frame[..6])
        .unwrap_or_else(|| panic!("forwarded to an unknown MAC {:02x?}", &frame[..6]))
}

/// The connection table's key of the TCP flow from `client` to `vip`, as the client
/// sends it.
pub fn tcp_flow_key(client: SocketAddr, vip: SocketAddr) -> FlowKey {
    let (src, family) = address_bytes(client.ip());
    FlowKey {
        src,
        dst: address_bytes(vip.ip()).0,
        src_port: client.port().to_be_bytes(),
        dst_port: vip.port().to_be_bytes(),
        protocol: lb_common::IPPROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

/// One service in the YAML form [`director`] takes.
pub fn service(name: &str, vip: &str, port: u16, protocol: &str, scheduler: &str, reals: &[(&str, u32)]) -> String {
    let mut yaml = format!(
        "  - {{ name: {name}, vip: \"{vip}\", port: {port}, protocol: {protocol}, scheduler: {scheduler}, reals: [\n"
    );
    for (address, weight) in reals {
        yaml += &format!("      {{ address: \"{address}\", weight: {weight} }},\n");
    }
    yaml + "    ] }\n"
}

/// The MAC of the director's interface towards clients in a [`Routes`] namespace.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// A network namespace in which NAT and Full-NAT replies find their way back: the
/// director's `bpf_fib_lookup` answers from the routing and neighbour tables of the
/// namespace the test run is issued in. It has an interface `clients` (MAC
/// [`ROUTER_MAC`]) on 198.18.1.0/24 and 2001:db8:1::/64, forwarding on, and permanent
/// neighbour entries for the clients 198.18.1.1 and 2001:db8:1::1 (MAC
/// [`crate::packet::CLIENT_MAC`]), so a reply to them leaves through `clients`; other
/// addresses there have no neighbour entry, and 198.19.0.0/16 no route.
pub struct Routes {
    netns: crate::netns::Netns,
    /// The ifindex of `clients`.
    pub clients: u32,
}

impl Routes {
    pub fn new() -> Result<Self> {
        let netns = crate::netns::Netns::create(format!("{}-routes", crate::netns::unique_prefix()))?;
        let mac = ROUTER_MAC.map(|byte| format!("{byte:02x}")).join(":");
        let client_mac = crate::packet::CLIENT_MAC.map(|byte| format!("{byte:02x}")).join(":");
        for argv in [
            // No dummy devices on these kernels: a veth pair with both ends up.
            vec!["ip", "link", "add", "clients", "address", &mac, "type", "veth", "peer", "name", "far-end"],
            vec!["ip", "link", "set", "far-end", "up"],
            vec!["ip", "link", "set", "clients", "up"],
            vec!["ip", "addr", "add", "198.18.1.2/24", "dev", "clients"],
            vec!["ip", "addr", "add", "2001:db8:1::2/64", "dev", "clients", "nodad"],
            vec!["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            vec!["ip", "neigh", "add", "198.18.1.1", "lladdr", &client_mac, "dev", "clients", "nud", "permanent"],
            vec!["ip", "neigh", "add", "2001:db8:1::1", "lladdr", &client_mac, "dev", "clients", "nud", "permanent"],
        ] {
            netns.run(&argv)?;
        }
        let index = netns.run(&["cat", "/sys/class/net/clients/ifindex"])?;
        let clients = String::from_utf8_lossy(&index.stdout).trim().parse()?;
        Ok(Self { netns, clients })
    }

    /// Runs `frame` once through `program`, from inside the namespace.
    pub fn run(&self, program: &Xdp, frame: &[u8]) -> Result<Run> {
        self.within(|| run(program, frame))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        self.netns.within(f)
    }
}

/// A test bed whose runs are issued inside a [`Routes`] namespace, so NAT and Full-NAT
/// replies find their way back to the client.
pub struct RoutedBed {
    pub director: Director,
    pub routes: Routes,
}

impl RoutedBed {
    /// A data path holding `services` (as [`director`] takes them), every real server
    /// on the ingress interface.
    pub fn new(services: &str) -> Self {
        Self::with_reach(services, on_ingress)
    }

    /// Like [`RoutedBed::new`], each real server where `reach` says.
    pub fn with_reach(services: &str, reach: Reach) -> Self {
        Self { director: director(services, 4096, reach).unwrap(), routes: Routes::new().unwrap() }
    }

    /// Applies the top-level `settings` and `services` instead.
    pub fn reconfigure(&mut self, settings: &str, services: &str) {
        reconfigure_with(&mut self.director, settings, services, on_ingress).unwrap();
    }

    /// The verdict and the frame out of one run of `frame`.
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let run = self.routes.run(self.director.dataplane().program(), frame).unwrap();
        (run.verdict, run.frame)
    }

    /// How many packets `reason` counted so far.
    pub fn reason(&self, reason: Reason) -> u64 {
        reason_count(&self.director, reason)
    }
}

/// A [`RoutedBed`] whose data path's clock ticks as the agent's `keep_time` makes it,
/// and whose tables the agent's own ager walks when the test says.
pub struct AgedBed {
    bed: RoutedBed,
    expiry: Expiry,
    _clock: Ticking,
}

impl AgedBed {
    /// A data path holding `services`, with the top-level `settings` (timeouts).
    pub fn new(settings: &str, services: &str) -> Self {
        let dataplane = Dataplane::load(4096, EbpfLogLevel::Off).expect("loading lb_ingress (as root?)");
        let expiry = Expiry::new(&dataplane).unwrap();
        let clock = Ticking::start(dataplane.clock().unwrap());
        let mut director = Director::new(dataplane);
        reconfigure_with(&mut director, settings, services, on_ingress).unwrap();
        Self { bed: RoutedBed { director, routes: Routes::new().unwrap() }, expiry, _clock: clock }
    }

    /// One walk of the ager, with the running configuration's timeouts and
    /// persistence (as the agent does every few seconds).
    pub fn expire(&mut self) -> Sweep {
        self.expiry.expire(&self.bed.director.ageing()).unwrap()
    }

    /// What the ager counted, as the metrics read it.
    pub fn expiry_counts(&self) -> Arc<lb_agent::expiry::Counts> {
        self.expiry.counts()
    }
}

impl Deref for AgedBed {
    type Target = RoutedBed;

    fn deref(&self) -> &RoutedBed {
        &self.bed
    }
}

impl DerefMut for AgedBed {
    fn deref_mut(&mut self) -> &mut RoutedBed {
        &mut self.bed
    }
}

/// Ticks a data path's clock every 100 ms, until dropped.
struct Ticking(Arc<AtomicBool>);

impl Ticking {
    fn start(mut clock: Clock) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                clock.tick().unwrap();
                sleep(Duration::from_millis(100));
            }
        });
        Self(stop)
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How many packets `reason` counted so far on `director`'s data path.
pub fn reason_count(director: &Director, reason: Reason) -> u64 {
    director.reason_counts().unwrap().iter().find(|(r, _)| *r == reason).unwrap().1
}
