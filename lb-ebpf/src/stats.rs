//! Counting, per CPU: per service and per real server for forwarded packets (from
//! clients in, replies through the director out), per reason for everything else.

use lb_common::{
    conn::Conn,
    stats::{Counters, Reason},
};

use crate::maps::{REAL_STATS, SERVICE_STATS, VERDICT_STATS};

#[inline(always)]
pub fn count_request(conn: &Conn, ip_len: u32, new: bool) {
    let new = u64::from(new);
    let count = |counters: &mut Counters| {
        counters.packets += 1;
        counters.bytes += u64::from(ip_len);
        counters.conns += new;
    };
    update(SERVICE_STATS.get_ptr_mut(conn.service), count);
    update(REAL_STATS.get_ptr_mut(conn.real), count);
}

#[inline(always)]
pub fn count_reply(conn: &Conn, ip_len: u32) {
    let count = |counters: &mut Counters| {
        counters.out_packets += 1;
        counters.out_bytes += u64::from(ip_len);
    };
    update(SERVICE_STATS.get_ptr_mut(conn.service), count);
    update(REAL_STATS.get_ptr_mut(conn.real), count);
}

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(count) = VERDICT_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU value, written by this CPU only.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn update(counters: Option<*mut Counters>, count: impl Fn(&mut Counters)) {
    if let Some(counters) = counters {
        // SAFETY: a per-CPU value, written by this CPU only.
        count(unsafe { &mut *counters });
    }
}
