//! `lb_decap` as userspace sees it: loading, attaching, the address maps and the
//! counters. The only module of `lb-decap` that talks to aya.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{Xdp, xdp::XdpLinkId},
};
use lb_agent::{
    config::XdpMode,
    dataplane::{self, DECAP_OBJECT},
};
use lb_common::decap::{AddressKey, PRESENT, Refusal, Traffic, names};

pub struct Decapsulator {
    ebpf: Ebpf,
    /// What `DECAP_VIPS` and `DECAP_LOCAL` hold.
    vips: BTreeSet<IpAddr>,
    local: BTreeSet<IpAddr>,
    attached: Vec<(String, XdpLinkId)>,
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

/// What `lb-decap status` reports: where it is attached, its VIPs, the host's
/// addresses it knows, its counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub interfaces: Vec<String>,
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
        Ok(Self { ebpf, vips: BTreeSet::new(), local: BTreeSet::new(), attached: Vec::new() })
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
        let (link, attached) = dataplane::attach_xdp(self.program_mut(), names::PROGRAM, interface, ifindex, mode)?;
        log::info!("attached lb_decap to {interface} (ifindex {ifindex}, {} mode)", attached.label());
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

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let decapsulated: PerCpuArray<&MapData, Traffic> = self.map(names::DECAPSULATED)?.try_into()?;
        let refused: PerCpuArray<&MapData, u64> = self.map(names::REFUSED)?.try_into()?;
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

    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            interfaces: self.attached.iter().map(|(interface, _)| interface.clone()).collect(),
            vips: self.vips.iter().copied().collect(),
            local: self.local.iter().copied().collect(),
            counters: self.counters()?,
        })
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("the object has no map {name}"))
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(names::PROGRAM).and_then(|program| program.try_into().ok()).expect("loaded in load()")
    }
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
