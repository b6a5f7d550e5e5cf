//! The XDP data path as the agent sees it: loading, attaching, and typed access to every
//! map. The only module that talks to aya.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray, RingBuf},
    programs::{
        Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
    util::nr_cpus,
};
use aya_log::{EbpfLogger, Level};
use lb_common::{
    LAYOUT, TAIL_CALL_TOA,
    conn::{Conn, FlowKey, table::ConnTableInfo},
    interface::{Interface, InterfaceKey, InterfaceSlot},
    locality::{Locality, LocalityKey},
    names,
    persist::{Persist, PersistKey},
    real::{RealLoad, RealServer},
    service::{self, NO_REAL, SchedCursor, Service, ServiceKey, ServiceSlot},
    stats::{Counters, Reason},
    sync::SyncSettings,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{config::XdpMode, offload, sched::Slots};

mod conn_table;
mod mapped;
mod pins;
mod real_load;
pub use conn_table::ConnTable;
pub use pins::detach;
use pins::{Pins, Saved, SavedAttachment};
pub use real_load::{Limits, RealLoads};

/// The object `lb-ebpf` builds, embedded at compile time.
static LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
/// The test bed's programs (the benchmark's baseline, the lab's veth helper), built
/// beside it; a release agent leaves them out, as nothing in it refers to them.
pub static TESTBED_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-testbed"));
/// `lb_decap`, the real server's decapsulator (the `lb-decap` binary loads it), built
/// beside it so the eBPF crate is built once for every program.
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// How much the XDP program logs (aya-log), decided at load time. Anything but `off`
/// costs a branch per log site on the packet path, and log records when they fire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[repr(u8)]
pub enum EbpfLogLevel {
    #[default]
    Off = 0,
    Error = Level::Error as u8,
    Warn = Level::Warn as u8,
    Info = Level::Info as u8,
    Debug = Level::Debug as u8,
    Trace = Level::Trace as u8,
}

impl EbpfLogLevel {
    /// The same level for the agent's logger; `None` for off.
    pub fn filter(self) -> Option<log::LevelFilter> {
        match self {
            Self::Off => None,
            Self::Error => Some(log::LevelFilter::Error),
            Self::Warn => Some(log::LevelFilter::Warn),
            Self::Info => Some(log::LevelFilter::Info),
            Self::Debug => Some(log::LevelFilter::Debug),
            Self::Trace => Some(log::LevelFilter::Trace),
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    real_loads: Arc<RealLoads>,
    attached: StdHashMap<String, Attachment>,
    /// The connection table, mapped (its size is the one it was loaded with: a reload
    /// does not change it).
    conns: ConnTable,
    /// Where the maps and links are pinned (the agent's); none in test beds.
    pins: Option<Pins>,
    /// How far `CLOCK` runs behind the kernel's clock (see [`Clock`]).
    clock_behind: u32,
}

struct Maps {
    interfaces: HashMap<MapData, InterfaceKey, Interface>,
    interface_slots: Array<MapData, InterfaceSlot>,
    services: HashMap<MapData, ServiceKey, Service>,
    service_slots: Array<MapData, ServiceSlot>,
    reals: Array<MapData, RealServer>,
    sched_ring: Array<MapData, u32>,
    sched_cursor: Array<MapData, SchedCursor>,
    templates: HashMap<MapData, PersistKey, Persist>,
    localities: HashMap<MapData, LocalityKey, Locality>,
    local_addresses: Array<MapData, [u8; 16]>,
    service_stats: PerCpuArray<MapData, Counters>,
    real_stats: PerCpuArray<MapData, Counters>,
    verdict_stats: PerCpuArray<MapData, u64>,
}

struct Attachment {
    ifindex: u32,
    /// As configured (`auto` stays `auto`), to tell whether a reload changes it.
    mode: XdpMode,
    /// What the kernel took.
    attached: AttachedMode,
    link: Held,
    /// The receive VLAN offload was on, and the agent turned it off.
    restore_rx_vlan: bool,
}

/// Why a pinned link could not take this program.
enum ReplaceError {
    /// Its device is gone (`ENOLINK`): the link has ended.
    Defunct,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ReplaceError {
    fn from(err: anyhow::Error) -> Self {
        Self::Other(err)
    }
}

/// Who holds an attachment's link: the program (it ends with the process), or its pin
/// (it outlives the process, until unpinned).
enum Held {
    Program(XdpLinkId),
    Pin(PinnedLink),
}

/// What the connection table, the persistence templates and lblc's and lblcr's
/// entries refer to.
#[derive(Debug, Default)]
pub struct ConnReferences {
    pub reals: HashSet<u32>,
    pub services: HashSet<u32>,
}

impl Dataplane {
    /// Loads `lb_ingress` and its maps into the kernel, with room for `conn_table_size`
    /// connections and the program's own log at `log_level`; nothing is attached yet.
    pub fn load(conn_table_size: u32, log_level: EbpfLogLevel) -> Result<Self> {
        Self::load_with(None, LB_OBJECT, conn_table_size, log_level)
    }

    /// Like [`Dataplane::load`], from another build of the eBPF object, one with the
    /// same maps: what `cargo xtask bench` compares the built-in program with.
    pub fn load_object(object: &[u8], conn_table_size: u32, log_level: EbpfLogLevel) -> Result<Self> {
        Self::load_with(None, object, conn_table_size, log_level)
    }

    /// Like [`Dataplane::load`], with every map pinned under `pin_path` (see `pins`):
    /// the maps an earlier agent pinned there are adopted, and the program replaces
    /// its in the links it left, which are then this one's. Answers the director's
    /// part of the state that agent saved, when there are maps to adopt.
    pub fn load_pinned<D: DeserializeOwned>(
        pin_path: &Path,
        conn_table_size: u32,
        log_level: EbpfLogLevel,
    ) -> Result<(Self, Option<D>)> {
        let pins = Pins::open(pin_path)?;
        let saved = pins.load_state::<D>()?;
        let (maps, links) = (pins.pinned_maps(), pins.pinned_links()?);
        let saved = match (maps.is_empty(), saved) {
            (true, Some(_)) => {
                log::warn!("no maps are pinned at {}: ignoring the state saved for them", pins.dir().display());
                None
            }
            (false, None) if links.is_empty() => {
                log::warn!(
                    "{}: maps pinned by an agent that stopped before it attached anything; starting afresh",
                    pins.dir().display()
                );
                pins.remove_maps()?;
                None
            }
            (false, None) => bail!(
                "{} holds an attached program's maps but no saved state tells what their ids stand for (was \
                 /run/lb cleared?): take the director out of service with `lb-agent --detach` (its connections are \
                 dropped), then start again",
                pins.dir().display()
            ),
            (_, saved) => saved,
        };
        pins.check_layout(LB_OBJECT)?;
        let dir = pins.dir().to_owned();
        let mut dataplane = Self::load_with(Some(pins), LB_OBJECT, conn_table_size, log_level)?;
        let Some(saved) = saved else {
            log::info!("maps pinned at {} (layout {LAYOUT})", dir.display());
            return Ok((dataplane, None));
        };
        dataplane.adopt(saved.attachments)?;
        // An agent that stopped between writing a service and its slot left them apart.
        dataplane.settle_service_slots()?;
        log::info!("adopted the maps pinned at {}", dir.display());
        if dataplane.conns.capacity() != ConnTableInfo::sized(conn_table_size, 0).entries {
            log::warn!(
                "connection_table_size {conn_table_size}: the pinned table holds {} and is kept (a new size takes \
                 a director taken out of service: lb-agent --detach)",
                dataplane.conns.capacity()
            );
        }
        Ok((dataplane, Some(saved.director)))
    }

    fn load_with(pins: Option<Pins>, object: &[u8], conn_table_size: u32, log_level: EbpfLogLevel) -> Result<Self> {
        let level = log_level as u8;
        let mut loader = EbpfLoader::new();
        let geometry = ConnTableInfo::sized(conn_table_size, 0);
        loader
            .map_max_entries(names::CONNS, geometry.entries)
            .map_max_entries(names::CONN_INDEX, geometry.buckets)
            .override_global(aya_log::LEVEL, &level, true);
        if let Some(pins) = &pins {
            for name in names::PINNED {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader.load(object).context("loading the eBPF object")?;
        let program: &mut Xdp = ebpf
            .program_mut(names::INGRESS_PROGRAM)
            .ok_or_else(|| anyhow!("the object has no program {}", names::INGRESS_PROGRAM))?
            .try_into()?;
        program.load().context("loading lb_ingress (the verifier refused it?)")?;
        load_tail_calls(&mut ebpf)?;
        let maps = Maps {
            interfaces: typed(&mut ebpf, names::INTERFACES)?,
            interface_slots: typed(&mut ebpf, names::INTERFACE_SLOTS)?,
            service_slots: typed(&mut ebpf, names::SERVICE_SLOTS)?,
            services: typed(&mut ebpf, names::SERVICES)?,
            reals: typed(&mut ebpf, names::REALS)?,
            sched_ring: typed(&mut ebpf, names::SCHED_RING)?,
            sched_cursor: typed(&mut ebpf, names::SCHED_CURSOR)?,
            templates: typed(&mut ebpf, names::PERSIST)?,
            localities: typed(&mut ebpf, names::LOCALITY)?,
            local_addresses: typed(&mut ebpf, names::LOCAL_ADDRESSES)?,
            service_stats: typed(&mut ebpf, names::SERVICE_STATS)?,
            real_stats: typed(&mut ebpf, names::REAL_STATS)?,
            verdict_stats: typed(&mut ebpf, names::VERDICT_STATS)?,
        };
        let real_loads = Arc::new(RealLoads::map(array_data(&ebpf, names::REAL_LOAD)?)?);
        // A pinned table keeps the size and hash key it was made with.
        let mut info = typed(&mut ebpf, names::CONN_TABLE_INFO)?;
        let table = conn_table::TableMaps {
            pool: array_data(&ebpf, names::CONNS)?,
            index: array_data(&ebpf, names::CONN_INDEX)?,
            chunks: array_data(&ebpf, names::CONN_CHUNKS)?,
            info: &mut info,
        };
        let conns = ConnTable::map(table, conn_table_size)?;
        let mut dataplane = Self { ebpf, maps, real_loads, attached: StdHashMap::new(), conns, pins, clock_behind: 0 };
        // An adopted clock goes on from where it stopped: the entries the data path
        // stamped while no agent ran were stamped then, and the time without an agent
        // must not count as idle time (a long stop would age them all at once).
        let stopped_at = dataplane.clock()?.read()?;
        if stopped_at != 0 {
            dataplane.clock_behind = kernel_seconds()?.saturating_sub(stopped_at);
        }
        // Entries are stamped with it from the first packet on.
        dataplane.clock()?.tick()?;
        Ok(dataplane)
    }

    /// The reader of the program's log records; they go to `logger`. Call once, when
    /// the log level is not `off`.
    pub fn logger<T: log::Log>(&mut self, logger: T) -> Result<EbpfLogger<T>> {
        EbpfLogger::init_with_logger(&mut self.ebpf, logger).context("opening the eBPF program's log")
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN` in tests and the benchmark.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(names::INGRESS_PROGRAM)
            .and_then(|program| program.try_into().ok())
            .expect("loaded in Dataplane::load")
    }

    /// Attaches `lb_ingress` to `interface` (again, if the mode changed); answers
    /// whether it did anything. `auto` takes the driver's mode when the driver has one.
    /// A failed change of mode leaves the old attachment.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<bool> {
        let old_mode = match self.attached.get(interface) {
            Some(attachment) if attachment.mode == mode => return Ok(false),
            Some(attachment) => Some(attachment.mode),
            None => None,
        };
        if old_mode.is_some() {
            self.detach(interface)?;
        }
        match self.attach_new(interface, mode) {
            Ok(()) => Ok(true),
            Err(err) => {
                if let Some(old_mode) = old_mode {
                    self.attach_new(interface, old_mode)?;
                }
                Err(err)
            }
        }
    }

    fn attach_new(&mut self, interface: &str, mode: XdpMode) -> Result<()> {
        let ifindex = ifindex(interface)?;
        let (link, attached) = attach_xdp(self.program_mut(), names::INGRESS_PROGRAM, interface, ifindex, mode)?;
        let link = match self.pins.as_ref().map(|pins| pins.link(interface)) {
            Some(path) => Held::Pin(self.pin_link(link, &path)?),
            None => Held::Program(link),
        };
        let restore_rx_vlan = see_vlan_tags(interface);
        log::info!("attached lb_ingress to {interface} (ifindex {ifindex}, {} mode)", attached.label());
        self.attached.insert(interface.to_owned(), Attachment { ifindex, mode, attached, link, restore_rx_vlan });
        Ok(())
    }

    pub fn detach(&mut self, interface: &str) -> Result<()> {
        if let Some(attachment) = self.attached.remove(interface) {
            match attachment.link {
                Held::Program(link) => self.program_mut().detach(link).map_err(anyhow::Error::from),
                // The link ends, and the program leaves the interface, with its pin.
                Held::Pin(link) => link.unpin().map(drop).map_err(anyhow::Error::from),
            }
            .with_context(|| format!("detaching lb_ingress from {interface}"))?;
            if attachment.restore_rx_vlan
                && let Err(err) = offload::set_rx_vlan_offload(interface, true)
            {
                log::warn!("{interface}: turning the receive VLAN offload back on: {err}");
            }
            log::info!("detached lb_ingress from {interface}");
        }
        Ok(())
    }

    /// Pins `link`, which the program hands over, at `path` (replacing a pin left by a
    /// link that ended with its interface).
    fn pin_link(&mut self, link: XdpLinkId, path: &Path) -> Result<PinnedLink> {
        let link = FdLink::try_from(self.program_mut().take_link(link)?)
            .context("the kernel attached lb_ingress without a BPF link, which cannot be pinned")?;
        if path.exists() {
            std::fs::remove_file(path).with_context(|| format!("removing the stale {}", path.display()))?;
        }
        link.pin(path).with_context(|| format!("pinning {}", path.display()))
    }

    /// Takes over the links an earlier agent pinned, as it saved them: this program
    /// replaces its in each (atomically: every packet meets one or the other). A link
    /// that the state does not name, whose interface has gone or is no longer called
    /// so, is removed (the apply attaches anew where the configuration says). Any other
    /// failure stops the agent and leaves the link, forwarding, as it was.
    fn adopt(&mut self, saved: Vec<SavedAttachment>) -> Result<()> {
        let pins = self.pins.as_ref().context("adopting links without pins")?;
        let links: Vec<(String, PathBuf)> =
            pins.pinned_links()?.into_iter().map(|interface| (interface.clone(), pins.link(&interface))).collect();
        for (interface, path) in links {
            let saved = saved.iter().find(|saved| saved.interface == interface);
            let Some(saved) = saved.filter(|saved| ifindex(&interface).ok() == Some(saved.ifindex)) else {
                log::warn!(
                    "{}: its interface is gone or renamed (or unknown to the saved state); removing the link",
                    path.display()
                );
                PinnedLink::from_pin(&path)?.unpin()?;
                continue;
            };
            let link = match self.replace_program(&path) {
                Ok(link) => link,
                Err(ReplaceError::Defunct) => {
                    log::warn!("{interface}: its link ended with the device; removing it");
                    PinnedLink::from_pin(&path)?.unpin()?;
                    continue;
                }
                Err(ReplaceError::Other(err)) => {
                    return Err(err.context(format!(
                        "{interface}: cannot replace the program in its pinned link {} (left as it is, forwarding)",
                        path.display()
                    )));
                }
            };
            log::info!("replaced the program attached to {interface} ({} mode)", saved.attached.label());
            let attachment = Attachment {
                ifindex: saved.ifindex,
                mode: saved.mode,
                attached: saved.attached,
                link: Held::Pin(link),
                restore_rx_vlan: saved.restore_rx_vlan,
            };
            self.attached.insert(interface, attachment);
        }
        Ok(())
    }

    /// Puts this program in the link pinned at `path` (`bpf_link_update`).
    fn replace_program(&mut self, path: &Path) -> Result<PinnedLink, ReplaceError> {
        let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(path).map_err(anyhow::Error::from)?))
            .context("not an XDP link")?;
        let program = self.program_mut();
        let id = match program.attach_to_link(link) {
            Ok(id) => id,
            Err(aya::programs::ProgramError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                return Err(ReplaceError::Defunct);
            }
            Err(err) => return Err(anyhow::Error::from(err).context("bpf_link_update").into()),
        };
        // The pin holds the link; the program's descriptor of it is not needed.
        drop(program.take_link(id).map_err(anyhow::Error::from)?);
        Ok(PinnedLink::from_pin(path).map_err(anyhow::Error::from)?)
    }

    /// Saves the attachments and `director` (the director's account of the ids) where
    /// the next agent finds them; nothing without pins.
    pub fn save_state<D: Serialize>(&self, director: D) -> Result<()> {
        let Some(pins) = &self.pins else { return Ok(()) };
        let attachments = self
            .attached
            .iter()
            .map(|(interface, attachment)| SavedAttachment {
                interface: interface.clone(),
                ifindex: attachment.ifindex,
                mode: attachment.mode,
                attached: attachment.attached,
                restore_rx_vlan: attachment.restore_rx_vlan,
            })
            .collect();
        pins.save_state(&Saved { layout: LAYOUT, attachments, director })
    }

    /// Where the maps are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(Pins::dir)
    }

    /// Names of the attached interfaces.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Each attached interface, and the mode its attachment took.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.attached.iter().map(|(name, attachment)| (name.as_str(), attachment.attached))
    }

    /// How many entries the connection table holds at most.
    pub fn conn_table_capacity(&self) -> u32 {
        self.conns.capacity()
    }

    pub fn attached_ifindexes(&self) -> Vec<u32> {
        self.attached.values().map(|attachment| attachment.ifindex).collect()
    }

    /// Writes the device `key` into `INTERFACES`, and into its slot of `INTERFACE_SLOTS`
    /// unless another device holds it.
    pub fn set_interface(&mut self, key: &InterfaceKey, interface: &Interface) -> Result<()> {
        self.maps.interfaces.insert(key, interface, 0).context("writing INTERFACES")?;
        let held = self.interface_slot(key)?;
        if held.key.ifindex != 0 && held.key != *key {
            return Ok(());
        }
        // The MAC first, under a key no device has, then the key: a packet never reads
        // one device's key with another's MAC (the kernel copies a value in place).
        let unkeyed = InterfaceKey { ifindex: 0, ..*key };
        self.write_interface_slot(key, &InterfaceSlot { key: unkeyed, interface: *interface })?;
        self.write_interface_slot(key, &InterfaceSlot { key: *key, interface: *interface })
    }

    pub fn remove_interface(&mut self, key: &InterfaceKey) -> Result<()> {
        if self.interface_slot(key)?.key == *key {
            self.write_interface_slot(key, &InterfaceSlot::default())?;
        }
        self.maps.interfaces.remove(key).context("removing from INTERFACES")
    }

    fn interface_slot(&self, key: &InterfaceKey) -> Result<InterfaceSlot> {
        self.maps.interface_slots.get(&key.slot(), 0).context("reading INTERFACE_SLOTS")
    }

    fn write_interface_slot(&mut self, key: &InterfaceKey, slot: &InterfaceSlot) -> Result<()> {
        self.maps.interface_slots.set(key.slot(), slot, 0).context("writing INTERFACE_SLOTS")
    }

    /// Writes the service `key` into `SERVICES`, and into its slot of `SERVICE_SLOTS`
    /// unless another service holds it.
    pub fn set_service(&mut self, key: &ServiceKey, service: &Service) -> Result<()> {
        self.maps.services.insert(key, service, 0).context("writing SERVICES")?;
        let held = self.service_slot(key.slot())?;
        if held.key.family != 0 && held.key != *key {
            return Ok(());
        }
        self.write_service_slot(key.slot(), &held, key, service)
    }

    /// Removes the service `key`, from its slot first (packets then find it in
    /// `SERVICES` until it goes from there too). A service that shares the slot takes
    /// it at [`Dataplane::settle_service_slots`].
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        let held = self.service_slot(key.slot())?;
        if held.key == *key {
            self.write_service_slot(key.slot(), &held, &ServiceKey::default(), &Service::default())?;
        }
        self.maps.services.remove(key).context("removing from SERVICES")
    }

    /// Makes `SERVICE_SLOTS` agree with `SERVICES`: each slot holds a service of
    /// `SERVICES` with its value (the one there already, if it still is), or is free
    /// when none has that slot. After removals (a slot whose holder went is taken by a
    /// service that shares it), and after adopting pinned maps.
    pub fn settle_service_slots(&mut self) -> Result<()> {
        let services = self.services()?;
        let mut sharing: StdHashMap<u32, (ServiceKey, Service)> = StdHashMap::new();
        for (key, service) in &services {
            sharing.entry(key.slot()).or_insert((*key, *service));
        }
        for slot in 0..service::SLOTS {
            let held = self.service_slot(slot)?;
            let kept = services.get(&held.key).filter(|_| held.key.family != 0).map(|service| (held.key, *service));
            let (key, service) = kept.or_else(|| sharing.get(&slot).copied()).unwrap_or_default();
            if held.seq & 1 != 0 || held.key != key || held.service != service {
                self.write_service_slot(slot, &held, &key, &service)?;
            }
        }
        Ok(())
    }

    /// What slot `slot` of `SERVICE_SLOTS` holds.
    pub fn service_slot(&self, slot: u32) -> Result<ServiceSlot> {
        self.maps.service_slots.get(&slot, 0).context("reading SERVICE_SLOTS")
    }

    /// Writes `slot`, which holds `held`, as its sequence lock asks (`ServiceSlot`): its
    /// `seq` made odd, then the key and value, then `seq` even again, each write
    /// changing nothing else (the kernel copies a value in place, in no given order).
    fn write_service_slot(&mut self, slot: u32, held: &ServiceSlot, key: &ServiceKey, service: &Service) -> Result<()> {
        let held = *held;
        let seq = held.seq | 1;
        let written = ServiceSlot { seq, key: *key, service: *service, _pad: [0; 8] };
        for value in [ServiceSlot { seq, ..held }, written, ServiceSlot { seq: seq.wrapping_add(1), ..written }] {
            self.maps.service_slots.set(slot, value, 0).context("writing SERVICE_SLOTS")?;
        }
        Ok(())
    }

    pub fn set_real(&mut self, id: u32, real: &RealServer) -> Result<()> {
        self.maps.reals.set(id, real, 0).context("writing REALS")
    }

    pub fn write_sequence(&mut self, slots: &Slots, sequence: &[u32]) -> Result<()> {
        for (slot, id) in slots.clone().zip(sequence) {
            self.maps.sched_ring.set(slot, id, 0).context("writing SCHED_RING")?;
        }
        Ok(())
    }

    /// Writes Full-NAT local addresses from slot `start` on.
    pub fn write_local_addresses(&mut self, start: u32, addresses: &[[u8; 16]]) -> Result<()> {
        for (slot, address) in (start..).zip(addresses) {
            self.maps.local_addresses.set(slot, address, 0).context("writing LOCAL_ADDRESSES")?;
        }
        Ok(())
    }

    /// Starts the service's walk over its sequence from the first slot.
    pub fn reset_cursor(&mut self, index: u32) -> Result<()> {
        self.maps.sched_cursor.set(index, SchedCursor::default(), 0).context("writing SCHED_CURSOR")
    }

    pub fn service_counters(&self, index: u32) -> Result<Counters> {
        sum(&self.maps.service_stats, index)
    }

    pub fn real_counters(&self, id: u32) -> Result<Counters> {
        sum(&self.maps.real_stats, id)
    }

    /// Zeroes the counters of a slot that is given to a new service.
    pub fn reset_service_counters(&mut self, index: u32) -> Result<()> {
        reset(&mut self.maps.service_stats, index)
    }

    /// Zeroes the counters of an id that is given to a new real server.
    pub fn reset_real_counters(&mut self, id: u32) -> Result<()> {
        reset(&mut self.maps.real_stats, id)
    }

    /// Packets passed or dropped, per reason, summed over CPUs.
    pub fn reason_counts(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = self.maps.verdict_stats.get(&(reason as u32), 0)?;
                Ok((reason, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// The devices `INTERFACES` holds (read back by an agent that adopted the maps).
    pub fn interfaces(&self) -> Result<StdHashMap<InterfaceKey, Interface>> {
        entries(&self.maps.interfaces, names::INTERFACES)
    }

    /// The services `SERVICES` holds.
    pub fn services(&self) -> Result<StdHashMap<ServiceKey, Service>> {
        entries(&self.maps.services, names::SERVICES)
    }

    /// Real server `id`'s entry in `REALS`.
    pub fn real(&self, id: u32) -> Result<RealServer> {
        self.maps.reals.get(&id, 0).context("reading REALS")
    }

    /// The sequence `SCHED_RING` holds in `slots`.
    pub fn sequence(&self, slots: &Slots) -> Result<Vec<u32>> {
        slots.clone().map(|slot| self.maps.sched_ring.get(&slot, 0).context("reading SCHED_RING")).collect()
    }

    /// The Full-NAT local addresses `LOCAL_ADDRESSES` holds in `slots`.
    pub fn local_addresses(&self, slots: std::ops::Range<u32>) -> Result<Vec<[u8; 16]>> {
        slots.map(|slot| self.maps.local_addresses.get(&slot, 0).context("reading LOCAL_ADDRESSES")).collect()
    }

    /// Calls `visit` with every entry of the connection table.
    pub fn walk_conns(&self, visit: impl FnMut(&FlowKey, &Conn)) -> Result<u64> {
        self.conns.walk(visit)
    }

    /// The real-server ids and service indexes that some connection entry, template
    /// or lblc or lblcr entry still points at.
    pub fn conn_references(&self) -> Result<ConnReferences> {
        let mut references = ConnReferences::default();
        self.conns.walk(|_, conn| {
            references.reals.insert(conn.real);
            references.services.insert(conn.service);
        })?;
        // A template may outlive its connections, and must never send a client to
        // an id that was given to another real server.
        walk(&self.maps.templates, names::PERSIST, |key, template| {
            references.reals.insert(template.real);
            references.services.insert(key.service);
        })?;
        // So do lblc's and lblcr's entries, until the ager drops a removed real server
        // from them.
        walk(&self.maps.localities, names::LOCALITY, |key, entry| {
            references.reals.extend(entry.reals.iter().filter(|&&real| real != NO_REAL));
            references.services.insert(key.service);
        })?;
        Ok(references)
    }

    /// A handle of its own on the connection table, for ageing it without holding
    /// the director.
    pub fn conn_table(&self) -> ConnTable {
        self.conns.clone()
    }

    /// A handle of its own on the persistence templates, for ageing them.
    pub fn template_table(&self) -> Result<TemplateTable> {
        Table::of(self.maps.templates.map(), names::PERSIST)
    }

    /// A handle of its own on lblc's and lblcr's entries, for ageing them.
    pub fn locality_table(&self) -> Result<LocalityTable> {
        Table::of(self.maps.localities.map(), names::LOCALITY)
    }

    /// Real server `id`'s connections, weight and thresholds.
    pub fn real_load(&self, id: u32) -> RealLoad {
        self.real_loads.get(id)
    }

    /// Sets real server `id`'s weight and thresholds, as the least-connection
    /// schedulers read them.
    pub fn set_limits(&self, id: u32, limits: Limits) {
        self.real_loads.set_limits(id, limits);
    }

    /// The real servers' loads (`REAL_LOAD`), mapped into memory.
    pub fn real_loads(&self) -> Arc<RealLoads> {
        self.real_loads.clone()
    }

    /// Handles of its own on what the data path announces to the sync peers by
    /// (`SYNC_EVENTS`), and on how it does (`SYNC_SETTINGS`).
    pub fn sync_events(&self) -> Result<(RingBuf<MapData>, SyncSwitch)> {
        let events = match self.ebpf.map(names::SYNC_EVENTS) {
            Some(Map::RingBuf(data)) => own_handle(data, names::SYNC_EVENTS)?,
            _ => bail!("the object has no ring buffer {}", names::SYNC_EVENTS),
        };
        let settings = own_handle(array_data(&self.ebpf, names::SYNC_SETTINGS)?, names::SYNC_SETTINGS)?;
        Ok((
            RingBuf::try_from(events).context("SYNC_EVENTS is not a ring buffer")?,
            SyncSwitch(Array::try_from(settings).context("SYNC_SETTINGS is not an array")?),
        ))
    }

    /// A handle of its own on the data path's clock (`CLOCK`).
    pub fn clock(&self) -> Result<Clock> {
        let map = own_handle(array_data(&self.ebpf, names::CLOCK)?, names::CLOCK)?;
        Ok(Clock { map: Array::try_from(map).context("CLOCK is not an array")?, behind: self.clock_behind })
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::INGRESS_PROGRAM)
            .and_then(|program| program.try_into().ok())
            .expect("loaded in Dataplane::load")
    }
}

/// A hash map of the data path through a descriptor of its own (the same kernel map
/// the data path reads and writes as packets pass), for a task that does not hold the
/// director: the connection table, the persistence templates, lblc's and lblcr's
/// entries.
pub struct Table<K, V> {
    map: HashMap<MapData, K, V>,
    name: &'static str,
}

/// `bpf(2)`'s `BPF_EXIST`: an update that only replaces an entry, never adds one.
const BPF_EXIST: u64 = 2;

/// The persistence templates (`PERSIST`).
pub type TemplateTable = Table<PersistKey, Persist>;
/// lblc's and lblcr's entries (`LOCALITY`).
pub type LocalityTable = Table<LocalityKey, Locality>;

impl<K: Pod, V: Pod> Table<K, V> {
    fn of(data: &MapData, name: &'static str) -> Result<Self> {
        let map = own_handle(data, name)?;
        Ok(Self { map: HashMap::try_from(map).with_context(|| format!("{name} is not a hash map"))?, name })
    }

    /// Calls `visit` with every entry; answers how many there were.
    pub fn walk(&self, visit: impl FnMut(&K, &V)) -> Result<u64> {
        walk(&self.map, self.name, visit)
    }

    /// The entry of `key`, as it is now.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.map.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", self.name)),
        }
    }

    /// Replaces the entry of `key` with `value`; answers false when it was gone
    /// already (evicted), and leaves it gone.
    pub fn replace(&mut self, key: &K, value: &V) -> Result<bool> {
        match self.map.insert(key, value, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(err) => Err(err).with_context(|| format!("writing {}", self.name)),
        }
    }

    /// Writes the entry of `key`, new or not.
    pub fn insert(&mut self, key: &K, value: &V) -> Result<()> {
        self.map.insert(key, value, 0).with_context(|| format!("writing {}", self.name))
    }

    /// Removes the entry of `key`; answers false when it was gone already (the data
    /// path or the table's eviction removed it first).
    pub fn remove(&mut self, key: &K) -> Result<bool> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(err) => Err(err).with_context(|| format!("removing from {}", self.name)),
        }
    }
}

/// The array map `name` of `ebpf`.
fn array_data<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    match ebpf.map(name) {
        Some(Map::Array(data)) => Ok(data),
        Some(_) => bail!("{name} is not an array"),
        None => bail!("the object has no map {name}"),
    }
}

/// `data`'s map through a descriptor of its own, for a task that does not hold the
/// director.
fn own_handle(data: &MapData, name: &str) -> Result<Map> {
    let fd = data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating {name}'s descriptor"))?;
    Ok(Map::from_map_data(MapData::from_fd(fd)?)?)
}

/// How the data path announces connections to the sync peers (`SYNC_SETTINGS`).
pub struct SyncSwitch(Array<MapData, SyncSettings>);

impl SyncSwitch {
    pub fn set(&mut self, settings: SyncSettings) -> Result<()> {
        self.0.set(0, settings, 0).context("writing SYNC_SETTINGS")
    }
}

/// The data path's clock (`CLOCK`): seconds of CLOCK_MONOTONIC_COARSE (less the time
/// the data path forwarded without an agent), which the agent writes every second, so
/// no packet has to ask the kernel.
pub struct Clock {
    map: Array<MapData, u32>,
    /// How far it runs behind the kernel's: the seconds no agent ran while the data
    /// path forwarded on (see [`Dataplane::load_pinned`]).
    behind: u32,
}

impl Clock {
    /// Sets the clock to the time it should show; answers it.
    pub fn tick(&mut self) -> Result<u32> {
        let now = self.expected()?;
        self.map.set(0, now, 0).context("writing CLOCK")?;
        Ok(now)
    }

    /// The time the clock should show now: the kernel's, less the time no agent ran.
    pub fn expected(&self) -> Result<u32> {
        Ok(kernel_seconds()?.saturating_sub(self.behind))
    }

    /// The time the data path stamps entries with now.
    pub fn read(&self) -> Result<u32> {
        self.map.get(&0, 0).context("reading CLOCK")
    }
}

/// Seconds of CLOCK_MONOTONIC_COARSE, the kernel's clock that `CLOCK` follows.
pub fn kernel_seconds() -> Result<u32> {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: the call writes only the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut time) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading CLOCK_MONOTONIC_COARSE");
    }
    Ok(time.tv_sec as u32)
}

/// Walks a hash map (`name`) one entry at a time (aya 0.14 has no batched lookups: a
/// `BPF_MAP_GET_NEXT_KEY` and a `BPF_MAP_LOOKUP_ELEM` each), calling `visit` with each
/// and answering how many it saw. An entry removed while the walk passes is skipped; if
/// the one the walk stands on goes, the kernel starts it again from the first key, so
/// the walk stops after as many steps as the table has room for.
fn walk<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, name: &str, mut visit: impl FnMut(&K, &V)) -> Result<u64> {
    let room = map.map().info().with_context(|| format!("reading {name}'s size"))?.max_entries();
    let mut seen = 0;
    for entry in map.iter().take(room as usize) {
        match entry {
            Ok((key, value)) => {
                seen += 1;
                visit(&key, &value);
            }
            // An entry evicted while we walk the table is no longer in use.
            Err(MapError::KeyNotFound) => {}
            Err(err) => return Err(err).with_context(|| format!("reading {name}")),
        }
    }
    Ok(seen)
}

/// Every entry of a hash map (`name`).
fn entries<K: Pod + Eq + std::hash::Hash, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &str,
) -> Result<StdHashMap<K, V>> {
    let mut entries = StdHashMap::new();
    walk(map, name, |key, value| {
        entries.insert(*key, *value);
    })?;
    Ok(entries)
}

/// The mode an XDP attachment took: in the driver (native) or in the kernel's generic
/// path (skb).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Driver,
    Skb,
}

impl AttachedMode {
    /// As the kernel's flags name it (`XDP_FLAGS_DRV_MODE`, `XDP_FLAGS_SKB_MODE`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }
}

/// Attaches `program` (called `name` in messages) to `interface`, whose index is
/// `ifindex`. `auto` takes the driver's mode when the driver has one; the answer says
/// which mode took.
pub fn attach_xdp(
    program: &mut Xdp,
    name: &str,
    interface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<(XdpLinkId, AttachedMode)> {
    let mut attach = |attached: AttachedMode| {
        let flags = match attached {
            AttachedMode::Driver => AyaXdpMode::Driver,
            AttachedMode::Skb => AyaXdpMode::Skb,
        };
        program.attach_to_if_index(ifindex, flags).map(|link| (link, attached))
    };
    let attached = match mode {
        XdpMode::Native => attach(AttachedMode::Driver),
        XdpMode::Generic => attach(AttachedMode::Skb),
        XdpMode::Auto => attach(AttachedMode::Driver).or_else(|err| {
            log::warn!("{interface}: native XDP unavailable ({err}); attaching {name} in generic mode");
            attach(AttachedMode::Skb)
        }),
    };
    attached.map_err(|err| {
        let taken = matches!(&err, aya::programs::ProgramError::SyscallError(call)
            if matches!(call.io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)));
        let err = anyhow::Error::from(err).context(format!("attaching {name} to {interface} in {mode:?} mode"));
        if taken {
            err.context(format!(
                "{interface} has an XDP program already (`ip link show {interface}`): another program's, or an \
                 agent's pinned under another pin_path, which `lb-agent --detach --pin-path THAT_PATH` removes"
            ))
        } else {
            err
        }
    })
}

/// Turns the receive VLAN offload of `interface` off, so tags stay in the frames
/// `lb_ingress` reads; answers whether it was on.
fn see_vlan_tags(interface: &str) -> bool {
    match offload::rx_vlan_offload(interface) {
        Ok(false) => false,
        Ok(true) => match offload::set_rx_vlan_offload(interface, false) {
            Ok(()) => {
                log::info!("{interface}: receive VLAN offload turned off, so lb_ingress sees 802.1Q tags");
                true
            }
            Err(err) => {
                log::warn!(
                    "{interface}: cannot turn the receive VLAN offload off ({err}); tagged clients look untagged to lb_ingress"
                );
                false
            }
        },
        Err(err) => {
            log::debug!("{interface}: reading the receive VLAN offload: {err}");
            false
        }
    }
}

/// Loads the programs `lb_ingress` tail-calls and puts each in its slot of
/// `TAIL_CALLS`: `lb_toa` (Full-NAT's TOA).
fn load_tail_calls(ebpf: &mut Ebpf) -> Result<()> {
    let toa: &mut Xdp = ebpf
        .program_mut(names::TOA_PROGRAM)
        .ok_or_else(|| anyhow!("the object has no program {}", names::TOA_PROGRAM))?
        .try_into()?;
    toa.load().context("loading lb_toa (the verifier refused it?)")?;
    let fd = toa.fd()?.try_clone()?;
    let map = ebpf.map_mut(names::TAIL_CALLS).ok_or_else(|| anyhow!("the object has no map {}", names::TAIL_CALLS))?;
    let mut tail_calls = ProgramArray::try_from(map)?;
    tail_calls.set(TAIL_CALL_TOA, &fd, 0).context("filling TAIL_CALLS")?;
    Ok(())
}

fn typed<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let map = ebpf.take_map(name).ok_or_else(|| anyhow!("the object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} is not of the expected type"))
}

fn sum(map: &PerCpuArray<MapData, Counters>, index: u32) -> Result<Counters> {
    let per_cpu = map.get(&index, 0).context("reading counters")?;
    Ok(per_cpu.iter().fold(Counters::default(), |total, cpu| Counters {
        packets: total.packets + cpu.packets,
        bytes: total.bytes + cpu.bytes,
        conns: total.conns + cpu.conns,
        out_packets: total.out_packets + cpu.out_packets,
        out_bytes: total.out_bytes + cpu.out_bytes,
    }))
}

fn reset(map: &mut PerCpuArray<MapData, Counters>, index: u32) -> Result<()> {
    let cpus = nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))?;
    let zeroes = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
    map.set(index, zeroes, 0).context("zeroing counters")
}

/// The index of the interface named `interface` in this network namespace.
pub fn ifindex(interface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(interface)?;
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(anyhow!("no interface named {interface}: {}", std::io::Error::last_os_error())),
        ifindex => Ok(ifindex),
    }
}
