//! A small site for tunnelling (LVS-TUN): a sender, playing the director and the client
//! at once, and one real server, each in its own network namespace, on a veth pair.
//! The real server is set up by `deploy/realserver.sh start --tun` (VIPs on its
//! loopback, `lb-decap` attached to its eth0) and answers UDP on the VIPs with
//! `lb-udp-echo`. The sender writes the director's tunnels with raw sockets (the kernel
//! adds the outer header) around a client packet from its own address, so the real
//! server's direct reply comes back to an ordinary UDP socket.
//!
//! Everything is removed when the lab is dropped, also when a test fails.

use std::{
    fs, io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::{Child, Command, Output},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    lab::{self, Host, UDP_PORT, VIP4, VIP6},
    netns::{self, Netns},
    packet::{self, L3},
};

pub struct TunLab {
    pub sender: Host,
    pub real: Host,
    /// Scratch space: lb-decap's pid file, log and saved settings, lb-udp-echo's log.
    pub dir: PathBuf,
    echo: Option<Child>,
}

/// What came back for a query.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub from: SocketAddr,
    pub text: String,
}

impl TunLab {
    /// The two namespaces, linked and addressed; the real server not set up yet.
    pub fn start() -> Result<Self> {
        lab::ensure_root()?;
        lab::remove_orphans();
        let prefix = netns::unique_prefix();
        let dir = std::env::temp_dir().join(format!("{}{prefix}", lab::SCRATCH));
        fs::create_dir_all(&dir)?;
        let sender = Netns::create(format!("{prefix}-sender"))?;
        let real = Netns::create(format!("{prefix}-rs1"))?;
        netns::run(Command::new("ip").args(["link", "add", "eth0", "netns", sender.name()]).args([
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            real.name(),
        ]))
        .context("creating the veth pair")?;
        let sender = lab::host_on_eth0(sender, "sender", 2, 1)?;
        let real = lab::host_on_eth0(real, "rs1", 2, 11)?;
        // The director owns the VIPs: replies from them come from the link.
        sender.netns.run(&["ip", "route", "add", "203.0.113.0/24", "dev", "eth0"])?;
        sender.netns.run(&["ip", "-6", "route", "add", "2001:db8:100::/64", "dev", "eth0"])?;
        Ok(Self { sender, real, dir, echo: None })
    }

    /// `deploy/realserver.sh ARGS` on the real server, with `lb-decap` on its PATH and
    /// its state in the lab's directory; returns stdout.
    pub fn realserver(&self, args: &[&str]) -> Result<String> {
        let script = lab::workspace_root().join("deploy/realserver.sh");
        let mut command = self.on_real("sh");
        command.arg(&script).args(args);
        Ok(String::from_utf8_lossy(&netns::run(&mut command)?.stdout).into_owned())
    }

    /// `lb-decap status` on the real server.
    pub fn decap_status(&self) -> Result<String> {
        let output = netns::run(self.on_real("lb-decap").arg("status"))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A command on the real server, with the workspace's binaries first on its PATH
    /// and the script's state in the lab's directory.
    fn on_real(&self, program: &str) -> Command {
        let bin_dir = lab::binary("lb-decap").ok().and_then(|path| path.parent().map(PathBuf::from));
        let path = std::env::var("PATH").unwrap_or_default();
        let mut command = self.real.netns.command(program);
        if let Some(bin_dir) = bin_dir {
            command.env("PATH", format!("{}:{path}", bin_dir.display()));
        }
        command.env("LB_RUN_DIR", &self.dir);
        command
    }

    /// `lb-udp-echo` answering on both VIPs with the real server's name.
    pub fn start_echo(&mut self) -> Result<()> {
        let log = fs::File::create(self.dir.join("lb-udp-echo.log"))?;
        let child = self
            .real
            .netns
            .command(&lab::binary("lb-udp-echo")?.to_string_lossy())
            .args([self.real.name.clone(), format!("{VIP4}:{UDP_PORT}"), format!("[{VIP6}]:{UDP_PORT}")])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting lb-udp-echo")?;
        self.echo = Some(child);
        Ok(())
    }

    /// A client query from the sender's `port` to `vip`, sent in a tunnel to `outer`
    /// (the real server's address, either family); the answer, if one comes within
    /// `wait`.
    pub fn tunnelled_query(&self, outer: IpAddr, vip: IpAddr, port: u16, wait: Duration) -> Result<Answer> {
        let client =
            SocketAddr::new(if vip.is_ipv4() { self.sender.ipv4.into() } else { self.sender.ipv6.into() }, port);
        let frame = packet::udp_frame(client, SocketAddr::new(vip, UDP_PORT), b"who are you?");
        let (socket, tunnel) = self.sender.netns.within(|| {
            let socket = UdpSocket::bind(client).with_context(|| format!("binding {client}"))?;
            Ok((socket, tunnel_socket(outer, &frame[L3..])?))
        })?;
        socket.set_read_timeout(Some(wait))?;
        send_to(&tunnel, outer, &frame[L3..]).with_context(|| format!("sending the tunnel to {outer}"))?;
        let mut buffer = [0u8; 64];
        let (len, from) =
            socket.recv_from(&mut buffer).with_context(|| format!("no answer to {client} -> {vip} via {outer}"))?;
        Ok(Answer { from, text: String::from_utf8_lossy(&buffer[..len]).into_owned() })
    }

    /// Whether an XDP program is attached to the real server's eth0.
    pub fn xdp_attached(&self) -> Result<bool> {
        let link = self.real.netns.run(&["ip", "-details", "link", "show", "dev", "eth0"])?;
        Ok(String::from_utf8_lossy(&link.stdout).contains("prog/xdp"))
    }

    /// The commands of the processes in the real server's namespace.
    pub fn real_processes(&self) -> Result<Vec<String>> {
        let pids = netns::run(Command::new("ip").args(["netns", "pids", self.real.netns.name()]))?;
        Ok(String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .map(|comm| comm.trim().to_owned())
            .collect())
    }

    /// A sysctl of the real server, e.g. `net/ipv4/conf/all/rp_filter`.
    pub fn real_sysctl(&self, name: &str) -> Result<String> {
        Ok(out(self.real.netns.run(&["cat", &format!("/proc/sys/{name}")])?).trim().to_owned())
    }

    pub fn set_real_sysctl(&self, name: &str, value: &str) -> Result<()> {
        self.real.netns.run(&["sh", "-c", &format!("echo {value} > /proc/sys/{name}")])?;
        Ok(())
    }
}

impl Drop for TunLab {
    fn drop(&mut self) {
        if let Some(echo) = &mut self.echo {
            let _ = echo.kill();
            let _ = echo.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn out(output: Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A raw socket of `outer`'s family whose protocol is the tunnel's for `inner`: 4 for
/// an IPv4 packet, 41 for IPv6. The kernel writes the outer header around what is sent.
fn tunnel_socket(outer: IpAddr, inner: &[u8]) -> Result<OwnedFd> {
    let family = if outer.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let protocol = if inner[0] >> 4 == 6 { packet::PROTO_IPV6 } else { packet::PROTO_IPIP };
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(protocol)) };
    if fd < 0 {
        bail!("opening a raw socket for protocol {protocol}: {}", io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_to(socket: &OwnedFd, to: IpAddr, bytes: &[u8]) -> io::Result<()> {
    let sent = match to {
        IpAddr::V4(v4) => {
            let address = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: the buffer and the address live across the call, with their sizes.
            unsafe { sendto(socket, bytes, (&raw const address).cast(), size_of::<libc::sockaddr_in>()) }
        }
        IpAddr::V6(v6) => {
            let address = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { sendto(socket, bytes, (&raw const address).cast(), size_of::<libc::sockaddr_in6>()) }
        }
    };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// sendto(2).
///
/// # Safety
/// `address` points at a socket address of `len` bytes.
unsafe fn sendto(socket: &OwnedFd, bytes: &[u8], address: *const libc::sockaddr, len: usize) -> isize {
    // SAFETY: the caller vouches for the address; the buffer is a live slice.
    unsafe { libc::sendto(socket.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0, address, len as libc::socklen_t) }
}
