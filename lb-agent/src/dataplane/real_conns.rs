//! `REAL_CONNS` mapped into the agent's memory: each real server's active and inactive
//! connections, which the data path changes with atomic adds as packets pass. The agent
//! changes them the same way (a map update would overwrite what a CPU adds meanwhile).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicI64, Ordering},
};

use anyhow::{Result, bail};
use aya::maps::MapData;
use lb_common::{MAX_REALS, state::ConnCounts};

pub struct RealConns {
    counts: NonNull<AtomicI64>,
    len: usize,
}

// SAFETY: the mapping is shared memory used only through atomics.
unsafe impl Send for RealConns {}
unsafe impl Sync for RealConns {}

/// Two counters per real server: active, then inactive.
const PER_REAL: usize = size_of::<ConnCounts>() / size_of::<i64>();

impl RealConns {
    /// Maps `data`, an array of `MAX_REALS` [`ConnCounts`] made with `BPF_F_MMAPABLE`.
    pub fn map(data: &MapData) -> Result<Self> {
        let len = MAX_REALS as usize * PER_REAL;
        let bytes = len * size_of::<i64>();
        // SAFETY: a shared mapping of the map's own memory, of its size; the kernel
        // refuses one the map does not allow.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            bail!("mapping REAL_CONNS into memory: {}", std::io::Error::last_os_error());
        }
        let counts = NonNull::new(address.cast()).expect("mmap answered a mapping");
        Ok(Self { counts, len })
    }

    fn counter(&self, index: usize) -> &AtomicI64 {
        assert!(index < self.len, "real server id out of range");
        // SAFETY: within the mapping, aligned (the kernel maps pages), shared only
        // through atomic operations.
        unsafe { self.counts.add(index).as_ref() }
    }

    /// Real server `id`'s counts as they are now.
    pub fn get(&self, id: u32) -> ConnCounts {
        let at = id as usize * PER_REAL;
        ConnCounts {
            active: self.counter(at).load(Ordering::Relaxed),
            inactive: self.counter(at + 1).load(Ordering::Relaxed),
        }
    }

    /// Every real server's counts, by id.
    pub fn all(&self) -> Vec<ConnCounts> {
        (0..MAX_REALS).map(|id| self.get(id)).collect()
    }

    /// Adds `change` to real server `id`'s counts.
    pub fn add(&self, id: u32, change: ConnCounts) {
        let at = id as usize * PER_REAL;
        if change.active != 0 {
            self.counter(at).fetch_add(change.active, Ordering::Relaxed);
        }
        if change.inactive != 0 {
            self.counter(at + 1).fetch_add(change.inactive, Ordering::Relaxed);
        }
    }
}

impl Drop for RealConns {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.counts.as_ptr().cast(), self.len * size_of::<i64>()) };
    }
}
