//! The sync datagram, version 2: a header, connection and template records, and an
//! HMAC-SHA256 tag over both under the directors' shared key. Every field is in network
//! order and at a fixed place, so a datagram is checked whole before anything in it is
//! believed: its length, its version, its syncid, then its tag.
//!
//! ```text
//! header (32 bytes)  "LBSY" | version | syncid | records (u16) | length (u16) | 0 (u16)
//!                    | sequence (u64) | sent at, ns of the sender's UNIX clock (u64) | sender (u32)
//! record (88 bytes)  kind | protocol | family | state | forwarding | flags | 0 (u16)
//!                    | idle seconds (u32) | client address (16) | client port | virtual port
//!                    | virtual address (16) | real address (16) | real port | local port
//!                    | local address (16) | 0 (u32)
//! tag (32 bytes)     HMAC-SHA256(key, header and records)
//! ```

use ring::hmac;

/// 2: the header's last word is the sender's id (1 had it zero, and numbered datagrams
/// from the sender's start time, each receiver keeping its window by address).
pub const VERSION: u8 = 2;
const MAGIC: [u8; 4] = *b"LBSY";
const HEADER: usize = 32;
const RECORD: usize = 88;
const TAG: usize = 32;
/// Records per datagram: a datagram stays within an Ethernet frame (1384 bytes).
pub const MAX_RECORDS: usize = 15;

/// `Record::flags`: the connection's service expires it once its real server is gone.
pub const FLAG_EXPIRE_NODEST: u8 = 1 << 0;
/// `Record::flags`: Full-NAT with TOA, and whether the option went out already.
pub const FLAG_TOA: u8 = 1 << 1;
pub const FLAG_TOA_DONE: u8 = 1 << 2;
pub const FLAG_TOA_ACK: u8 = 1 << 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub syncid: u8,
    /// Drawn at random when a sender starts: the receiver keeps its replay window by it,
    /// not by the source address, which anyone may send from.
    pub sender: u32,
    /// Raised by one for every datagram a sender sends, from the time it started, so a
    /// receiver refuses one it has seen (see `replay`).
    pub sequence: u64,
    /// The sender's UNIX time when it sent, in nanoseconds: how late the receiver is.
    pub sent_at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A connection: its client's flow and where it goes.
    Connection = 1,
    /// A persistence template: `client` holds the client's network, `real` the real
    /// server its connections go to; the virtual address and port name the service.
    Template = 2,
}

/// An address and a port.
pub type Endpoint = ([u8; 16], u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub protocol: u8,
    /// `lb_common::FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// IPVS's TCP state (`lb_common::state`), `NONE` for UDP and templates.
    pub state: u8,
    /// The `lb_common::real::Forwarding` the connection was opened with.
    pub forwarding: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Seconds since the sender last saw a packet of it (templates: since last used).
    pub idle: u32,
    pub client: Endpoint,
    pub virtual_service: Endpoint,
    /// The real server, and the port it serves this flow on.
    pub real: Endpoint,
    /// Full-NAT's local address and port; zero otherwise.
    pub local: Endpoint,
}

/// Why a datagram is dropped, as `lb_sync_dropped_total`'s `reason` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// Too short, not ours, lengths that do not add up, or a field out of range.
    Malformed,
    /// Another version of this format.
    Version,
    /// Another sync group's (`syncid`).
    Syncid,
    /// Its tag does not match: a forged or damaged datagram, or another key.
    Unauthenticated,
    /// Seen before, or too old to tell (`replay`).
    Replayed,
}

impl Refused {
    pub const ALL: [Refused; 5] = [Self::Malformed, Self::Version, Self::Syncid, Self::Unauthenticated, Self::Replayed];

    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Version => "version",
            Self::Syncid => "syncid",
            Self::Unauthenticated => "unauthenticated",
            Self::Replayed => "replayed",
        }
    }
}

/// The shared key, ready to sign and verify with.
pub fn key(bytes: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, bytes)
}

/// One datagram holding `records` (at most [`MAX_RECORDS`]).
pub fn encode(key: &hmac::Key, header: &Header, records: &[Record]) -> Vec<u8> {
    assert!(records.len() <= MAX_RECORDS, "a datagram holds at most {MAX_RECORDS} records");
    let length = HEADER + records.len() * RECORD + TAG;
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION, header.syncid]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&(length as u16).to_be_bytes());
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.sent_at.to_be_bytes());
    out.extend_from_slice(&header.sender.to_be_bytes());
    for record in records {
        encode_record(&mut out, record);
    }
    let tag = hmac::sign(key, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

fn encode_record(out: &mut Vec<u8>, record: &Record) {
    out.extend_from_slice(&[
        record.kind as u8,
        record.protocol,
        record.family,
        record.state,
        record.forwarding,
        record.flags,
        0,
        0,
    ]);
    out.extend_from_slice(&record.idle.to_be_bytes());
    out.extend_from_slice(&record.client.0);
    out.extend_from_slice(&record.client.1.to_be_bytes());
    out.extend_from_slice(&record.virtual_service.1.to_be_bytes());
    out.extend_from_slice(&record.virtual_service.0);
    out.extend_from_slice(&record.real.0);
    out.extend_from_slice(&record.real.1.to_be_bytes());
    out.extend_from_slice(&record.local.1.to_be_bytes());
    out.extend_from_slice(&record.local.0);
    out.extend_from_slice(&[0; 4]);
}

/// The datagram's header and records, if it is a well-formed datagram of this version
/// and of sync group `syncid` (0: any), signed with `key`.
pub fn decode(key: &hmac::Key, syncid: u8, datagram: &[u8]) -> Result<(Header, Vec<Record>), Refused> {
    if datagram.len() < HEADER + TAG || datagram[..4] != MAGIC {
        return Err(Refused::Malformed);
    }
    if datagram[4] != VERSION {
        return Err(Refused::Version);
    }
    let count = usize::from(u16::from_be_bytes([datagram[6], datagram[7]]));
    let length = usize::from(u16::from_be_bytes([datagram[8], datagram[9]]));
    if length != datagram.len() || length != HEADER + count * RECORD + TAG {
        return Err(Refused::Malformed);
    }
    if syncid != 0 && datagram[5] != syncid {
        return Err(Refused::Syncid);
    }
    let (signed, tag) = datagram.split_at(length - TAG);
    hmac::verify(key, signed, tag).map_err(|_| Refused::Unauthenticated)?;
    let header = Header {
        syncid: datagram[5],
        sender: u32::from_be_bytes(datagram[28..32].try_into().expect("four bytes")),
        sequence: u64_at(datagram, 12),
        sent_at: u64_at(datagram, 20),
    };
    let records = signed[HEADER..].chunks_exact(RECORD).map(decode_record).collect::<Option<_>>();
    Ok((header, records.ok_or(Refused::Malformed)?))
}

fn decode_record(bytes: &[u8]) -> Option<Record> {
    let kind = match bytes[0] {
        1 => Kind::Connection,
        2 => Kind::Template,
        _ => return None,
    };
    let (protocol, family, state, forwarding) = (bytes[1], bytes[2], bytes[3], bytes[4]);
    let known = matches!(protocol, lb_common::IPPROTO_TCP | lb_common::IPPROTO_UDP)
        && matches!(family, lb_common::FAMILY_IPV4 | lb_common::FAMILY_IPV6)
        && usize::from(state) < lb_common::state::TCP_STATES
        && lb_common::real::Forwarding::from_u8(forwarding).is_some();
    known.then(|| Record {
        kind,
        protocol,
        family,
        state,
        forwarding,
        flags: bytes[5],
        idle: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        client: (address_at(bytes, 12), port_at(bytes, 28)),
        virtual_service: (address_at(bytes, 32), port_at(bytes, 30)),
        real: (address_at(bytes, 48), port_at(bytes, 64)),
        local: (address_at(bytes, 68), port_at(bytes, 66)),
    })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn address_at(bytes: &[u8], at: usize) -> [u8; 16] {
    bytes[at..at + 16].try_into().expect("sixteen bytes")
}

fn port_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[cfg(test)]
mod tests {
    use lb_common::{FAMILY_IPV4, IPPROTO_TCP, state::ESTABLISHED};

    use super::*;

    fn record(last: u8) -> Record {
        let v4 = |a, b, c, d| {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&[a, b, c, d]);
            bytes
        };
        Record {
            kind: Kind::Connection,
            protocol: IPPROTO_TCP,
            family: FAMILY_IPV4,
            state: ESTABLISHED,
            forwarding: 3,
            flags: FLAG_TOA | FLAG_TOA_DONE,
            idle: 12,
            client: (v4(198, 18, 0, last), 40000 + u16::from(last)),
            virtual_service: (v4(203, 0, 113, 10), 80),
            real: (v4(198, 18, 21, 11), 8080),
            local: (v4(198, 18, 21, 100), 1025),
        }
    }

    const HEADER_7: Header =
        Header { syncid: 7, sender: 0xdead_beef, sequence: 1 << 40, sent_at: 1_700_000_000_000_000_000 };

    #[test]
    fn a_datagram_reads_back_as_it_was_written_and_fits_a_frame() {
        let key = key(&[1; 32]);
        let records: Vec<_> = (0..MAX_RECORDS as u8).map(record).collect();
        let datagram = encode(&key, &HEADER_7, &records);
        assert!(datagram.len() <= 1472, "{} bytes", datagram.len());
        assert_eq!(decode(&key, 7, &datagram), Ok((HEADER_7, records.clone())));
        // A backup of syncid 0 takes every group's.
        assert_eq!(decode(&key, 0, &datagram), Ok((HEADER_7, records)));
    }

    #[test]
    fn a_datagram_of_another_group_version_key_or_shape_is_refused() {
        let key = key(&[1; 32]);
        let datagram = encode(&key, &HEADER_7, &[record(1), record(2)]);
        assert_eq!(decode(&key, 8, &datagram), Err(Refused::Syncid));
        assert_eq!(decode(&super::key(&[2; 32]), 7, &datagram), Err(Refused::Unauthenticated));
        let mut other_version = datagram.clone();
        other_version[4] = VERSION + 1;
        assert_eq!(decode(&key, 7, &other_version), Err(Refused::Version));
        assert_eq!(decode(&key, 7, &datagram[..datagram.len() - 1]), Err(Refused::Malformed));
        assert_eq!(decode(&key, 7, b"LBSY"), Err(Refused::Malformed));
        assert_eq!(decode(&key, 7, &[0; 200]), Err(Refused::Malformed));
        // Every single byte changed anywhere is caught, by a check or by the tag.
        for at in 0..datagram.len() {
            let mut forged = datagram.clone();
            forged[at] ^= 0x40;
            assert!(decode(&key, 7, &forged).is_err(), "byte {at} changed unnoticed");
        }
    }

    #[test]
    fn a_signed_record_with_a_field_out_of_range_is_malformed() {
        let key = key(&[1; 32]);
        let mut bad = record(1);
        bad.family = 5;
        assert_eq!(decode(&key, 7, &encode(&key, &HEADER_7, &[bad])), Err(Refused::Malformed));
    }
}
