//! The connection table's algorithm (`lb_common::conn::table`) over plain memory: what
//! the data path and the agent both rely on, checked without a kernel.

use std::cell::RefCell;

use lb_common::{
    FAMILY_IPV4, IPPROTO_TCP,
    conn::{
        Conn, FlowKey,
        table::{
            self, ConnEntry, ConnTableInfo, INDEX_SLOTS, IndexBucket, InsertError, POOL_CHUNK, PoolCursor, TableMemory,
        },
    },
};

/// A table in a test's memory: one side, one thread.
struct Memory {
    info: ConnTableInfo,
    index: RefCell<Vec<IndexBucket>>,
    pool: RefCell<Vec<ConnEntry>>,
    chunks: u64,
    cursor: PoolCursor,
    dropped: RefCell<Vec<u32>>,
}

impl Memory {
    fn new(entries: u32) -> Self {
        let info = ConnTableInfo::sized(entries, 0x5eed);
        let empty = ConnEntry { key: flow(0, 0), conn: conn(0, 0) };
        let empty = ConnEntry { key: FlowKey { family: 0, protocol: 0, ..empty.key }, ..empty };
        Self {
            info,
            index: RefCell::new(vec![[0; INDEX_SLOTS]; info.buckets as usize]),
            pool: RefCell::new(vec![empty; info.entries as usize]),
            chunks: 0,
            cursor: PoolCursor::default(),
            dropped: RefCell::default(),
        }
    }

    fn get(&self, key: &FlowKey) -> Option<Conn> {
        let number = table::find(self, key)?;
        Some(self.pool.borrow()[number as usize].conn)
    }

    fn held(&self) -> usize {
        self.pool.borrow().iter().filter(|entry| table::holds_flow(&entry.key)).count()
    }

    fn named(&self) -> usize {
        self.index.borrow().iter().flatten().filter(|&&slot| slot != 0).count()
    }
}

impl TableMemory for Memory {
    fn info(&self) -> &ConnTableInfo {
        &self.info
    }
    fn bucket(&self, index: u32) -> Option<*mut IndexBucket> {
        self.index.borrow_mut().get_mut(index as usize).map(|bucket| bucket as *mut _)
    }
    fn entry(&self, number: u32) -> Option<*mut ConnEntry> {
        self.pool.borrow_mut().get_mut(number as usize).map(|entry| entry as *mut _)
    }
    fn take_chunks(&mut self, value: u64) -> Option<u64> {
        self.chunks += value;
        Some(self.chunks - value)
    }
    fn cursor(&mut self) -> Option<*mut PoolCursor> {
        Some(&raw mut self.cursor)
    }
    unsafe fn load32(word: *const u32) -> u32 {
        unsafe { *word }
    }
    unsafe fn compare_exchange32(word: *mut u32, current: u32, new: u32) -> bool {
        unsafe {
            *word == current && {
                *word = new;
                true
            }
        }
    }
    fn dropped(&self, _: u8, conn: &Conn) {
        self.dropped.borrow_mut().push(conn.real);
    }
}

fn flow(client: u32, port: u16) -> FlowKey {
    let mut src = [0; 16];
    src[..4].copy_from_slice(&client.to_be_bytes());
    let mut dst = [0; 16];
    dst[..4].copy_from_slice(&[203, 0, 113, 10]);
    FlowKey {
        src,
        dst,
        src_port: port.to_be_bytes(),
        dst_port: 80u16.to_be_bytes(),
        protocol: IPPROTO_TCP,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

fn conn(real: u32, last_seen: u32) -> Conn {
    Conn::plain(real, 0, 0, 1, 1, last_seen)
}

#[test]
fn a_flow_is_found_until_removed_and_its_entry_is_used_again() {
    let mut memory = Memory::new(1024);
    let (a, b) = (flow(1, 1000), flow(1, 1001));
    table::insert(&mut memory, &a, &conn(7, 1), false).unwrap();
    assert_eq!(memory.get(&a).map(|conn| conn.real), Some(7));
    assert_eq!(memory.get(&b), None, "another flow");
    assert!(table::remove(&memory, &a));
    assert!(!table::remove(&memory, &a), "gone already");
    assert_eq!(memory.get(&a), None);
    assert_eq!((memory.held(), memory.named()), (0, 0), "entry and slot given back");
    table::insert(&mut memory, &b, &conn(8, 1), false).unwrap();
    assert_eq!(memory.get(&b).map(|conn| conn.real), Some(8));
}

#[test]
fn a_flow_inserted_again_replaces_its_entry_unless_only_a_new_one_is_asked_for() {
    let mut memory = Memory::new(1024);
    let a = flow(1, 1000);
    table::insert(&mut memory, &a, &conn(7, 1), false).unwrap();
    assert_eq!(table::insert(&mut memory, &a, &conn(8, 1), true), Err(InsertError::Exists));
    assert_eq!(memory.get(&a).map(|conn| conn.real), Some(7));
    table::insert(&mut memory, &a, &conn(9, 1), false).unwrap();
    assert_eq!(memory.get(&a).map(|conn| conn.real), Some(9));
    assert_eq!((memory.held(), memory.named()), (1, 1), "one entry, one slot");
    assert_eq!(*memory.dropped.borrow(), [7], "the replaced connection no longer counts");
}

#[test]
fn a_table_holds_as_many_flows_as_it_has_entries_and_then_the_oldest_give_way() {
    let mut memory = Memory::new(4096);
    let entries = memory.info.entries;
    let insert = |memory: &mut Memory, flows: std::ops::Range<u32>| {
        for i in flows {
            table::insert(memory, &flow(i, 1), &conn(1, i), false).unwrap();
        }
    };
    // Half full, as the agent's size is meant for: no bucket overflowed.
    insert(&mut memory, 0..entries / 2);
    let half = (0..entries / 2).filter(|&i| memory.get(&flow(i, 1)).is_some()).count();
    assert_eq!(half as u32, entries / 2, "every flow of a half-full table found");
    insert(&mut memory, entries / 2..entries);
    let found = (0..entries).filter(|&i| memory.get(&flow(i, 1)).is_some()).count();
    // A bucket that overflows makes a flow give way: at a full table, a few in a
    // thousand inserts.
    assert!(found as u32 >= entries - entries / 256, "{found} of {entries} found");
    assert_eq!(memory.held(), memory.named(), "every entry held is named once");

    // The pool is full: a new flow takes the place of the least recently seen of the
    // entries its claim looks at (the oldest, as the pool hands them out in order).
    let old = flow(0, 1);
    table::insert(&mut memory, &flow(entries, 2), &conn(2, entries), false).unwrap();
    assert_eq!(memory.get(&flow(entries, 2)).map(|conn| conn.real), Some(2));
    assert_eq!(memory.get(&old), None, "the oldest gave way");
    assert_eq!(memory.held(), memory.named());
    assert!(memory.held() as u32 <= entries);
}

#[test]
fn the_pool_skips_entries_still_in_use_when_it_comes_round() {
    let mut memory = Memory::new(1024);
    let entries = memory.info.entries;
    for i in 0..entries {
        table::insert(&mut memory, &flow(i, 1), &conn(1, i), false).unwrap();
    }
    // Three connections in four end; the rest stay (those the full table kept).
    for i in (0..entries).filter(|i| i % 4 != 0) {
        table::remove(&memory, &flow(i, 1));
    }
    let staying: Vec<u32> = (0..entries).step_by(4).filter(|&i| memory.get(&flow(i, 1)).is_some()).collect();
    memory.dropped.borrow_mut().clear();
    for i in 0..entries / 2 {
        table::insert(&mut memory, &flow(i, 2), &conn(2, entries + i), false).unwrap();
    }
    assert!(memory.dropped.borrow().is_empty(), "no live connection gave way: {:?}", memory.dropped.borrow());
    assert!(staying.iter().all(|&i| memory.get(&flow(i, 1)).is_some()), "the others stayed");
    assert!((0..entries / 2).all(|i| memory.get(&flow(i, 2)).is_some()));
    assert_eq!(memory.held(), memory.named());
}

#[test]
fn a_full_bucket_gives_one_slot_away_and_its_connection_no_longer_counts() {
    let mut memory = Memory::new(POOL_CHUNK * 64);
    // Flows until one bucket has held more than its slots.
    let bucket_of = |memory: &Memory, key: &FlowKey| {
        let hash = table::flow_hash(key, memory.info.seed);
        ((hash >> 32) * u64::from(memory.info.buckets)) >> 32
    };
    let target = bucket_of(&memory, &flow(0, 0));
    let same: Vec<FlowKey> =
        (0..).map(|port| flow(0, port)).filter(|key| bucket_of(&memory, key) == target).take(INDEX_SLOTS + 1).collect();
    for (i, key) in same.iter().enumerate() {
        table::insert(&mut memory, key, &conn(i as u32, 1), false).unwrap();
    }
    let found = same.iter().filter(|key| memory.get(key).is_some()).count();
    assert_eq!(found, INDEX_SLOTS, "the bucket holds its slots' worth");
    assert!(memory.get(same.last().unwrap()).is_some(), "the newest is in");
    assert_eq!(memory.dropped.borrow().len(), 1, "the one pushed out no longer counts");
    assert_eq!(memory.held(), memory.named(), "its entry went back to the pool");
}

#[test]
fn the_hash_depends_on_every_word_of_the_key_and_on_the_seed() {
    let key = flow(1, 1000);
    let hash = table::flow_hash(&key, 1);
    assert_ne!(hash, table::flow_hash(&key, 2));
    let words: [u32; 10] = unsafe { std::mem::transmute(key) };
    for word in 0..10 {
        let mut changed = words;
        changed[word] ^= 1;
        let changed: FlowKey = unsafe { std::mem::transmute(changed) };
        assert_ne!(hash, table::flow_hash(&changed, 1), "word {word}");
    }
}
