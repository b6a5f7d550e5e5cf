//! Pinning: the data path outlives the agent.
//!
//! Every map of `lb_ingress` and each interface's XDP link are pinned in the BPF file
//! system under `pin_path`, in the directory of the maps' layout (`layout-N`, N being
//! `lb_common::LAYOUT`). An agent that stops leaves them there: the program goes on
//! forwarding with the maps as they are. The next agent (a new binary of the same
//! layout too) adopts the maps, so the connection table, templates and counters carry
//! on, and replaces the program inside each link (`bpf_link_update`), so no packet
//! finds the interface without it. What the maps' ids stand for is in the state the
//! agent saves after every change, a file under `/run/lb/state` named after the pin
//! directory: both last until the host reboots. `lb-agent --detach` removes the links
//! (which detaches the program), the pins and the state.

use std::{
    fs::{self, File},
    io::Write,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{maps::MapInfo, programs::links::PinnedLink};
use lb_common::{LAYOUT, names};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::AttachedMode;
use crate::{config::XdpMode, offload};

/// Where the saved states live, each under its pin directory's own path.
const STATE_ROOT: &str = "/run/lb/state";
/// The BPF file system's `statfs` magic.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where a host mounts its BPF file system; mounted by the agent if it is not.
const SYS_FS_BPF: &str = "/sys/fs/bpf";
/// A pinned link's name: `xdp-` and the interface's.
const LINK_PREFIX: &str = "xdp-";

/// The pin directory of this agent's layout, held by this agent alone.
pub struct Pins {
    dir: PathBuf,
    state: PathBuf,
    /// Held (`flock`) while the agent runs, so a second agent on the same pins is
    /// refused instead of fighting over them.
    _lock: File,
}

/// What the agent saves after every change: its attachments, and the director's
/// account of the ids in the maps.
#[derive(Serialize, Deserialize)]
pub struct Saved<D> {
    pub layout: u32,
    pub attachments: Vec<SavedAttachment>,
    pub director: D,
}

/// An interface's pinned link, as the agent attached it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedAttachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: XdpMode,
    pub attached: AttachedMode,
    pub restore_rx_vlan: bool,
}

impl Pins {
    /// Opens (creating it) the directory of this agent's layout under `pin_path`.
    /// Refused when pins of another layout are there, or another agent holds them.
    pub fn open(pin_path: &Path) -> Result<Self> {
        ensure_bpf_fs(pin_path)?;
        refuse_other_layouts(pin_path)?;
        let dir = layout_dir(pin_path);
        fs::create_dir_all(&dir).with_context(|| format!("creating the pin directory {}", dir.display()))?;
        let state = state_dir(&dir);
        fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let lock = lock(&state)?.ok_or_else(|| {
            anyhow!(
                "another lb-agent holds the pins at {} (two agents on one host need a pin_path and an api_socket \
                 each)",
                dir.display()
            )
        })?;
        Ok(Self { dir, state, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pin of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The pin of `interface`'s link.
    pub fn link(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("{LINK_PREFIX}{interface}"))
    }

    /// The maps of `names::PINNED` that are pinned.
    pub fn pinned_maps(&self) -> Vec<&'static str> {
        names::PINNED.into_iter().filter(|name| self.map(name).exists()).collect()
    }

    /// The interfaces whose links are pinned.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        pinned_links(&self.dir)
    }

    fn state_file(&self) -> PathBuf {
        self.state.join("state.json")
    }

    /// The state the last agent saved, if any.
    pub fn load_state<D: DeserializeOwned>(&self) -> Result<Option<Saved<D>>> {
        let path = self.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let saved: Saved<D> = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        if saved.layout != LAYOUT {
            bail!("{} was saved by an agent of layout {}, not {LAYOUT}", path.display(), saved.layout);
        }
        Ok(Some(saved))
    }

    /// Saves `saved`, replacing the last state whole (temporary file, fsync, rename).
    pub fn save_state<D: Serialize>(&self, saved: &Saved<D>) -> Result<()> {
        let path = self.state_file();
        let temporary = self.state.join("state.json.new");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(&serde_json::to_vec(saved)?)?;
        file.sync_all()?;
        fs::rename(&temporary, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// Removes the maps' pins (left by an agent that stopped before it saved its
    /// state, with nothing attached: nothing uses them).
    pub fn remove_maps(&self) -> Result<()> {
        for name in self.pinned_maps() {
            let path = self.map(name);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    /// Checks that the maps pinned here are the ones `object` defines: the same kind,
    /// key, value, size and flags (the connection table's size may differ: it is kept).
    /// Either every map is pinned or none.
    pub fn check_layout(&self, object: &[u8]) -> Result<()> {
        let pinned = self.pinned_maps();
        if pinned.is_empty() {
            return Ok(());
        }
        let object = aya_obj::Object::parse(object).context("reading the eBPF object's maps")?;
        let mut differences = Vec::new();
        for name in names::PINNED {
            let Some(defined) = object.maps.get(name) else {
                bail!("the eBPF object has no map {name}");
            };
            if !pinned.contains(&name) {
                differences.push(format!("{name} is not pinned"));
                continue;
            }
            let info = MapInfo::from_pin(self.map(name)).with_context(|| format!("reading the pinned {name}"))?;
            let kind = info.map_type().map(|kind| kind as u32).unwrap_or(u32::MAX);
            let fields = [
                ("kind", kind, defined.map_type()),
                ("key size", info.key_size(), defined.key_size()),
                ("value size", info.value_size(), defined.value_size()),
                ("flags", info.map_flags(), defined.map_flags()),
                (
                    "size",
                    info.max_entries(),
                    if [names::CONNS, names::CONN_INDEX].contains(&name) {
                        info.max_entries()
                    } else {
                        defined.max_entries()
                    },
                ),
            ];
            differences.extend(
                fields
                    .iter()
                    .filter(|(_, pinned, ours)| pinned != ours)
                    .map(|(field, pinned, ours)| format!("{name}'s {field} is {pinned} where this agent's is {ours}")),
            );
        }
        if differences.is_empty() {
            return Ok(());
        }
        bail!(
            "the maps pinned at {} are not of this agent's layout ({}), though its version is the same ({LAYOUT}): \
             adopting them would corrupt them. Run the agent that pinned them, or take the director out of service \
             with `lb-agent --detach` (its connections are dropped) and start this one",
            self.dir.display(),
            differences.join("; ")
        )
    }
}

/// `pin_path`'s directory for this agent's layout.
fn layout_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(format!("layout-{LAYOUT}"))
}

/// Where the state of the pins in `dir` is saved.
fn state_dir(dir: &Path) -> PathBuf {
    Path::new(STATE_ROOT).join(dir.strip_prefix("/").unwrap_or(dir))
}

/// The layouts pinned under `pin_path`, with their directories.
fn layouts(pin_path: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let entries = match fs::read_dir(pin_path) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", pin_path.display())),
    };
    let mut layouts = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(version) = name.to_str().and_then(|name| name.strip_prefix("layout-")?.parse().ok()) {
            layouts.push((version, entry.path()));
        }
    }
    Ok(layouts)
}

fn refuse_other_layouts(pin_path: &Path) -> Result<()> {
    if let Some((version, dir)) = layouts(pin_path)?.into_iter().find(|(version, _)| *version != LAYOUT) {
        bail!(
            "{} holds the maps of an lb-agent of another layout ({version}; this one is of layout {LAYOUT}), which \
             this agent cannot adopt without corrupting them. Start the agent of layout {version} again, or take the \
             director out of service with `lb-agent --detach` (its connections are dropped) and start this one",
            dir.display()
        );
    }
    Ok(())
}

/// The interfaces whose links are pinned in `dir`.
fn pinned_links(dir: &Path) -> Result<Vec<String>> {
    let mut links = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if let Some(interface) = name.to_str().and_then(|name| name.strip_prefix(LINK_PREFIX)) {
            links.push(interface.to_owned());
        }
    }
    Ok(links)
}

/// Makes sure `pin_path` is on a BPF file system: mounts one at /sys/fs/bpf when
/// `pin_path` is under it and the host has not (as systemd and Cilium do).
fn ensure_bpf_fs(pin_path: &Path) -> Result<()> {
    if !pin_path.is_absolute() {
        bail!("pin_path {} is not an absolute path", pin_path.display());
    }
    let existing = pin_path.ancestors().find(|path| path.exists()).unwrap_or(Path::new("/"));
    if is_bpf_fs(existing)? {
        return Ok(());
    }
    let sys_fs_bpf = Path::new(SYS_FS_BPF);
    if pin_path.starts_with(sys_fs_bpf) && existing == sys_fs_bpf {
        mount_bpf_fs(sys_fs_bpf)?;
        if own_mount_namespace() {
            log::warn!(
                "mounted a BPF file system at {SYS_FS_BPF} in a mount namespace of the agent's own (systemd's \
                 PrivateTmp, ip netns exec): the pins end with it, so a restart cannot keep connections. Mount it \
                 on the host (fstab: bpf {SYS_FS_BPF} bpf defaults 0 0)"
            );
        } else {
            log::info!("mounted a BPF file system at {SYS_FS_BPF}");
        }
        return Ok(());
    }
    bail!(
        "pin_path {}: {} is not on a BPF file system (mount one: mount -t bpf bpf {})",
        pin_path.display(),
        existing.display(),
        existing.display()
    )
}

/// Whether this process has a mount namespace other than the host's (init's), as far
/// as it may tell (reading init's takes CAP_SYS_PTRACE).
fn own_mount_namespace() -> bool {
    let namespace = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt"));
    matches!((namespace("self"), namespace("1")), (Ok(own), Ok(host)) if own != host)
}

fn is_bpf_fs(path: &Path) -> Result<bool> {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a C string; the call writes only `stat`.
    if unsafe { libc::statfs(name.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type as u32 == BPF_FS_MAGIC)
}

fn mount_bpf_fs(path: &Path) -> Result<()> {
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let bpf = c"bpf";
    // SAFETY: C strings for source, target and type; no data.
    if unsafe { libc::mount(bpf.as_ptr(), target.as_ptr(), bpf.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting a BPF file system at {}", path.display()));
    }
    Ok(())
}

/// An exclusive `flock` on `dir`'s lock file; `None` if another process has it.
fn lock(dir: &Path) -> Result<Option<File>> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    Ok(Some(file))
}

/// `lb-agent --detach`: takes the director out of service. Every layout's links under
/// `pin_path` are removed (the program leaves each interface, whose receive VLAN
/// offload is turned back on if the agent had turned it off), then the maps' pins and
/// the saved state. Refused while an agent runs on these pins. Answers what it did.
pub fn detach(pin_path: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (_, dir) in layouts(pin_path)? {
        let state = state_dir(&dir);
        let _lock = if state.exists() {
            let held = lock(&state)?;
            if held.is_none() {
                bail!("an lb-agent runs on {}: stop it first (systemctl stop lb-agent)", dir.display());
            }
            held
        } else {
            None
        };
        let saved: Option<Saved<serde::de::IgnoredAny>> =
            fs::read_to_string(state.join("state.json")).ok().and_then(|text| serde_json::from_str(&text).ok());
        let attachments = saved.map(|saved| saved.attachments).unwrap_or_default();
        for interface in pinned_links(&dir)? {
            let path = dir.join(format!("{LINK_PREFIX}{interface}"));
            let link = PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            drop(link.unpin().with_context(|| format!("removing {}", path.display()))?);
            done.push(format!("detached lb_ingress from {interface}"));
            let restore = attachments.iter().any(|saved| saved.interface == interface && saved.restore_rx_vlan);
            if restore && let Err(err) = offload::set_rx_vlan_offload(&interface, true) {
                log::warn!("{interface}: turning the receive VLAN offload back on: {err}");
            }
        }
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        done.push(format!("removed the pinned maps at {}", dir.display()));
        if state.exists() {
            fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
        }
    }
    if pin_path.exists() && fs::read_dir(pin_path)?.next().is_none() {
        fs::remove_dir(pin_path).with_context(|| format!("removing {}", pin_path.display()))?;
    }
    Ok(done)
}
