//! Counters shared by all CPUs. Rust's bpf target has no `AtomicU64::fetch_add` (it
//! lacks compare-and-swap), but the instruction set has atomic adds.

/// `*counter += 1` atomically, returning the old value (BPF_ATOMIC | BPF_FETCH | BPF_ADD).
#[inline(always)]
pub fn fetch_add_one(counter: *mut u64) -> u64 {
    let mut value: u64 = 1;
    unsafe {
        core::arch::asm!(
            "{value} = atomic_fetch_add((u64 *)({counter} + 0), {value})",
            counter = in(reg) counter,
            value = inout(reg) value,
        );
    }
    value
}

/// `*counter += value` atomically (BPF_ATOMIC | BPF_ADD).
#[inline(always)]
pub fn add(counter: *mut i64, value: i64) {
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({counter} + 0) += {value}",
            counter = in(reg) counter,
            value = in(reg) value,
        );
    }
}
