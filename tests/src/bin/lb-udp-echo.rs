//! The lab's UDP service on a real server: answers every datagram with the server's
//! name. It binds each VIP itself, as a DNS server behind an LVS-DR director does, so
//! replies leave from the VIP the client asked.
//!
//!   lb-udp-echo NAME ADDRESS:PORT [ADDRESS:PORT ...]

use std::{net::UdpSocket, thread};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else { bail!("usage: lb-udp-echo NAME ADDRESS:PORT [ADDRESS:PORT ...]") };
    let sockets: Vec<UdpSocket> = args
        .map(|address| UdpSocket::bind(&address).with_context(|| format!("binding {address}")))
        .collect::<Result<_>>()?;
    if sockets.is_empty() {
        bail!("name at least one ADDRESS:PORT to answer on");
    }
    thread::scope(|scope| {
        for socket in &sockets {
            let name = name.as_bytes();
            scope.spawn(move || -> Result<()> {
                let mut buffer = [0u8; 2048];
                loop {
                    let (_, peer) = socket.recv_from(&mut buffer)?;
                    socket.send_to(name, peer)?;
                }
            });
        }
    });
    Ok(())
}
