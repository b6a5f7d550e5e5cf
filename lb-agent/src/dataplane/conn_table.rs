//! The connection table (`CONNS` and its index `CONN_INDEX`) mapped into the agent's
//! memory: walked in place, and changed with the same algorithm and atomic operations
//! as the data path's (`lb_common::conn::table`).

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, MapData};
use lb_common::{
    conn::{
        Conn, FlowKey,
        table::{self, ConnEntry, ConnTableInfo, IndexBucket, InsertError, PoolCursor, TableMemory},
    },
    names,
};

use super::mapped::Mapped;

/// A handle on the table. Clones share the mappings; each has its own place in the
/// pool for the entries it inserts.
#[derive(Clone)]
pub struct ConnTable {
    maps: Arc<Maps>,
    info: ConnTableInfo,
    cursor: PoolCursor,
}

struct Maps {
    pool: Mapped<ConnEntry>,
    index: Mapped<IndexBucket>,
    chunks: Mapped<u64>,
}

/// The maps the table is made of, as loaded.
pub struct TableMaps<'a> {
    pub pool: &'a MapData,
    pub index: &'a MapData,
    pub chunks: &'a MapData,
    pub info: &'a mut Array<MapData, ConnTableInfo>,
}

impl ConnTable {
    /// Maps the table into memory. A table just made (its `CONN_TABLE_INFO` empty)
    /// gets the geometry of `entries` entries and a random hash key; an adopted one
    /// keeps its own, which must be that of its maps.
    pub fn map(maps: TableMaps, entries: u32) -> Result<Self> {
        let mut info = maps.info.get(&0, 0).context("reading CONN_TABLE_INFO")?;
        if info.entries == 0 {
            info = ConnTableInfo::sized(entries, random_seed()?);
            maps.info.set(0, info, 0).context("writing CONN_TABLE_INFO")?;
        }
        for (name, data, len) in
            [(names::CONNS, maps.pool, info.entries), (names::CONN_INDEX, maps.index, info.buckets)]
        {
            let size = data.info().with_context(|| format!("reading {name}'s size"))?.max_entries();
            if size != len {
                bail!("{name} holds {size} entries where CONN_TABLE_INFO says {len}: the maps do not belong together");
            }
        }
        let maps = Maps {
            pool: Mapped::map(maps.pool, names::CONNS, info.entries as usize)?,
            index: Mapped::map(maps.index, names::CONN_INDEX, info.buckets as usize)?,
            chunks: Mapped::map(maps.chunks, names::CONN_CHUNKS, 1)?,
        };
        Ok(Self { maps: Arc::new(maps), info, cursor: PoolCursor::default() })
    }

    /// Entries the table has room for (a NAT or Full-NAT connection takes two).
    pub fn capacity(&self) -> u32 {
        self.info.entries
    }

    /// Calls `visit` with every entry; answers how many there were.
    pub fn walk(&self, mut visit: impl FnMut(&FlowKey, &Conn)) -> Result<u64> {
        let mut seen = 0;
        for number in 0..self.maps.pool.len() {
            if let Some(entry) = self.read(number) {
                seen += 1;
                visit(&entry.key, &entry.conn);
            }
        }
        Ok(seen)
    }

    /// The entry of `key`, as it is now.
    pub fn get(&self, key: &FlowKey) -> Result<Option<Conn>> {
        let entry = table::find(self, key).and_then(|number| self.read(number as usize));
        Ok(entry.filter(|entry| entry.key == *key).map(|entry| entry.conn))
    }

    /// Writes the entry of `key`, new or not.
    pub fn insert(&mut self, key: &FlowKey, conn: &Conn) -> Result<()> {
        match table::insert(self, key, conn, false) {
            Ok(()) => Ok(()),
            Err(InsertError::Exists | InsertError::Busy) => {
                bail!("writing {}: the entries looked at were all being written by others", names::CONNS)
            }
        }
    }

    /// Removes the entry of `key`; answers false when it was gone already (the data
    /// path removed it, or gave its entry to another flow).
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool> {
        Ok(table::remove(self, key))
    }

    /// A copy of entry `number`, if it holds a flow that stayed the same while it was
    /// read (its state word is claimed before anything else in it changes).
    fn read(&self, number: usize) -> Option<ConnEntry> {
        let entry = self.maps.pool.at(number);
        let word = state_word(entry);
        let before = word.load(Ordering::Acquire);
        // SAFETY: within the mapping; a plain copy, which a writer may tear: the state
        // word read after tells.
        let copy = unsafe { std::ptr::read_volatile(entry) };
        fence(Ordering::Acquire);
        (word.load(Ordering::Relaxed) == before && table::holds_flow(&copy.key)).then_some(copy)
    }
}

impl TableMemory for ConnTable {
    fn info(&self) -> &ConnTableInfo {
        &self.info
    }

    fn bucket(&self, index: u32) -> Option<*mut IndexBucket> {
        self.maps.index.get(index as usize)
    }

    fn entry(&self, number: u32) -> Option<*mut ConnEntry> {
        self.maps.pool.get(number as usize)
    }

    fn take_chunks(&mut self, value: u64) -> Option<u64> {
        // SAFETY: the mapped counter, aligned, shared only through atomics.
        Some(unsafe { AtomicU64::from_ptr(self.maps.chunks.at(0)) }.fetch_add(value, Ordering::Relaxed))
    }

    fn cursor(&mut self) -> Option<*mut PoolCursor> {
        Some(&raw mut self.cursor)
    }

    unsafe fn load32(word: *const u32) -> u32 {
        // SAFETY: a word of the mapping, aligned, which both sides change atomically.
        unsafe { AtomicU32::from_ptr(word.cast_mut()) }.load(Ordering::Acquire)
    }

    unsafe fn compare_exchange32(word: *mut u32, current: u32, new: u32) -> bool {
        // SAFETY: as `load32`.
        unsafe { AtomicU32::from_ptr(word) }.compare_exchange(current, new, Ordering::SeqCst, Ordering::Relaxed).is_ok()
    }

    /// The ager's next walk takes the connection out of its real server's counts, as
    /// it does for every connection the table no longer holds.
    fn dropped(&self, _: u8, _: &Conn) {}
}

/// The state word of `entry` (its key's last four bytes), as an atomic.
fn state_word<'a>(entry: *mut ConnEntry) -> &'a AtomicU32 {
    // SAFETY: within the mapping, aligned to 4; both sides change it atomically.
    unsafe { AtomicU32::from_ptr(table::state_word_ptr(entry)) }
}

/// A key for the table's hash that nobody outside can guess.
fn random_seed() -> Result<u64> {
    let mut seed = [0u8; 8];
    // SAFETY: writes at most the buffer's length into it.
    let read = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if read != seed.len() as isize {
        bail!("getrandom: {}", std::io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(seed))
}
