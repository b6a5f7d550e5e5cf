//! Words shared by all CPUs (and the agent). Rust's bpf target has no atomics, but the
//! instruction set has atomic adds and compare-and-swap.

/// `*counter += value` atomically, returning the old value (BPF_ATOMIC | BPF_FETCH |
/// BPF_ADD).
#[inline(always)]
pub fn fetch_add(counter: *mut u64, mut value: u64) -> u64 {
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

/// `*word = new` if it holds `current`, atomically (BPF_ATOMIC | BPF_CMPXCHG), with a
/// full barrier; answers whether it did.
#[inline(always)]
pub fn compare_exchange32(word: *mut u32, current: u32, new: u32) -> bool {
    let seen: u64;
    // The instruction compares with w0 and leaves the old value there.
    unsafe {
        core::arch::asm!(
            "w0 = cmpxchg32_32(r1 + 0, w0, w2)",
            inout("r0") u64::from(current) => seen,
            in("r1") word,
            in("r2") u64::from(new),
        );
    }
    seen as u32 == current
}
