//! `lb_decap` as userspace sees it: loading, attaching, the address maps, pins and
//! counters. The only module of `lb-decap` that talks to aya.

use std::{
    collections::BTreeSet,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, MapInfo, PerCpuArray},
    programs::{Xdp, xdp::XdpLinkId},
};
use lb_agent::{
    config::XdpMode,
    dataplane::{self, DECAP_OBJECT},
};
use lb_common::decap::{AddressKey, PRESENT, Refusal, Traffic, names};

/// The maps pinned for `lb-decap status`, which runs in another process.
const PINNED: [&str; 4] = [names::VIPS, names::LOCAL, names::DECAPSULATED, names::REFUSED];

pub struct Decapsulator {
    ebpf: Ebpf,
    /// What `DECAP_VIPS` and `DECAP_LOCAL` hold.
    vips: BTreeSet<IpAddr>,
    local: BTreeSet<IpAddr>,
    attached: Vec<(String, XdpLinkId)>,
    pins: Option<Pins>,
}

/// The pins this process made, each with the id of the map it pinned, so that only
/// pins still its own are removed (another instance may have replaced them).
struct Pins {
    dir: PathBuf,
    maps: Vec<(PathBuf, u32)>,
}

/// What the counters say, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub decapsulated: Traffic,
    /// Every [`Refusal`], in [`Refusal::ALL`]'s order.
    pub refused: Vec<(Refusal, u64)>,
}

impl Counters {
    pub fn refused(&self, refusal: Refusal) -> u64 {
        self.refused.iter().find(|(r, _)| *r == refusal).map_or(0, |(_, count)| *count)
    }
}

/// What a running `lb-decap` pinned: its VIPs, the host's addresses it knows, its
/// counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    pub vips: Vec<IpAddr>,
    pub local: Vec<IpAddr>,
    pub counters: Counters,
}

/// What a change of an address map did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

impl Decapsulator {
    /// Loads `lb_decap` and its maps into the kernel; nothing is attached yet.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(DECAP_OBJECT).context("loading the lb_decap object")?;
        let program: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .ok_or_else(|| anyhow!("the object has no program {}", names::PROGRAM))?
            .try_into()?;
        program.load().context("loading lb_decap (the verifier refused it?)")?;
        Ok(Self { ebpf, vips: BTreeSet::new(), local: BTreeSet::new(), attached: Vec::new(), pins: None })
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN` in tests.
    pub fn program(&self) -> &Xdp {
        self.ebpf.program(names::PROGRAM).and_then(|program| program.try_into().ok()).expect("loaded in load()")
    }

    /// Makes `DECAP_VIPS` hold exactly `vips`.
    pub fn set_vips(&mut self, vips: BTreeSet<IpAddr>) -> Result<Change> {
        sync(&mut self.ebpf, names::VIPS, &mut self.vips, vips)
    }

    /// Makes `DECAP_LOCAL` hold exactly `addresses`, the host's own.
    pub fn set_local(&mut self, addresses: BTreeSet<IpAddr>) -> Result<Change> {
        sync(&mut self.ebpf, names::LOCAL, &mut self.local, addresses)
    }

    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<()> {
        let ifindex = dataplane::ifindex(interface)?;
        let link = dataplane::attach_xdp(self.program_mut(), names::PROGRAM, interface, ifindex, mode)?;
        log::info!("attached lb_decap to {interface} (ifindex {ifindex}, {mode:?} mode)");
        self.attached.push((interface.to_owned(), link));
        Ok(())
    }

    /// Detaches from every interface; the first failure is the answer, after trying all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut outcome = Ok(());
        for (interface, link) in std::mem::take(&mut self.attached) {
            match self.program_mut().detach(link) {
                Ok(()) => log::info!("detached lb_decap from {interface}"),
                Err(err) => {
                    let err = anyhow!(err).context(format!("detaching lb_decap from {interface}"));
                    log::error!("{err:#}");
                    outcome = outcome.and(Err(err));
                }
            }
        }
        outcome
    }

    /// Pins the maps in `dir` (created if missing) for `lb-decap status`. Pins found
    /// there are replaced: an instance that did not stop cleanly left them.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| {
            format!(
                "creating {} (bpffs must be mounted at /sys/fs/bpf; `ip netns exec` hides it, `nsenter --net` does not)",
                dir.display()
            )
        })?;
        let pins = self.pins.insert(Pins { dir: dir.to_owned(), maps: Vec::new() });
        for name in PINNED {
            let path = dir.join(name);
            if path.exists() {
                log::warn!(
                    "replacing {}: left by an lb-decap that did not stop cleanly, or another one uses this pin directory",
                    path.display()
                );
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            let map = self.ebpf.map(name).ok_or_else(|| anyhow!("the object has no map {name}"))?;
            map.pin(&path).with_context(|| format!("pinning {name} at {}", path.display()))?;
            let id = MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?.id();
            pins.maps.push((path, id));
        }
        Ok(())
    }

    /// Removes the pins that are still this process's, and their directory once empty.
    pub fn unpin(&mut self) {
        let Some(pins) = self.pins.take() else { return };
        for (path, id) in pins.maps {
            match MapInfo::from_pin(&path) {
                Ok(info) if info.id() == id => {
                    if let Err(err) = fs::remove_file(&path) {
                        log::warn!("removing {}: {err}", path.display());
                    }
                }
                _ => log::warn!("{} is no longer this process's pin; left in place", path.display()),
            }
        }
        if let Err(err) = fs::remove_dir(&pins.dir)
            && err.kind() != io::ErrorKind::NotFound
        {
            log::warn!("removing {}: {err}", pins.dir.display());
        }
    }

    pub fn counters(&self) -> Result<Counters> {
        counters(self.map(names::DECAPSULATED)?, self.map(names::REFUSED)?)
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("the object has no map {name}"))
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(names::PROGRAM).and_then(|program| program.try_into().ok()).expect("loaded in load()")
    }
}

impl Drop for Decapsulator {
    /// Pins outlive the process: remove them on every way out. (Links go with the
    /// program's file descriptors.)
    fn drop(&mut self) {
        self.unpin();
    }
}

/// Reads what the `lb-decap` that pinned its maps in `dir` holds.
pub fn read_pinned(dir: &Path) -> Result<Pinned> {
    let open = |name: &str| -> Result<MapData> {
        let path = dir.join(name);
        MapData::from_pin(&path).with_context(|| {
            format!(
                "no lb-decap pinned at {} (is one running in this network namespace? `ip netns exec` hides \
                 /sys/fs/bpf: use `nsenter --net`)",
                path.display()
            )
        })
    };
    let addresses = |map: Map| -> Result<Vec<IpAddr>> {
        let map: HashMap<&MapData, AddressKey, u8> = (&map).try_into()?;
        let keys: Vec<AddressKey> = map.keys().collect::<Result<_, MapError>>()?;
        let mut addresses: Vec<IpAddr> = keys.iter().filter_map(AddressKey::ip).collect();
        addresses.sort();
        Ok(addresses)
    };
    Ok(Pinned {
        vips: addresses(Map::HashMap(open(names::VIPS)?))?,
        local: addresses(Map::HashMap(open(names::LOCAL)?))?,
        counters: counters(&Map::PerCpuArray(open(names::DECAPSULATED)?), &Map::PerCpuArray(open(names::REFUSED)?))?,
    })
}

fn counters(decapsulated: &Map, refused: &Map) -> Result<Counters> {
    let decapsulated: PerCpuArray<&MapData, Traffic> = decapsulated.try_into()?;
    let refused: PerCpuArray<&MapData, u64> = refused.try_into()?;
    let per_cpu = decapsulated.get(&0, 0).context("reading DECAP_STATS")?;
    let decapsulated = per_cpu.iter().fold(Traffic::default(), |total, cpu| Traffic {
        packets: total.packets + cpu.packets,
        bytes: total.bytes + cpu.bytes,
    });
    let refused = Refusal::ALL
        .iter()
        .map(|&refusal| {
            let per_cpu = refused.get(&(refusal as u32), 0).context("reading DECAP_REFUSED")?;
            Ok((refusal, per_cpu.iter().sum()))
        })
        .collect::<Result<_>>()?;
    Ok(Counters { decapsulated, refused })
}

/// Makes the map `name` hold exactly `wanted`, adding before removing (an address that
/// stays is never missing); `current` follows every write, also when one fails.
fn sync(ebpf: &mut Ebpf, name: &str, current: &mut BTreeSet<IpAddr>, wanted: BTreeSet<IpAddr>) -> Result<Change> {
    let map = ebpf.map_mut(name).ok_or_else(|| anyhow!("the object has no map {name}"))?;
    let mut map: HashMap<&mut MapData, AddressKey, u8> = map.try_into()?;
    let change = Change {
        added: wanted.difference(current).copied().collect(),
        removed: current.difference(&wanted).copied().collect(),
    };
    for &address in &change.added {
        map.insert(AddressKey::from(address), PRESENT, 0).with_context(|| format!("adding {address} to {name}"))?;
        current.insert(address);
    }
    for address in &change.removed {
        map.remove(&AddressKey::from(*address)).with_context(|| format!("removing {address} from {name}"))?;
        current.remove(address);
    }
    Ok(change)
}
