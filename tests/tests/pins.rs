//! The agent's pins, in a BPF file system of the test's own: maps pinned at the first
//! load and adopted at the next with the state saved for them, one agent at a time on
//! them, pins of another layout refused (another version's directory, or a map of the
//! same name that differs), and `--detach`'s clean-up. End to end, with real traffic
//! through restarts: `lab.rs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};
use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData},
};
use lb_agent::dataplane::{self, DECAP_OBJECT, Dataplane, EbpfLogLevel};
use lb_common::{
    FAMILY_IPV4, IPPROTO_TCP, LAYOUT, names,
    service::{Service, ServiceKey, ServiceSlot},
};
use serde_json::{Value, json};

/// A BPF file system mounted for one test, unmounted (with whatever is pinned in it)
/// when dropped.
struct BpfFs {
    mount_point: PathBuf,
}

impl BpfFs {
    fn mount(name: &str) -> Result<Self> {
        let mount_point = std::env::temp_dir().join(format!("lb-pins-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&mount_point)?;
        let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&mount_point).status()?;
        ensure!(status.success(), "mounting a BPF file system (as root?)");
        Ok(Self { mount_point })
    }

    fn pin_path(&self) -> PathBuf {
        self.mount_point.join("lb")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = dataplane::detach(&self.pin_path());
        let _ = Command::new("umount").arg("--lazy").arg(&self.mount_point).status();
        let _ = std::fs::remove_dir(&self.mount_point);
    }
}

fn load(pin_path: &Path) -> Result<(Dataplane, Option<Value>)> {
    Dataplane::load_pinned::<Value>(pin_path, 4096, EbpfLogLevel::Off)
}

fn layout_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(format!("layout-{LAYOUT}"))
}

#[test]
fn maps_pinned_at_the_first_load_are_adopted_with_the_saved_state() -> Result<()> {
    let bpf_fs = BpfFs::mount("adopt")?;
    let pin_path = bpf_fs.pin_path();
    let (first, saved) = load(&pin_path)?;
    ensure!(saved.is_none(), "nothing to adopt at first");
    for name in names::PINNED {
        ensure!(layout_dir(&pin_path).join(name).exists(), "{name} is pinned");
    }
    first.save_state(json!({ "ids": [1, 2, 3] }))?;
    let clock = first.clock()?.read()?;

    let refused = load(&pin_path).err().map(|err| format!("{err:#}")).unwrap_or_default();
    ensure!(refused.contains("another lb-agent holds the pins"), "one agent on the pins at a time: {refused}");
    let refused = dataplane::detach(&pin_path).err().map(|err| format!("{err:#}")).unwrap_or_default();
    ensure!(refused.contains("stop it first"), "no --detach under a running agent: {refused}");
    ensure!(layout_dir(&pin_path).join(names::CONNS).exists(), "a refused --detach removes nothing");
    drop(first);

    let (second, saved) = load(&pin_path)?;
    ensure!(saved == Some(json!({ "ids": [1, 2, 3] })), "the director's saved state: {saved:?}");
    ensure!(second.clock()?.read()? >= clock, "the same CLOCK, ticked again");
    drop(second);

    let done = dataplane::detach(&pin_path)?;
    ensure!(done.iter().any(|line| line.starts_with("removed the pinned maps")), "{done:?}");
    ensure!(!pin_path.exists(), "--detach removed the pins");
    Ok(())
}

#[test]
fn maps_left_without_a_saved_state_and_nothing_attached_are_replaced() -> Result<()> {
    let bpf_fs = BpfFs::mount("leftover")?;
    let pin_path = bpf_fs.pin_path();
    drop(load(&pin_path)?);
    let (_dataplane, saved) = load(&pin_path).context("an agent that never saved leaves nothing to adopt")?;
    ensure!(saved.is_none());
    Ok(())
}

#[test]
fn pins_of_another_layout_are_refused_and_left_alone() -> Result<()> {
    let bpf_fs = BpfFs::mount("layout")?;
    let pin_path = bpf_fs.pin_path();
    let other = pin_path.join(format!("layout-{}", LAYOUT + 1));
    std::fs::create_dir_all(&other)?;
    let refused = load(&pin_path).err().map(|err| format!("{err:#}")).unwrap_or_default();
    ensure!(refused.contains(&format!("another layout ({};", LAYOUT + 1)), "{refused}");
    ensure!(refused.contains("lb-agent --detach"), "the instruction: {refused}");
    ensure!(other.exists() && !layout_dir(&pin_path).exists(), "nothing was touched");
    std::fs::remove_dir(&other)?;

    // The same version, but a map that is not what this agent's object defines (a
    // change that forgot to raise LAYOUT): refused, naming the map.
    let (dataplane, _) = load(&pin_path)?;
    dataplane.save_state(json!(null))?;
    drop(dataplane);
    let reals = layout_dir(&pin_path).join(names::REALS);
    std::fs::remove_file(&reals)?;
    let mut decap = EbpfLoader::new().load(DECAP_OBJECT)?;
    decap.map_mut(lb_common::decap::names::VIPS).context("DECAP_VIPS")?.pin(&reals)?;
    let refused = load(&pin_path).err().map(|err| format!("{err:#}")).unwrap_or_default();
    ensure!(refused.contains("REALS's kind is"), "{refused}");
    ensure!(refused.contains("not of this agent's layout"), "{refused}");
    Ok(())
}

#[test]
fn adopted_service_slots_are_made_to_agree_with_services() -> Result<()> {
    let bpf_fs = BpfFs::mount("slots")?;
    let pin_path = bpf_fs.pin_path();
    let (mut first, _) = load(&pin_path)?;
    let mut vip = [0; 16];
    vip[..4].copy_from_slice(&[203, 0, 113, 10]);
    let key = ServiceKey { vip, port: 80u16.to_be_bytes(), protocol: IPPROTO_TCP, family: FAMILY_IPV4 };
    let gone = ServiceKey { port: 81u16.to_be_bytes(), ..key };
    ensure!(key.slot() != gone.slot(), "two keys of two slots");
    let service = Service { index: 7, ..Service::default() };
    first.set_service(&key, &service)?;
    first.save_state(json!(null))?;
    drop(first);

    // An agent that stopped between writing `SERVICES` and the slot: the slot holds
    // another value, half written; another names a service `SERVICES` does not have.
    let path = layout_dir(&pin_path).join(names::SERVICE_SLOTS);
    let mut slots: Array<MapData, ServiceSlot> = Array::try_from(Map::Array(MapData::from_pin(&path)?))?;
    let stale = Service { index: 3, ..service };
    slots.set(key.slot(), ServiceSlot { seq: 5, key, service: stale, _pad: [0; 8] }, 0)?;
    slots.set(gone.slot(), ServiceSlot { seq: 2, key: gone, service, _pad: [0; 8] }, 0)?;
    drop(slots);

    let (second, saved) = load(&pin_path)?;
    ensure!(saved.is_some(), "adopted");
    let held = second.service_slot(key.slot())?;
    ensure!(held.seq % 2 == 0 && held.key == key && held.service == service, "the slot holds SERVICES's: {held:?}");
    let freed = second.service_slot(gone.slot())?;
    ensure!(freed.seq % 2 == 0 && freed.key == ServiceKey::default(), "a slot of no service is free: {freed:?}");
    Ok(())
}
