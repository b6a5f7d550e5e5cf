//! Counting, per CPU: per service and per real server for forwarded packets, per
//! reason for everything else.

use lb_common::stats::{Counters, Reason};

use crate::{
    conn::Scheduled,
    maps::{REAL_STATS, SERVICE_STATS, VERDICT_STATS},
};

#[inline(always)]
pub fn count_forwarded(conn: &Scheduled, ip_len: u32) {
    let new = u64::from(conn.new);
    add(SERVICE_STATS.get_ptr_mut(conn.service), ip_len, new);
    add(REAL_STATS.get_ptr_mut(conn.real), ip_len, new);
}

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(count) = VERDICT_STATS.get_ptr_mut(reason as u32) {
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn add(counters: Option<*mut Counters>, ip_len: u32, new: u64) {
    if let Some(counters) = counters {
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += u64::from(ip_len);
        counters.conns += new;
    }
}
