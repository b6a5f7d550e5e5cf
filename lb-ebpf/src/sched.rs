//! Choosing a real server for a new connection.
//!
//! rr and wrr both walk a sequence the agent computed (IPVS's order, weight-0 and
//! unresolved real servers left out): the data path only takes the next slot. sh and
//! dh hash an address (IPVS's `hash_32`) into a table of `HASH_BUCKETS` the agent
//! dealt out, and, for sh with `sh-fallback`, into the fallback table after it. mh
//! hashes the client into the service's Maglev table, where the agent has already
//! sent, with `mh-fallback`, a bucket whose real server cannot take a connection on to
//! one that can: one read either way. The dynamic schedulers (lc, wlc, sed, nq, fo,
//! ovf) weigh the live loads of the real servers the agent listed, every CPU's
//! connections counted in one place.
//!
//! Whether a real server is overloaded (past its upper threshold) changes with every
//! connection, so no table of the agent's can know it: in a service with thresholds,
//! the static schedulers check their pick and, where IPVS's would walk on, search
//! their sequence or table from there (`first_available`).

use aya_ebpf::{bindings::xdp_md, cty::c_void, helpers::bpf_loop, programs::XdpContext};
use aya_log_ebpf::debug;
use lb_common::{
    service::{
        HASH_BUCKETS, NO_REAL, SERVICE_MH_FALLBACK, SERVICE_MH_PORT, SERVICE_SH_FALLBACK, SERVICE_SH_PORT,
        SERVICE_THRESHOLDS, Scheduler, Service,
    },
    stats::Reason,
};

use crate::{
    atomic,
    header::header,
    maps::{REAL_LOAD, SCHED_CURSOR, SCHED_RING},
    parse::Packet,
};

/// A real server (its id) for the first packet of a flow. Only a packet that may open
/// a connection (any UDP datagram, a TCP SYN without RST) gets one, as in IPVS. A
/// function of its own: inlined, its locals would stack new_flow's frame and the
/// dynamic schedulers' beyond the 512 bytes a call chain may use.
#[inline(never)]
pub fn new_connection(packet: &Packet, service: &Service) -> Result<u32, Reason> {
    if !packet.opens_connection {
        return Err(Reason::NoConnection);
    }
    match Scheduler::from_u8(service.scheduler) {
        Some(Scheduler::Rr | Scheduler::Wrr) => next_in_sequence(service),
        Some(Scheduler::Sh) => {
            let port = if service.flags & SERVICE_SH_PORT != 0 { packet.flow.src_port } else { [0; 2] };
            by_hash(service, hash_key(&packet.flow.src, port), service.flags & SERVICE_SH_FALLBACK != 0)
        }
        Some(Scheduler::Dh) => by_hash(service, hash_key(&packet.flow.dst, [0; 2]), false),
        Some(Scheduler::Mh) => {
            let port = if service.flags & SERVICE_MH_PORT != 0 { packet.flow.src_port } else { [0; 2] };
            by_maglev(service, maglev_key(&packet.flow.src, port))
        }
        Some(_) => least_loaded(service),
        None => Err(Reason::NoRealServer),
    }
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
    let at = (atomic::fetch_add_one(turn) % u64::from(service.sequence_len)) as u32;
    let real = SCHED_RING.get(service.sequence_start + at).copied().ok_or(Reason::NoRealServer)?;
    if !overloaded(service, real) {
        return Ok(real);
    }
    let found = first_available(service.sequence_start, service.sequence_len, at + 1)?;
    atomic::add(turn.cast(), i64::from(found.offset) + 1);
    Ok(found.real)
}

/// What IPVS's `ip_vs_sh_hashkey`, `ip_vs_dh_hashkey` and `ip_vs_mh_hashkey` hash: an
/// IPv6 address folded to 32 bits by XOR (an IPv4 one is its first word, the others
/// being zero), plus the port (with `sh-port`, `mh-port`).
#[inline(always)]
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
        let found = SCHED_RING.get(service.sequence_start + HASH_BUCKETS + from).copied();
        match found {
            Some(real) if real != NO_REAL && !overloaded(service, real) => return Ok(real),
            Some(real) if real != NO_REAL => {}
            // No real server can take a connection.
            _ => return Err(Reason::NoRealServer),
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
    if real == NO_REAL || REAL_LOAD.get(real).is_none_or(|load| load.overloaded != 0) {
        return 0;
    }
    search.real = real;
    search.offset = offset;
    1
}

/// What a scan of a service's real servers has found so far: `bpf_loop`'s context.
struct Scan {
    /// The service's first slot in `SCHED_RING`, and its [`Scheduler`].
    start: u32,
    scheduler: u8,
    /// The real server chosen so far (`NO_REAL`: none), its overhead and weight.
    best: u32,
    best_weight: u32,
    best_overhead: i64,
}

/// IPVS's dynamic schedulers (`ip_vs_lc.c`, `ip_vs_wlc.c`, `ip_vs_sed.c`,
/// `ip_vs_nq.c`, `ip_vs_fo.c`, `ip_vs_ovf.c`): every real server of the service's run
/// weighed by its live load, in order, skipping those quiesced or overloaded. The loop
/// is the kernel's (`bpf_loop`), so the verifier checks its body once, whatever the
/// number of real servers.
#[inline(never)]
fn least_loaded(service: &Service) -> Result<u32, Reason> {
    let mut scan = Scan {
        start: service.sequence_start,
        scheduler: service.scheduler,
        best: NO_REAL,
        best_weight: 0,
        best_overhead: 0,
    };
    // SAFETY: `weigh` is a static function of the program, `scan` lives on this
    // frame for the whole call.
    unsafe {
        bpf_loop(service.sequence_len, weigh as *mut c_void, (&raw mut scan).cast(), 0);
    }
    if scan.best == NO_REAL { Err(Reason::NoRealServer) } else { Ok(scan.best) }
}

/// One real server of a [`Scan`]: whether it is better than the best so far, by the
/// scheduler's formula. Answers 1 to stop (nq's idle server), 0 to go on.
extern "C" fn weigh(index: u64, scan: *mut c_void) -> i64 {
    // SAFETY: `least_loaded`'s `Scan`, for the duration of its `bpf_loop`.
    let scan = unsafe { &mut *scan.cast::<Scan>() };
    let Some(&id) = SCHED_RING.get(scan.start.wrapping_add(index as u32)) else { return 1 };
    let Some(load) = REAL_LOAD.get(id) else { return 0 };
    let weight = load.weight;
    if weight == 0 || load.overloaded != 0 {
        return 0;
    }
    // A count may dip below zero for a moment (the agent reconciles it).
    let (active, inactive) = (load.active.max(0), load.inactive.max(0));
    let none = scan.best == NO_REAL;
    // (overhead, weight) is smaller than the best's: overhead / weight, multiplied out.
    let lighter =
        |overhead: i64| none || scan.best_overhead * i64::from(weight) > overhead * i64::from(scan.best_weight);
    let (better, overhead, stop) = match Scheduler::from_u8(scan.scheduler) {
        Some(Scheduler::Lc) => {
            let overhead = (active << 8) + inactive;
            (none || overhead < scan.best_overhead, overhead, false)
        }
        Some(Scheduler::Wlc) => {
            let overhead = (active << 8) + inactive;
            (lighter(overhead), overhead, false)
        }
        Some(Scheduler::Sed) => (lighter(active + 1), active + 1, false),
        // An idle real server at once, else as sed.
        Some(Scheduler::Nq) => (active == 0 || lighter(active + 1), active + 1, active == 0),
        Some(Scheduler::Fo) => (weight > scan.best_weight, 0, false),
        Some(Scheduler::Ovf) => (active <= i64::from(weight) && (none || weight > scan.best_weight), 0, false),
        _ => return 1,
    };
    if better {
        scan.best = id;
        scan.best_weight = weight;
        scan.best_overhead = overhead;
    }
    i64::from(stop)
}

/// For an operator tracing scheduling decisions (`lb-agent --ebpf-log-level debug`);
/// off by default, when it costs a call, one load and one branch per new connection.
/// The client is read from the frame, at the IP header (`l3`) and the transport
/// header (`l4`), which nothing has rewritten yet.
///
/// A global function: the verifier checks it once, on its own, where it would walk a
/// static function's code again for every state that reaches a call to it (with debug
/// logging on, the log's code along every path of the schedulers would pass the
/// verifier's limit). Hence its arguments: the context and numbers only.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_log_new_connection(ctx: *mut xdp_md, l3: u32, l4: u32, service: u32, real: u32) -> i32 {
    let ctx = XdpContext::new(ctx);
    // Headers start within the first 256 bytes; bounded so, an offset is one the
    // verifier lets a frame pointer take.
    let (l3, l4) = ((l3 & 0xff) as usize, (l4 & 0xff) as usize);
    // The version's byte read as a word: LLVM turns the check of a single byte into one
    // the verifier does not learn the frame's length from.
    let (Some(first), Some(port)) = (header::<[u8; 4]>(&ctx, l3), header::<[u8; 2]>(&ctx, l4)) else { return 0 };
    // SAFETY: `header` checked that the frame holds them.
    let (version, port) = unsafe { ((*first)[0] >> 4, u16::from_be_bytes(*port)) };
    // The source address's place in an IPv4 and an IPv6 header.
    if version == 4 {
        let Some(client) = header::<[u8; 4]>(&ctx, l3 + 12) else { return 0 };
        let client = unsafe { *client };
        debug!(&ctx, "new flow from {:i}:{} (service {}) to real server {}", client, port, service, real);
    } else {
        let Some(client) = header::<[u8; 16]>(&ctx, l3 + 8) else { return 0 };
        let client = unsafe { *client };
        debug!(&ctx, "new flow from [{:i}]:{} (service {}) to real server {}", client, port, service, real);
    }
    0
}
