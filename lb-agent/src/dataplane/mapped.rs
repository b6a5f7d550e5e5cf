//! An array map made with `BPF_F_MMAPABLE`, mapped into the agent's memory: the same
//! memory the data path reads and writes as packets pass.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{Result, bail};
use aya::maps::MapData;

/// `len` values of `T` at `start`, unmapped when dropped.
pub struct Mapped<T> {
    start: NonNull<T>,
    len: usize,
}

// SAFETY: shared memory; its users reach it through atomics or check what they copy.
unsafe impl<T> Send for Mapped<T> {}
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
    /// Maps `len` values of the array map `data` (called `name`).
    pub fn map(data: &MapData, name: &str, len: usize) -> Result<Self> {
        // SAFETY: a shared mapping of the map's own memory, of at most its size; the
        // kernel refuses one the map does not allow.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::bytes(len),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            bail!("mapping {name} into memory: {}", std::io::Error::last_os_error());
        }
        Ok(Self { start: NonNull::new(address.cast()).expect("mmap answered a mapping"), len })
    }

    /// Value `index`, which must be within the mapping.
    pub fn at(&self, index: usize) -> *mut T {
        assert!(index < self.len, "value {index} of a mapping of {}", self.len);
        // SAFETY: within the mapping.
        unsafe { self.start.as_ptr().add(index) }
    }

    /// Value `index`, if within the mapping.
    pub fn get(&self, index: usize) -> Option<*mut T> {
        (index < self.len).then(|| self.at(index))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn bytes(len: usize) -> usize {
        len * size_of::<T>()
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.start.as_ptr().cast(), Self::bytes(self.len)) };
    }
}
