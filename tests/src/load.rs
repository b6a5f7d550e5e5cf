//! Connection load: TCP connections opened from a namespace at a steady rate and held
//! open, each with the moment its handshake completed, for tests that ask how soon a
//! director (or its backup) knows of them.
//!
//! The connections are spread over `lb-load` processes, as a load generator runs
//! several: a process may hold no more connections than its open files limit, and
//! raising that limit is not every root's right (CAP_SYS_RESOURCE).

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Child, ChildStdout, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::{
    net::{TcpSocket, TcpStream},
    task::JoinSet,
    time::MissedTickBehavior,
};

use crate::{lab::binary, netns::Netns};

/// How long a connection may take to open (a lost SYN is sent again after a second).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Files a process needs besides the connections it holds.
const SPARE_FILES: u64 = 256;
/// The most connections one `lb-load` process is given.
const PER_PROCESS: usize = 15_000;
/// The load's client ports are `FIRST_PORT` and up, each process its own run of them,
/// below the namespace's ephemeral ports (from `EPHEMERAL`).
const FIRST_PORT: u16 = 1024;
const EPHEMERAL: u16 = 50_000;

/// Leaves the ports below `EPHEMERAL` to loads from `netns`: the kernel picks the
/// ephemeral ports of its other connections from above them. Before any connection,
/// as a port in use would refuse a load's connection.
pub fn reserve_ports(netns: &Netns) -> Result<()> {
    netns.run(&["sysctl", "-qw", &format!("net.ipv4.ip_local_port_range={EPHEMERAL} 65535")])?;
    Ok(())
}

/// What opening the connections came to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opening {
    pub asked: usize,
    pub established: usize,
    pub failed: usize,
    /// From the first connection asked for to the last one asked for (the slowest
    /// process's), in ns.
    pub asking_ns: u64,
}

impl Opening {
    /// The rate the connections were asked for at, per second.
    pub fn rate(&self) -> f64 {
        self.asked as f64 * 1e9 / self.asking_ns as f64
    }
}

/// The connections each process established: its client port, and when (`monotonic_ns`).
type Established = Arc<Mutex<Vec<(u16, u64)>>>;

/// Connections being opened, then held, until dropped.
pub struct Load {
    established: Established,
    openings: mpsc::Receiver<Result<Opening>>,
    processes: Vec<Child>,
    readers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts opening `rate` connections a second to `to` from `netns`, for `duration`.
    pub fn start(netns: &Netns, to: SocketAddr, rate: usize, duration: Duration) -> Result<Self> {
        let count = (rate as f64 * duration.as_secs_f64()) as usize;
        ensure!(count <= usize::from(EPHEMERAL - FIRST_PORT), "{count} connections: more than the load's ports");
        let range = netns.run(&["sysctl", "-n", "net.ipv4.ip_local_port_range"])?;
        let range = String::from_utf8_lossy(&range.stdout).trim().to_owned();
        ensure!(
            range == format!("{EPHEMERAL}\t65535"),
            "{}'s ephemeral ports are {range}, not above the load's: `load::reserve_ports` before its first connection",
            netns.name()
        );
        let processes = count.div_ceil(PER_PROCESS).max(1);
        let program = binary("lb-load")?;
        let established = Established::default();
        let (report, openings) = mpsc::channel();
        let mut load = Self { established, openings, processes: Vec::new(), readers: Vec::new() };
        for i in 0..processes {
            // Each its share of the rate and of the count, the remainders to the first.
            let share = |total: usize| total / processes + usize::from(i < total % processes);
            let first_port = usize::from(FIRST_PORT) + i * count.div_ceil(processes);
            let mut child = netns
                .command(&program.to_string_lossy())
                .args([to.to_string(), share(rate).to_string(), share(count).to_string(), first_port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting lb-load")?;
            let stdout = child.stdout.take().context("lb-load's output")?;
            load.processes.push(child);
            let (established, report) = (load.established.clone(), report.clone());
            load.readers.push(std::thread::spawn(move || read(stdout, &established, &report)));
        }
        Ok(load)
    }

    /// The client ports of the connections established before `moment` (`monotonic_ns`).
    pub fn established_before(&self, moment: u64) -> Vec<u16> {
        let established = self.established.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        established.iter().filter(|(_, at)| *at < moment).map(|(port, _)| *port).collect()
    }

    /// When the first and the last connection were established (`monotonic_ns`).
    pub fn established_span(&self) -> Option<(u64, u64)> {
        let established = self.established.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let times = established.iter().map(|(_, at)| *at);
        Some((times.clone().min()?, times.max()?))
    }

    /// Waits until every connection asked for is established or has failed.
    pub fn opened(&self) -> Result<Opening> {
        let mut total = Opening::default();
        for _ in &self.processes {
            let opening = self.openings.recv().map_err(|_| anyhow!("an lb-load process ended early"))??;
            total.asked += opening.asked;
            total.established += opening.established;
            total.failed += opening.failed;
            total.asking_ns = total.asking_ns.max(opening.asking_ns);
        }
        Ok(total)
    }
}

impl Drop for Load {
    /// Closing its input lets each process go, and its connections with it.
    fn drop(&mut self) {
        for process in &mut self.processes {
            drop(process.stdin.take());
        }
        for process in &mut self.processes {
            let _ = process.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Follows one process's lines (see [`client`]); one that ends without its report
/// reports that, so that no one waits for it.
fn read(stdout: ChildStdout, established: &Established, report: &mpsc::Sender<Result<Opening>>) {
    let mut reported = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["established", port, at] => {
                if let (Ok(port), Ok(at)) = (port.parse(), at.parse()) {
                    established.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((port, at));
                }
            }
            ["opened", asked, ok, failed, asking_ns] => {
                let opening = (|| {
                    Ok(Opening {
                        asked: asked.parse()?,
                        established: ok.parse()?,
                        failed: failed.parse()?,
                        asking_ns: asking_ns.parse()?,
                    })
                })();
                reported = report.send(opening).is_ok();
            }
            _ => {
                reported = report.send(Err(anyhow!("lb-load said: {line}"))).is_ok();
            }
        }
    }
    if !reported {
        let _ = report.send(Err(anyhow!("an lb-load process ended before it reported")));
    }
}

/// `lb-load`'s work: asks for `count` connections to `to` from ports `first_port` and
/// up, `rate` a second, paced by the millisecond, and prints `established PORT NS` as each completes (NS: the
/// system's monotonic clock), then `opened ASKED ESTABLISHED FAILED ASKING_NS`; holds
/// them until its input closes.
pub fn client(to: SocketAddr, rate: usize, count: usize, first_port: u16) -> Result<()> {
    if usize::from(first_port) + count > usize::from(u16::MAX) {
        bail!("{count} ports from {first_port} go past 65535");
    }
    raise_open_files(count as u64 + SPARE_FILES)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let streams = runtime.block_on(open(to, rate, count, first_port))?;
    // Held until the input closes.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    drop(streams);
    Ok(())
}

async fn open(to: SocketAddr, rate: usize, count: usize, first_port: u16) -> Result<Vec<TcpStream>> {
    let mut connecting = JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let start = monotonic_ns();
    let mut asked = 0;
    while asked < count {
        ticks.tick().await;
        let due = (((monotonic_ns() - start) as f64 * rate as f64 / 1e9) as usize).min(count);
        for port in first_port + asked as u16..first_port + due as u16 {
            connecting.spawn(connect(port, to));
        }
        asked = asked.max(due);
    }
    let asking_ns = monotonic_ns() - start;
    let mut streams = Vec::with_capacity(count);
    let mut failed = 0;
    while let Some(done) = connecting.join_next().await {
        match done? {
            Ok(stream) => streams.push(stream),
            Err(_) => failed += 1,
        }
    }
    println!("opened {asked} {} {failed} {asking_ns}", streams.len());
    std::io::stdout().flush()?;
    Ok(streams)
}

/// Connects from `port`: bound by hand, as the kernel's search for a free port slows
/// to a crawl once tens of thousands go to one address.
async fn connect(port: u16, to: SocketAddr) -> Result<TcpStream> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    // A port another connection left in TIME_WAIT (to another address) serves.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(any, port)).with_context(|| format!("binding port {port}"))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to)).await??;
    println!("established {} {}", stream.local_addr()?.port(), monotonic_ns());
    Ok(stream)
}

/// CLOCK_MONOTONIC, in ns: one clock for every process of the machine.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Lets this process hold `files` open files, within its hard limit.
fn raise_open_files(files: u64) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_max < files {
        bail!("{files} open files are needed, and the hard limit is {}", limit.rlim_max);
    }
    limit.rlim_cur = limit.rlim_cur.max(files);
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!("raising the open files limit to {files}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
