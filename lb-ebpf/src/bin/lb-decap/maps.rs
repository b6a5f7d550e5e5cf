//! The decapsulator's maps (written only by the userspace `lb-decap`) and its counting.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use lb_common::decap::{AddressKey, MAX_LOCAL_ADDRESSES, MAX_VIPS, Refusal, Traffic};

/// The VIPs this real server serves: an inner destination must be one of them.
#[map]
pub static DECAP_VIPS: HashMap<AddressKey, u8> = HashMap::with_max_entries(MAX_VIPS, 0);

/// This host's own addresses, kept current by `lb-decap`: an outer destination must be
/// one of them.
#[map]
pub static DECAP_LOCAL: HashMap<AddressKey, u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRESSES, 0);

/// Packets decapsulated, in slot 0.
#[map]
pub static DECAP_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(1, 0);

/// Tunnel packets dropped, by [`Refusal`].
#[map]
pub static DECAP_REFUSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(Refusal::COUNT, 0);

#[inline(always)]
pub fn is_local(address: &AddressKey) -> bool {
    DECAP_LOCAL.get_ptr(address).is_some()
}

#[inline(always)]
pub fn is_vip(address: &AddressKey) -> bool {
    DECAP_VIPS.get_ptr(address).is_some()
}

#[inline(always)]
pub fn count_decapsulated(inner_len: u32) {
    if let Some(traffic) = DECAP_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, valid while the program runs and written only by
        // this CPU's runs, which do not overlap.
        let traffic = unsafe { &mut *traffic };
        traffic.packets += 1;
        traffic.bytes += u64::from(inner_len);
    }
}

#[inline(always)]
pub fn count_refused(refusal: Refusal) {
    if let Some(count) = DECAP_REFUSED.get_ptr_mut(refusal as u32) {
        // SAFETY: as in `count_decapsulated`.
        unsafe { *count += 1 };
    }
}
