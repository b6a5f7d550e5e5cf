//! Choosing a real server for a new connection.
//!
//! rr and wrr both walk a sequence the agent computed (IPVS's order, weight-0 and
//! unresolved real servers left out): the data path only takes the next slot. sh and
//! dh hash an address (IPVS's `hash_32`) into a table of `HASH_BUCKETS` the agent
//! dealt out, and, for sh with `sh-fallback`, into the fallback table after it. mh
//! hashes the client into the service's Maglev table, where the agent has already
//! sent, with `mh-fallback`, a bucket whose real server cannot take a connection on to
//! one that can: one read either way (unless the real server read is overloaded). The dynamic schedulers (lc, wlc, sed, nq, fo,
//! ovf) weigh the live loads of the real servers the agent listed, every CPU's
//! connections counted in one place; lblc and lblcr (`locality`) first ask the
//! destination's entry, and weigh as wlc does.
//!
//! Whether a real server is overloaded (past its upper threshold) changes with every
//! connection, so no table of the agent's can know it: in a service with thresholds,
//! the static schedulers check their pick and, where IPVS's would walk on, search
//! their sequence or table from there (`first_available`).

use aya_ebpf::{cty::c_void, helpers::bpf_loop};
use aya_log_ebpf::debug;
use lb_common::{
    FAMILY_IPV4, IPPROTO_TCP,
    conn::FlowKey,
    service::{
        HASH_BUCKETS, NO_REAL, SERVICE_MH_FALLBACK, SERVICE_MH_PORT, SERVICE_SH_FALLBACK, SERVICE_SH_PORT,
        SERVICE_THRESHOLDS, Scheduler, Service,
    },
    stats::Reason,
};

use crate::{
    atomic, locality,
    maps::{REAL_LOAD, SCHED_CURSOR, SCHED_RING},
    parse::{Packet, TCP_ACK, TCP_RST, TCP_SYN},
};

/// A real server (its id) for the first packet of a flow. Only a packet that may open
/// a connection (any UDP datagram, a TCP SYN without RST) gets one, as in IPVS, or one
/// that [`picks_up`] a connection opened elsewhere.
#[inline(always)]
pub fn new_connection(packet: &Packet, service: &Service) -> Result<u32, Reason> {
    if !packet.opens_connection && !picks_up(packet, service) {
        return Err(Reason::NoConnection);
    }
    match lb_schedule(&packet.flow, service) {
        NO_REAL => Err(Reason::NoRealServer),
        real => Ok(real),
    }
}

/// Whether a TCP segment of a flow this director does not know (another director
/// opened it, and an ECMP path moved or that director died) takes the scheduler's
/// choice: mh, sh and dh choose by the flow and the configuration alone, so every
/// director with the same configuration made the choice the connection opened with,
/// and it goes on (IPVS's `sloppy_tcp`; Katran's balancer always does). Any other
/// scheduler would send it to a real server that never saw its SYN. Never a RST.
#[inline(always)]
fn picks_up(packet: &Packet, service: &Service) -> bool {
    packet.flow.protocol == IPPROTO_TCP
        && packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK
        && matches!(Scheduler::from_u8(service.scheduler), Some(Scheduler::Mh | Scheduler::Sh | Scheduler::Dh))
}

/// The scheduler's choice for a new connection of `flow` to `service`, `NO_REAL` for
/// none. A BPF global function (exported, of pointers to plain structs and integers):
/// the verifier checks it once, on its own, where it walks a static function again
/// from every state a caller reaches it in (each kind of parsed packet), which had
/// taken `lb_ingress` to 990,000 of its million instructions with debug logging on.
/// To the verifier its pointers may be null, so they are checked.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_schedule(flow: *const FlowKey, service: *const Service) -> u32 {
    // SAFETY: `new_connection`'s references, for the duration of the call.
    let (Some(flow), Some(service)) = (unsafe { flow.as_ref() }, unsafe { service.as_ref() }) else { return NO_REAL };
    let real = match Scheduler::from_u8(service.scheduler) {
        Some(Scheduler::Rr | Scheduler::Wrr) => next_in_sequence(service),
        Some(Scheduler::Sh) => {
            let port = if service.flags & SERVICE_SH_PORT != 0 { flow.src_port } else { [0; 2] };
            by_hash(service, hash_key(&flow.src, port), service.flags & SERVICE_SH_FALLBACK != 0)
        }
        Some(Scheduler::Dh) => by_hash(service, hash_key(&flow.dst, [0; 2]), false),
        Some(Scheduler::Mh) => {
            let port = if service.flags & SERVICE_MH_PORT != 0 { flow.src_port } else { [0; 2] };
            by_maglev(service, maglev_key(&flow.src, port))
        }
        Some(Scheduler::Lblc | Scheduler::Lblcr) => locality::schedule(flow, service),
        Some(_) => least_loaded(service),
        None => return NO_REAL,
    };
    let Ok(real) = real else { return NO_REAL };
    log_new_connection(flow, service, real);
    real
}

/// rr's and wrr's next slot. Past an overloaded real server the walk goes on, and the
/// cursor with it, as IPVS's rr and wrr move their place to the real server found.
#[inline(always)]
fn next_in_sequence(service: &Service) -> Result<u32, Reason> {
    if service.sequence_len == 0 {
        return Err(Reason::NoRealServer);
    }
    let cursor = SCHED_CURSOR.get_ptr_mut(service.index).ok_or(Reason::NoRealServer)?;
    let turn = unsafe { &raw mut (*cursor).turn };
    let at = (atomic::fetch_add(turn, 1) % u64::from(service.sequence_len)) as u32;
    let real = SCHED_RING.get(service.sequence_start + at).copied().ok_or(Reason::NoRealServer)?;
    if !overloaded(service, real) {
        return Ok(real);
    }
    match first_available(service.sequence_start, service.sequence_len, at + 1) {
        Ok(found) => {
            atomic::add(turn.cast(), i64::from(found.offset) + 1);
            Ok(found.real)
        }
        // Every real server overloaded: IPVS keeps its place when it finds none.
        Err(reason) => {
            atomic::add(turn.cast(), -1);
            Err(reason)
        }
    }
}

/// What IPVS's `ip_vs_sh_hashkey`, `ip_vs_dh_hashkey` and `ip_vs_mh_hashkey` hash: an
/// IPv6 address folded to 32 bits by XOR (an IPv4 one is its first word, the others
/// being zero), plus the port (with `sh-port`, `mh-port`). A function of its own: its
/// byte loads, spilled, took `lb_schedule`'s frame to 104 bytes, and lblc's and lblcr's
/// functions below it would not fit the 512 bytes of stack.
#[inline(never)]
fn fold(address: &[u8; 16], port: [u8; 2]) -> u32 {
    let word = |at: usize| u32::from_be_bytes([address[at], address[at + 1], address[at + 2], address[at + 3]]);
    (word(0) ^ word(4) ^ word(8) ^ word(12)).wrapping_add(u32::from(u16::from_be_bytes(port)))
}

/// sh's and dh's bucket: the kernel's hash_32 (GOLDEN_RATIO_32), the top 8 bits.
#[inline(always)]
fn hash_key(address: &[u8; 16], port: [u8; 2]) -> u32 {
    fold(address, port).wrapping_mul(0x61c8_8647) >> 24
}

/// mh's hash of the client, which the table's size (a prime) then divides: murmur3's
/// finalizer (fmix32), which spreads every bit of the fold over the whole word in
/// eight instructions; IPVS's hsiphash would take some hundred here (eBPF has no
/// rotation). Fixed arithmetic: every director computes the same.
#[inline(always)]
fn maglev_key(address: &[u8; 16], port: [u8; 2]) -> u32 {
    let mut hash = fold(address, port);
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

/// The real server of `bucket`; if it cannot take the connection and `fallback` is
/// set, the one ip_vs_sh_get_fallback's search finds, which starts at bucket
/// `2 * bucket` (its offsets add the hash twice). The fallback table has that search's
/// answers; only an overloaded real server, which the agent cannot foresee, makes the
/// data path search.
#[inline(always)]
fn by_hash(service: &Service, bucket: u32, fallback: bool) -> Result<u32, Reason> {
    if service.sequence_len < HASH_BUCKETS {
        return Err(Reason::NoRealServer);
    }
    let real = SCHED_RING.get(service.sequence_start + bucket).copied().ok_or(Reason::NoRealServer)?;
    if real != NO_REAL && !overloaded(service, real) {
        return Ok(real);
    }
    if !fallback || service.sequence_len != 2 * HASH_BUCKETS {
        return Err(Reason::NoRealServer);
    }
    let from = (2 * bucket) % HASH_BUCKETS;
    if real == NO_REAL {
        let found =
            SCHED_RING.get(service.sequence_start + HASH_BUCKETS + from).copied().ok_or(Reason::NoRealServer)?;
        // `NO_REAL` here: no real server can take a connection.
        if found == NO_REAL {
            return Err(Reason::NoRealServer);
        }
        if !overloaded(service, found) {
            return Ok(found);
        }
    }
    Ok(first_available(service.sequence_start, HASH_BUCKETS, from)?.real)
}

/// The real server of the key's bucket in the service's Maglev table (`sequence_len`
/// buckets); `NO_REAL` there refuses the connection (with `mh-fallback` the agent has
/// left it only where no real server can take one). An overloaded real server refuses
/// it too, or with `mh-fallback` sends it on to the next bucket's that can take it,
/// as the agent's table does for the others.
#[inline(always)]
fn by_maglev(service: &Service, key: u32) -> Result<u32, Reason> {
    if service.sequence_len == 0 {
        return Err(Reason::NoRealServer);
    }
    let bucket = key % service.sequence_len;
    let real = SCHED_RING.get(service.sequence_start + bucket).copied().ok_or(Reason::NoRealServer)?;
    if real == NO_REAL {
        return Err(Reason::NoRealServer);
    }
    if !overloaded(service, real) {
        return Ok(real);
    }
    if service.flags & SERVICE_MH_FALLBACK == 0 {
        return Err(Reason::NoRealServer);
    }
    Ok(first_available(service.sequence_start, service.sequence_len, bucket + 1)?.real)
}

/// Whether a static scheduler's pick is overloaded (IPVS's `IP_VS_DEST_F_OVERLOAD`):
/// read only in a service with thresholds.
#[inline(always)]
fn overloaded(service: &Service, real: u32) -> bool {
    service.flags & SERVICE_THRESHOLDS != 0 && REAL_LOAD.get(real).is_some_and(|load| load.overloaded != 0)
}

/// A search of `len` slots of `SCHED_RING` from `start`, round from `from`:
/// `bpf_loop`'s context.
struct Search {
    start: u32,
    len: u32,
    from: u32,
    /// What was found (`NO_REAL`: nothing yet), and how many slots after `from`.
    real: u32,
    offset: u32,
}

/// The first real server of a service's run (`len` slots from `start`), from slot
/// `from` on and round, that can take a connection (not `NO_REAL`, not overloaded):
/// IPVS's walk on past an unavailable real server. A loop of the kernel's, so the
/// verifier checks its body once.
#[inline(never)]
fn first_available(start: u32, len: u32, from: u32) -> Result<Search, Reason> {
    let mut search = Search { start, len, from, real: NO_REAL, offset: 0 };
    // SAFETY: `probe` is a static function of the program, `search` lives on this frame
    // for the whole call.
    unsafe {
        bpf_loop(len, probe as *mut c_void, (&raw mut search).cast(), 0);
    }
    if search.real == NO_REAL { Err(Reason::NoRealServer) } else { Ok(search) }
}

/// One slot of a [`Search`]: 1 (stop) at a real server that can take a connection.
extern "C" fn probe(index: u64, search: *mut c_void) -> i64 {
    // SAFETY: `first_available`'s `Search`, for the duration of its `bpf_loop`.
    let search = unsafe { &mut *search.cast::<Search>() };
    let offset = index as u32;
    let slot = search.start.wrapping_add(search.from.wrapping_add(offset) % search.len.max(1));
    let Some(&real) = SCHED_RING.get(slot) else { return 1 };
    // Only a service with thresholds searches, so the load is read without asking.
    if real == NO_REAL || REAL_LOAD.get(real).is_none_or(|load| load.overloaded != 0) {
        return 0;
    }
    search.real = real;
    search.offset = offset;
    1
}

/// The best real server a scan of some has found so far, by a dynamic scheduler's
/// formula.
pub struct Scan {
    /// A [`Scheduler`].
    scheduler: u8,
    /// The real server chosen so far (`NO_REAL`: none), its overhead and weight.
    best: u32,
    best_weight: u32,
    best_overhead: i64,
}

impl Scan {
    #[inline(always)]
    pub const fn new(scheduler: u8) -> Self {
        Self { scheduler, best: NO_REAL, best_weight: 0, best_overhead: 0 }
    }

    /// The real server found, if any.
    #[inline(always)]
    pub fn best(&self) -> Result<u32, Reason> {
        if self.best == NO_REAL { Err(Reason::NoRealServer) } else { Ok(self.best) }
    }

    /// Weighs real server `id` against the best so far by the scheduler's formula,
    /// skipping it if quiesced or overloaded; answers whether to stop (nq's idle
    /// server).
    #[inline(always)]
    pub fn weigh(&mut self, id: u32) -> bool {
        let Some(load) = REAL_LOAD.get(id) else { return false };
        let weight = load.weight;
        if weight == 0 || load.overloaded != 0 {
            return false;
        }
        // A count may dip below zero for a moment (the agent reconciles it).
        let (active, inactive) = (load.active.max(0), load.inactive.max(0));
        let none = self.best == NO_REAL;
        // (overhead, weight) is smaller than the best's: overhead / weight, multiplied out.
        let lighter =
            |overhead: i64| none || self.best_overhead * i64::from(weight) > overhead * i64::from(self.best_weight);
        let (better, overhead, stop) = match Scheduler::from_u8(self.scheduler) {
            Some(Scheduler::Lc) => {
                let overhead = (active << 8) + inactive;
                (none || overhead < self.best_overhead, overhead, false)
            }
            // lblc and lblcr choose a new real server by wlc's rule
            // (`__ip_vs_lblc_schedule`, `__ip_vs_lblcr_schedule`), and the least
            // loaded of an lblcr set too (`ip_vs_dest_set_min`).
            Some(Scheduler::Wlc | Scheduler::Lblc | Scheduler::Lblcr) => {
                let overhead = (active << 8) + inactive;
                (lighter(overhead), overhead, false)
            }
            Some(Scheduler::Sed) => (lighter(active + 1), active + 1, false),
            // An idle real server at once, else as sed.
            Some(Scheduler::Nq) => (active == 0 || lighter(active + 1), active + 1, active == 0),
            Some(Scheduler::Fo) => (weight > self.best_weight, 0, false),
            Some(Scheduler::Ovf) => (active <= i64::from(weight) && (none || weight > self.best_weight), 0, false),
            _ => return true,
        };
        if better {
            self.best = id;
            self.best_weight = weight;
            self.best_overhead = overhead;
        }
        stop
    }
}

/// A scan of a service's run of `SCHED_RING`, from its first slot: `bpf_loop`'s
/// context.
struct RunScan {
    start: u32,
    scan: Scan,
}

/// IPVS's dynamic schedulers (`ip_vs_lc.c`, `ip_vs_wlc.c`, `ip_vs_sed.c`,
/// `ip_vs_nq.c`, `ip_vs_fo.c`, `ip_vs_ovf.c`, and lblc's and lblcr's wlc): every real
/// server of the service's run weighed by its live load, in order, skipping those
/// quiesced or overloaded. The loop is the kernel's (`bpf_loop`), so the verifier
/// checks its body once, whatever the number of real servers.
#[inline(never)]
pub fn least_loaded(service: &Service) -> Result<u32, Reason> {
    let mut run = RunScan { start: service.sequence_start, scan: Scan::new(service.scheduler) };
    // SAFETY: `weigh_next` is a static function of the program, `run` lives on this
    // frame for the whole call.
    unsafe {
        bpf_loop(service.sequence_len, weigh_next as *mut c_void, (&raw mut run).cast(), 0);
    }
    run.scan.best()
}

/// The next real server of a [`RunScan`]. Answers 1 to stop, 0 to go on.
extern "C" fn weigh_next(index: u64, run: *mut c_void) -> i64 {
    // SAFETY: `least_loaded`'s `RunScan`, for the duration of its `bpf_loop`.
    let run = unsafe { &mut *run.cast::<RunScan>() };
    let Some(&id) = SCHED_RING.get(run.start.wrapping_add(index as u32)) else { return 1 };
    i64::from(run.scan.weigh(id))
}

/// For an operator tracing scheduling decisions (`lb-agent --ebpf-log-level debug`);
/// off by default, when it costs a call, one load and one branch per new connection.
/// A function of its own, so the verifier walks the log's code once rather than once
/// per scheduler.
#[inline(never)]
fn log_new_connection(flow: &FlowKey, service: &Service, real: u32) {
    // aya-log writes its records to a ring buffer: the context it is handed goes unused
    // (and a global function has none to hand it).
    let ctx = ();
    let port = u16::from_be_bytes(flow.src_port);
    if flow.family == FAMILY_IPV4 {
        let client = [flow.src[0], flow.src[1], flow.src[2], flow.src[3]];
        debug!(ctx, "new flow from {:i}:{} (service {}) to real server {}", client, port, service.index, real);
    } else {
        debug!(ctx, "new flow from [{:i}]:{} (service {}) to real server {}", flow.src, port, service.index, real);
    }
}
