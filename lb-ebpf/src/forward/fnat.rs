//! Full-NAT: both ends rewritten. A client's packet leaves from one of the service's
//! local addresses and a local port (CIP:cport → LIP:lport) to the real server
//! (VIP:vport → RIP:rport), so the real server's reply comes back to the director
//! whatever its routes; the director puts the VIP and the client back.
//!
//! A local port is taken by inserting the reply's entry, keyed by (RIP, rport, LIP,
//! lport), only if no entry holds that key: the table itself is the allocator, so two
//! CPUs never hand out one port, and a port is free again once its connection's
//! entries are gone (closed and aged, or evicted).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    IPPROTO_TCP,
    conn::{CONN_REPLY, CONN_TOA},
    real::RealServer,
    service::{SERVICE_TOA, Service},
    stats::Reason,
};

use super::nat::set_deltas;
use crate::{
    conn,
    maps::{LOCAL_ADDRESSES, Opening},
    parse::Packet,
};

/// Local (address, port) pairs tried for a new connection before it is refused. They
/// run through every local address for one port, then the next port, so a pool of at
/// most this many pairs is tried whole.
const PROBES: u32 = 8;

/// Completes a new Full-NAT connection's entry (`conn`, the client direction's) with a
/// free local address and port, taken by writing the reply's entry. A function of its
/// own, for the stack's sake.
#[inline(never)]
pub fn open(packet: &Packet, service: &Service, real: &RealServer, opening: &mut Opening) -> Result<(), Reason> {
    let Opening { conn, reply, reply_key } = opening;
    let locals = u32::from(service.locals_len);
    let ports = u32::from(service.local_port_count);
    if locals == 0 || ports == 0 {
        return Err(Reason::NoLocalAddress);
    }
    conn.dst = real.address;
    conn.dst_port = super::real_port(packet, real);
    if service.flags & SERVICE_TOA != 0 && packet.flow.protocol == IPPROTO_TCP {
        conn.flags |= CONN_TOA;
    }
    *reply = *conn;
    reply.flags |= CONN_REPLY;
    reply.src = packet.flow.dst;
    reply.src_port = packet.flow.dst_port;
    reply.dst = packet.flow.src;
    reply.dst_port = packet.flow.src_port;
    // SAFETY: a helper without arguments.
    let seed = unsafe { bpf_get_prandom_u32() };
    for probe in 0..PROBES {
        let slot = service.locals_start + (seed + probe) % locals;
        let Some(local) = LOCAL_ADDRESSES.get_ptr(slot) else { return Err(Reason::NoLocalAddress) };
        let port = u32::from(service.local_port_first) + ((seed >> 8) + probe / locals) % ports;
        // SAFETY: a map value, which the kernel aligns to 8 bytes: read a word at a
        // time (as [u8; 16] LLVM would read it a byte at a time).
        conn.src = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(local.cast::<[u32; 4]>().read()) };
        conn.src_port = (port as u16).to_be_bytes();
        set_deltas(&packet.flow, conn, reply);
        *reply_key = conn.reply_key(&packet.flow);
        if conn::insert(reply_key, reply, true).is_ok() {
            return Ok(());
        }
    }
    Err(Reason::LocalPortsExhausted)
}
