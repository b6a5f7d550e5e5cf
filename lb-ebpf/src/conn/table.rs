//! The connection table in the data path's maps (`CONNS`, `CONN_INDEX`; the layout
//! and algorithm are `lb_common::conn::table`'s). Finding, inserting and removing are
//! BPF global functions: the verifier checks each once, not at every place a packet's
//! path calls it.

use lb_common::{
    conn::{
        Conn, FlowKey,
        table::{self, ConnEntry, ConnTableInfo, IndexBucket, PoolCursor, TableMemory},
    },
    state,
    stats::Reason,
};

use crate::{
    atomic,
    maps::{CONN_CHUNKS, CONN_CURSOR, CONN_INDEX, CONN_TABLE_INFO, CONNS},
};

/// The entry of a known flow (its packets refresh it in place).
#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Option<&'static mut Conn> {
    let number = u32::try_from(lb_conn_find(flow)).ok()?;
    let entry = CONNS.get_ptr_mut(number)?;
    // SAFETY: a map value, valid for the program's run; only this packet's run writes
    // these fields through this reference (a reused entry is another flow's: as with
    // the kernel's LRU hash, a packet racing its connection's removal may write it).
    Some(unsafe { &mut (*entry).conn })
}

/// Remembers a flow. `only_new` refuses a key that is already there (a Full-NAT local
/// port in use).
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &Conn, only_new: bool) -> Result<(), Reason> {
    // Two calls, not one: each has a frame of its own on the stack, not both at once.
    let number = lb_conn_claim();
    if number == u64::MAX || lb_conn_publish(flow, conn, number as u32, u32::from(only_new)) == 0 {
        return Err(Reason::ConnInsertFailed);
    }
    Ok(())
}

#[inline(always)]
pub fn remove(flow: &FlowKey) {
    lb_conn_remove(flow);
}

/// The entry number of `flow`, or more than any number when the table does not hold it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_conn_find(flow: *const FlowKey) -> u64 {
    // SAFETY: the verifier checks that the caller passes a whole `FlowKey`.
    let (Some(flow), Some(memory)) = (unsafe { flow.as_ref() }, DataPath::new()) else { return u64::MAX };
    table::find(&memory, flow).map_or(u64::MAX, u64::from)
}

/// An entry of the pool for a new flow, or more than any number when none was free.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_conn_claim() -> u64 {
    let Some(mut memory) = DataPath::new() else { return u64::MAX };
    table::claim(&mut memory).map_or(u64::MAX, u64::from)
}

/// Writes the flow into entry `number`, claimed by [`lb_conn_claim`]: answers 1 when
/// the flow is in the table, 0 when not (and the entry went back to the pool).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_conn_publish(flow: *const FlowKey, conn: *const Conn, number: u32, only_new: u32) -> u32 {
    // SAFETY: the verifier checks that the caller passes a whole key and connection.
    let (Some(flow), Some(conn), Some(memory)) = (unsafe { flow.as_ref() }, unsafe { conn.as_ref() }, DataPath::new())
    else {
        return 0;
    };
    u32::from(table::publish(&memory, flow, conn, number, only_new != 0).is_ok())
}

/// [`remove`]: answers 1 when there was an entry.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_conn_remove(flow: *const FlowKey) -> u32 {
    // SAFETY: the verifier checks that the caller passes a whole `FlowKey`.
    let (Some(flow), Some(memory)) = (unsafe { flow.as_ref() }, DataPath::new()) else { return 0 };
    u32::from(table::remove(&memory, flow))
}

/// The table as the data path reaches it: its maps, this CPU's cursor.
struct DataPath {
    info: &'static ConnTableInfo,
}

impl DataPath {
    #[inline(always)]
    fn new() -> Option<Self> {
        CONN_TABLE_INFO.get(0).map(|info| Self { info })
    }
}

impl TableMemory for DataPath {
    #[inline(always)]
    fn info(&self) -> &ConnTableInfo {
        self.info
    }

    #[inline(always)]
    fn bucket(&self, index: u32) -> Option<*mut IndexBucket> {
        CONN_INDEX.get_ptr_mut(index)
    }

    #[inline(always)]
    fn entry(&self, number: u32) -> Option<*mut ConnEntry> {
        CONNS.get_ptr_mut(number)
    }

    #[inline(always)]
    fn take_chunks(&mut self, value: u64) -> Option<u64> {
        CONN_CHUNKS.get_ptr_mut(0).map(|chunks| atomic::fetch_add(chunks, value))
    }

    #[inline(always)]
    fn cursor(&mut self) -> Option<*mut PoolCursor> {
        CONN_CURSOR.get_ptr_mut(0)
    }

    #[inline(always)]
    unsafe fn load32(word: *const u32) -> u32 {
        // SAFETY: a word of a map value.
        unsafe { core::ptr::read_volatile(word) }
    }

    #[inline(always)]
    unsafe fn compare_exchange32(word: *mut u32, current: u32, new: u32) -> bool {
        atomic::compare_exchange32(word, current, new)
    }

    #[inline(always)]
    fn dropped(&self, protocol: u8, conn: &Conn) {
        // A reply's entry is not counted: its client's is.
        if !conn.is_reply() {
            super::uncount(conn.real, state::is_active(protocol, conn.state));
        }
    }
}
