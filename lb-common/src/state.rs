//! Connection states, IPVS's: the TCP state table of `ip_vs_proto_tcp.c`, which the
//! data path follows packet by packet and by which the agent ages connections and
//! counts them active or inactive. A UDP connection has one state (`NONE` here).

/// IPVS's TCP states, by its numbers (`IP_VS_TCP_S_*`), as `Conn::state` holds them.
pub const NONE: u8 = 0;
pub const ESTABLISHED: u8 = 1;
pub const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
pub const FIN_WAIT: u8 = 4;
pub const TIME_WAIT: u8 = 5;
pub const CLOSE: u8 = 6;
pub const CLOSE_WAIT: u8 = 7;
pub const LAST_ACK: u8 = 8;
pub const LISTEN: u8 = 9;
pub const SYNACK: u8 = 10;
/// How many there are.
pub const TCP_STATES: usize = 11;

/// Their names, as `ipvsadm -Lnc` prints them.
pub const TCP_STATE_NAMES: [&str; TCP_STATES] = [
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
];

/// Which of IPVS's three tables a segment follows.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client, on a connection whose replies pass the director (NAT, Full-NAT).
    Input = 0,
    /// From the real server, through the director.
    Output = 1,
    /// From the client, on a connection whose replies go straight to it (direct
    /// routing, tunnels): the director never sees the other half.
    InputOnly = 2,
}

/// TCP's flag bits, as the header carries them.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// IPVS's `tcp_states`: by direction, then by the segment's kind (`syn`, `fin`, `ack`,
/// `rst`), the state that follows each state. (Newer kernels take an ACK from NONE to
/// ESTABLISHED on input; a connection here opens in SYN_RECV and is never in NONE.
/// Nothing here leads to LISTEN or SYNACK either: IPVS reaches them only through its
/// `secure_tcp` table and its application helpers.)
#[rustfmt::skip]
static TRANSITIONS: [[[u8; TCP_STATES]; 4]; 3] = {
    const ES: u8 = ESTABLISHED; const SS: u8 = SYN_SENT; const SR: u8 = SYN_RECV;
    const FW: u8 = FIN_WAIT; const TW: u8 = TIME_WAIT; const CL: u8 = CLOSE; const CW: u8 = CLOSE_WAIT;
    const LA: u8 = LAST_ACK; const LI: u8 = LISTEN;
    [
        // Input:     NO  ES  SS  SR  FW  TW  CL  CW  LA  LI  SA
        [/* syn */   [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR],
         /* fin */   [CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, TW],
         /* ack */   [CL, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES],
         /* rst */   [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, SR]],
        // Output:    NO  ES  SS  SR  FW  TW  CL  CW  LA  LI  SA
        [/* syn */   [SS, ES, SS, SR, SS, SS, SS, SS, SS, LI, SR],
         /* fin */   [TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW],
         /* ack */   [ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES],
         /* rst */   [CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL]],
        // Input-only: NO  ES  SS  SR  FW  TW  CL  CW  LA  LI  SA
        [/* syn */   [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR],
         /* fin */   [CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW],
         /* ack */   [CL, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES],
         /* rst */   [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL]],
    ]
};

/// The state a TCP connection in `state` is in once a segment with `flags` went
/// `direction`: IPVS's `set_tcp_state`. RST decides first, then SYN, FIN, ACK; a
/// segment with none of them closes the connection, as in IPVS.
#[inline(always)]
pub fn next_tcp_state(direction: Direction, flags: u8, state: u8) -> u8 {
    let kind = if flags & TCP_RST != 0 {
        3
    } else if flags & TCP_SYN != 0 {
        0
    } else if flags & TCP_FIN != 0 {
        1
    } else if flags & TCP_ACK != 0 {
        2
    } else {
        return CLOSE;
    };
    match TRANSITIONS[direction as usize][kind].get(state as usize) {
        Some(next) => *next,
        None => CLOSE,
    }
}

/// Whether a connection in `state` of `protocol` counts as active (IPVS's ActiveConn:
/// established TCP, and since Linux 4.8 the states before it); UDP and the closing
/// states count as inactive (InActConn).
#[inline(always)]
pub const fn is_active(protocol: u8, state: u8) -> bool {
    protocol == crate::IPPROTO_TCP && matches!(state, ESTABLISHED | SYN_SENT | SYN_RECV | SYNACK)
}

/// The state a new connection of `protocol` opens in: a TCP connection's first segment
/// is a SYN from the client, which takes IPVS's NONE to SYN_RECV.
#[inline(always)]
pub const fn opening(protocol: u8) -> u8 {
    if protocol == crate::IPPROTO_TCP { SYN_RECV } else { NONE }
}
