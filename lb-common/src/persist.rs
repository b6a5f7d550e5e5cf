//! Persistence templates, as IPVS keeps them: a client's network, for a service, goes
//! to one real server for as long as the template lives.

/// A template's key: the service (by index: a firewall-mark service's VIPs and ports
/// share it, a port-0 service's ports too) and the client's address masked to the
/// service's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PersistKey {
    pub client_net: [u8; 16],
    pub service: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl PersistKey {
    /// The template of a client at `address` (of `family`) for `service`, whose
    /// clients' networks are `prefix` bits long.
    #[inline(always)]
    pub fn of(address: &[u8; 16], family: u8, service: u32, prefix: u8) -> Self {
        let mut client_net = [0u8; 16];
        let mut word = 0;
        while word < 4 {
            let bits = (prefix as u32).saturating_sub(32 * word as u32);
            let mask = if bits >= 32 { u32::MAX } else { !(u32::MAX >> bits) };
            let at = 4 * word;
            let bytes = [address[at], address[at + 1], address[at + 2], address[at + 3]];
            let net = (u32::from_be_bytes(bytes) & mask).to_be_bytes();
            client_net[at..at + 4].copy_from_slice(&net);
            word += 1;
        }
        Self { client_net, service, family, _pad: [0; 3] }
    }
}

/// Where a template sends its clients, and when a connection last used it (seconds of
/// `CLOCK`). The agent expires it once the service's timeout has passed since, and no
/// connection it sent is left (IPVS's `n_control`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persist {
    pub real: u32,
    pub last_used: u32,
}

/// How many templates the director holds; the least recently used goes first.
pub const PERSIST_TABLE_SIZE: u32 = 1 << 18;

const _: () = assert!(core::mem::size_of::<PersistKey>() == 24);
const _: () = assert!(core::mem::size_of::<Persist>() == 8);
