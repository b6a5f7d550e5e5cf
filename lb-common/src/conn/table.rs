//! The connection table's layout and its algorithm, the same for the data path and
//! the agent (each gives it its memory and atomic operations, [`TableMemory`]).
//!
//! A pool of entries (`CONNS`: flow and connection), handed out in order: a CPU takes
//! a chunk of [`POOL_CHUNK`] entries at a time, so new flows write where the last
//! ones wrote. An index over it (`CONN_INDEX`): per bucket, one cache line of
//! [`INDEX_SLOTS`] slots, each a flow's signature and entry number. A new flow thus
//! touches one random line (its bucket, which a lookup that misses reads anyway), and
//! an established one that line and its entry. IPVS chains entries in a hash table,
//! and the kernel's LRU hash, which this replaces, walks a chain of elements spread
//! over the whole table and keeps lists of them: two or three lines that are cold.
//!
//! Sharing: a slot and an entry's state word change only by compare-and-swap. An
//! entry is claimed (`FREE` to `CLAIMED`), written, and then published by writing its
//! slot; it is unpublished (its slot emptied) before it is freed, so an entry is
//! reused only once no slot names it. A reader that found an entry just before it was
//! reused compares the whole key, state word included, and sees another flow or a
//! claimed entry: a miss, as when the kernel's LRU reuses an element at once.

use super::{Conn, FlowKey};

/// Slots of an index bucket: one cache line.
pub const INDEX_SLOTS: usize = 16;
/// An index bucket: per slot, the flow's signature in the high bits and its entry
/// number + 1 in the low bits ([`ConnTableInfo::number_mask`]), or 0 when empty.
pub type IndexBucket = [u32; INDEX_SLOTS];
/// Index slots per entry of the pool: a full pool fills the index, so that a bucket
/// overflows (and a connection gives way) once in some hundreds of inserts then, and
/// practically never at the half-full table the agent's size is meant for. Few slots
/// keep the index small (8 bytes an entry): one random line of it is a new flow's
/// dearest read, and it costs the less the more of the index the caches and the TLB
/// hold.
const SLOTS_PER_ENTRY: u32 = 2;
/// Entries a CPU (or the agent) takes from the pool at a time: one shared counter
/// moves once per chunk, not once per flow.
pub const POOL_CHUNK: u32 = 64;
/// Entries a new flow looks at for a free one; when all are in use, the least
/// recently seen of them gives way (a CLOCK's hand: the pool's order is the order
/// connections opened in, so the entries met are the oldest ones).
const PROBES: usize = 8;

/// An entry's state word (its key's last four bytes: protocol, family, padding) when
/// no flow holds it.
const FREE: u32 = 0;
/// The state word of an entry being written or removed by whoever claimed it: a family
/// no flow has, so no lookup matches it.
const CLAIMED: u32 = 0xff << 8;
/// The state word's place among the key's ten words.
const STATE_WORD: usize = 9;

/// One entry of the pool: a flow and what the director remembers of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEntry {
    pub key: FlowKey,
    pub conn: Conn,
}

/// The table's geometry and hash key (`CONN_TABLE_INFO`), written by the agent that
/// made the table, before any program runs, and never changed while it lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnTableInfo {
    /// The hash's key, secret, so nobody can aim flows at one bucket to push
    /// connections out.
    pub seed: u64,
    /// Buckets of `CONN_INDEX`.
    pub buckets: u32,
    /// Entries of `CONNS`, a multiple of [`POOL_CHUNK`].
    pub entries: u32,
    /// The low bits of a slot that hold an entry's number + 1 (enough for `entries`),
    /// set; the signature has the others.
    pub number_mask: u32,
    pub _pad: u32,
}

/// A CPU's (or an agent handle's) place in the pool: the next entry of its chunk, and
/// where the chunk ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCursor {
    pub next: u32,
    pub end: u32,
}

impl ConnTableInfo {
    /// The geometry of a table of (at least) `entries` entries, keyed with `seed`.
    pub const fn sized(entries: u32, seed: u64) -> Self {
        let entries = entries.div_ceil(POOL_CHUNK) * POOL_CHUNK;
        let buckets = (entries / INDEX_SLOTS as u32) * SLOTS_PER_ENTRY;
        let number_mask = match u32::MAX.checked_shr(entries.leading_zeros()) {
            Some(mask) => mask,
            None => 0,
        };
        Self { seed, buckets, entries, number_mask, _pad: 0 }
    }
}

/// Where one side keeps the table, and its atomic operations on it.
pub trait TableMemory {
    fn info(&self) -> &ConnTableInfo;
    /// Bucket `index` of the index, if within it.
    fn bucket(&self, index: u32) -> Option<*mut IndexBucket>;
    /// Entry `number` of the pool, if within it.
    fn entry(&self, number: u32) -> Option<*mut ConnEntry>;
    /// Adds `value` to the pool's shared chunk counter; answers what it held.
    fn take_chunks(&mut self, value: u64) -> Option<u64>;
    /// This side's cursor in the pool.
    fn cursor(&mut self) -> Option<*mut PoolCursor>;
    /// # Safety
    /// `word` is a slot of a bucket, or the state word of an entry, this side answered.
    unsafe fn load32(word: *const u32) -> u32;
    /// `*word = new` if it holds `current`, atomically, with a full barrier; answers
    /// whether it did.
    ///
    /// # Safety
    /// As [`TableMemory::load32`].
    unsafe fn compare_exchange32(word: *mut u32, current: u32, new: u32) -> bool;
    /// A connection that gave way to another (a full pool or bucket), or that an
    /// insert of its own flow replaced, no longer counts for its real server.
    fn dropped(&self, protocol: u8, conn: &Conn);
}

/// Why an insert did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The flow has an entry already, and only a new one was asked for.
    Exists,
    /// No entry could be claimed (others claimed those looked at), or the bucket's
    /// slot changed under the insert.
    Busy,
}

/// The hash of a flow in a table keyed with `seed`: the bucket is taken from the high
/// half, the signature from the low.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u64) -> u64 {
    let words = words(key);
    let mut hash = seed;
    let mut i = 0;
    while i < 10 {
        let word = u64::from(words[i]) | (u64::from(words[i + 1]) << 32);
        hash = (hash ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        hash ^= hash >> 29;
        i += 2;
    }
    // MurmurHash3's finaliser: every bit of the key reaches both halves.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The entry number of `flow`, if the table holds it.
#[inline(always)]
pub fn find<M: TableMemory>(memory: &M, flow: &FlowKey) -> Option<u32> {
    let place = place(memory, flow)?;
    find_in(memory, &place, flow).map(|(_, _, number)| number)
}

/// Writes the entry of `flow`: a new one, or one that replaces the flow's own
/// (refused when `only_new`).
#[inline(always)]
pub fn insert<M: TableMemory>(memory: &mut M, flow: &FlowKey, conn: &Conn, only_new: bool) -> Result<(), InsertError> {
    let number = claim(memory).ok_or(InsertError::Busy)?;
    publish(memory, flow, conn, number, only_new)
}

/// Writes `flow`'s entry into entry `number`, which this side [`claim`]ed, and names it
/// in the index: in place of the flow's own entry (refused when `only_new`), else in
/// an empty slot, else in place of another flow's, which gives way. An entry not
/// published goes back to the pool.
#[inline(always)]
pub fn publish<M: TableMemory>(
    memory: &M,
    flow: &FlowKey,
    conn: &Conn,
    number: u32,
    only_new: bool,
) -> Result<(), InsertError> {
    let entry = memory.entry(number).ok_or(InsertError::Busy)?;
    let Some(place) = place(memory, flow) else {
        release::<M>(entry, CLAIMED);
        return Err(InsertError::Busy);
    };
    let own = find_in(memory, &place, flow);
    if own.is_some() && only_new {
        release::<M>(entry, CLAIMED);
        return Err(InsertError::Exists);
    }
    write(entry, flow, conn);
    let (slot, was) = match own {
        Some((slot, word, _)) => (slot, word),
        None => vacancy::<M>(&place),
    };
    let tagged = place.named(number);
    // SAFETY: `slot` is below INDEX_SLOTS, within the bucket.
    if !unsafe { M::compare_exchange32(&raw mut (*place.bucket)[slot % INDEX_SLOTS], was, tagged) } {
        release::<M>(entry, state_word(flow));
        return Err(InsertError::Busy);
    }
    if was != 0 {
        drop_entry(memory, place.number(was));
    }
    Ok(())
}

/// Removes the entry of `flow`; answers whether there was one (another removal, or an
/// eviction, may have come first).
#[inline(always)]
pub fn remove<M: TableMemory>(memory: &M, flow: &FlowKey) -> bool {
    let Some(place) = place(memory, flow) else { return false };
    let Some((slot, word, number)) = find_in(memory, &place, flow) else { return false };
    // SAFETY: `slot` is below INDEX_SLOTS, within the bucket.
    if !unsafe { M::compare_exchange32(&raw mut (*place.bucket)[slot % INDEX_SLOTS], word, 0) } {
        return false;
    }
    if let Some(entry) = memory.entry(number) {
        release::<M>(entry, state_word(flow));
    }
    true
}

/// Whether `key` is a flow's (not a free or claimed entry's).
#[inline(always)]
pub fn holds_flow(key: &FlowKey) -> bool {
    !matches!(state_word(key), FREE | CLAIMED)
}

/// A flow's bucket and signature (the high bits of a slot), and which bits of a slot
/// hold an entry's number.
struct Place {
    bucket: *mut IndexBucket,
    signature: u32,
    number_mask: u32,
}

impl Place {
    /// What a slot holds that names entry `number` for the flow.
    #[inline(always)]
    fn named(&self, number: u32) -> u32 {
        self.signature | (number + 1)
    }

    /// The entry a slot's `word` names.
    #[inline(always)]
    fn number(&self, word: u32) -> u32 {
        (word & self.number_mask).wrapping_sub(1)
    }
}

#[inline(always)]
fn place<M: TableMemory>(memory: &M, flow: &FlowKey) -> Option<Place> {
    let info = memory.info();
    let hash = flow_hash(flow, info.seed);
    // Lemire's multiply-shift: any number of buckets, no division.
    let index = ((hash >> 32) * u64::from(info.buckets)) >> 32;
    let number_mask = info.number_mask;
    Some(Place { bucket: memory.bucket(index as u32)?, signature: hash as u32 & !number_mask, number_mask })
}

/// The slot that names `flow`'s entry: its number, and what the slot holds.
#[inline(always)]
fn find_in<M: TableMemory>(memory: &M, place: &Place, flow: &FlowKey) -> Option<(usize, u32, u32)> {
    for slot in 0..INDEX_SLOTS {
        // SAFETY: within the bucket.
        let word = unsafe { M::load32(&raw const (*place.bucket)[slot]) };
        if word & !place.number_mask != place.signature || word == 0 {
            continue;
        }
        let number = place.number(word);
        let Some(entry) = memory.entry(number) else { continue };
        // SAFETY: an entry of the pool; a concurrent writer makes it another flow's or
        // claimed, which the comparison tells.
        if same_flow(unsafe { &(*entry).key }, flow) {
            return Some((slot, word, number));
        }
    }
    None
}

/// An empty slot of the bucket, else one whose connection gives way (by the
/// signature's top bits, so not always the same one): the slot and what it holds.
#[inline(always)]
fn vacancy<M: TableMemory>(place: &Place) -> (usize, u32) {
    for slot in 0..INDEX_SLOTS {
        // SAFETY: within the bucket.
        let word = unsafe { M::load32(&raw const (*place.bucket)[slot]) };
        if word == 0 {
            return (slot, 0);
        }
    }
    let slot = (place.signature >> 28) as usize % INDEX_SLOTS;
    // SAFETY: within the bucket.
    (slot, unsafe { M::load32(&raw const (*place.bucket)[slot]) })
}

/// Claims an entry for a new flow: the first free one of the next few the cursor
/// hands out, else the least recently seen of them, which gives way.
#[inline(always)]
pub fn claim<M: TableMemory>(memory: &mut M) -> Option<u32> {
    let mut oldest: Option<(u32, u32)> = None;
    for _ in 0..PROBES {
        let number = next_entry(memory)?;
        let entry = memory.entry(number)?;
        let word = state_word_of::<M>(entry);
        // SAFETY: the state word of an entry of the pool.
        if word == FREE && unsafe { M::compare_exchange32(state_word_ptr(entry), FREE, CLAIMED) } {
            return Some(number);
        }
        if word == FREE || word == CLAIMED {
            continue;
        }
        // SAFETY: an entry of the pool.
        let seen = unsafe { (*entry).conn.last_seen };
        if oldest.is_none_or(|(_, then)| seen < then) {
            oldest = Some((number, seen));
        }
    }
    let (number, _) = oldest?;
    evict(memory, number).then_some(number)
}

/// The next entry of this side's chunk of the pool, taking a new chunk when it is used up.
#[inline(always)]
fn next_entry<M: TableMemory>(memory: &mut M) -> Option<u32> {
    let entries = memory.info().entries;
    let cursor = memory.cursor()?;
    // SAFETY: this side's own cursor, which nobody else writes.
    unsafe {
        if (*cursor).next >= (*cursor).end {
            let taken = memory.take_chunks(u64::from(POOL_CHUNK))?;
            let start = (taken % u64::from(entries.max(POOL_CHUNK))) as u32;
            (*cursor).next = start;
            (*cursor).end = start + POOL_CHUNK;
        }
        let number = (*cursor).next;
        (*cursor).next = number + 1;
        Some(number)
    }
}

/// Claims the live entry `number` and takes its slot away: its connection gives way.
#[inline(always)]
fn evict<M: TableMemory>(memory: &M, number: u32) -> bool {
    let Some(entry) = memory.entry(number) else { return false };
    // SAFETY: an entry of the pool, hashed before the claim changes its state word (a
    // flow that took it meanwhile keeps a slot that names it, and finds another flow
    // there: it is evicted instead).
    let key = unsafe { &(*entry).key };
    let place = place(memory, key);
    let word = state_word(key);
    let protocol = key.protocol;
    // SAFETY: the state word of an entry of the pool.
    if !holds_flow(key) || !unsafe { M::compare_exchange32(state_word_ptr(entry), word, CLAIMED) } {
        return false;
    }
    if let Some(place) = place {
        let tagged = place.named(number);
        for slot in 0..INDEX_SLOTS {
            // SAFETY: within the bucket.
            let slot = unsafe { &raw mut (*place.bucket)[slot] };
            // SAFETY: a slot of the bucket.
            unsafe {
                if M::load32(slot) == tagged {
                    M::compare_exchange32(slot, tagged, 0);
                }
            }
        }
    }
    // SAFETY: claimed: nobody else writes it.
    memory.dropped(protocol, unsafe { &(*entry).conn });
    true
}

/// Frees entry `number`, whose slot another flow's entry took (or its own flow's new
/// one): its connection no longer counts.
#[inline(always)]
fn drop_entry<M: TableMemory>(memory: &M, number: u32) {
    let Some(entry) = memory.entry(number) else { return };
    let word = state_word_of::<M>(entry);
    // SAFETY: the state word of an entry of the pool; claimed, nobody else writes it.
    if word != FREE && word != CLAIMED && unsafe { M::compare_exchange32(state_word_ptr(entry), word, CLAIMED) } {
        unsafe {
            memory.dropped(word as u8, &(*entry).conn);
            release::<M>(entry, CLAIMED);
        }
    }
}

/// Gives entry `entry`, whose state word is `word`, back to the pool.
#[inline(always)]
fn release<M: TableMemory>(entry: *mut ConnEntry, word: u32) {
    // SAFETY: the state word of an entry of the pool.
    unsafe { M::compare_exchange32(state_word_ptr(entry), word, FREE) };
}

/// Writes a claimed entry: the connection, then the key, its state word last (until
/// then the entry stays claimed, and no lookup takes it for a flow's).
#[inline(always)]
fn write(entry: *mut ConnEntry, flow: &FlowKey, conn: &Conn) {
    let words = words(flow);
    // SAFETY: an entry this side claimed: nobody else writes it.
    unsafe {
        (*entry).conn = *conn;
        let key = (&raw mut (*entry).key).cast::<u32>();
        for (i, word) in words[..STATE_WORD].iter().enumerate() {
            core::ptr::write_volatile(key.add(i), *word);
        }
        core::ptr::write_volatile(key.add(STATE_WORD), words[STATE_WORD]);
    }
}

#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (words(a), words(b));
    let mut differ = 0;
    for i in 0..10 {
        differ |= a[i] ^ b[i];
    }
    differ == 0
}

#[inline(always)]
fn words(key: &FlowKey) -> &[u32; 10] {
    // SAFETY: a `FlowKey` is 40 bytes without padding, aligned to 4: ten words.
    unsafe { &*(key as *const FlowKey).cast::<[u32; 10]>() }
}

#[inline(always)]
fn state_word(key: &FlowKey) -> u32 {
    words(key)[STATE_WORD]
}

#[inline(always)]
fn state_word_of<M: TableMemory>(entry: *mut ConnEntry) -> u32 {
    // SAFETY: the state word of an entry of the pool.
    unsafe { M::load32(state_word_ptr(entry)) }
}

/// The state word of `entry`, which both sides change only atomically.
///
/// # Safety
/// `entry` points into the pool.
#[inline(always)]
pub unsafe fn state_word_ptr(entry: *mut ConnEntry) -> *mut u32 {
    unsafe { (&raw mut (*entry).key).cast::<u32>().add(STATE_WORD) }
}

const _: () = assert!(core::mem::size_of::<ConnEntry>() == 96);
const _: () = assert!(core::mem::size_of::<ConnTableInfo>() == 24);
const _: () = assert!(core::mem::size_of::<IndexBucket>() == 64);
