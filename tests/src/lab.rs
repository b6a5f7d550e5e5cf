//! The lab: a client, a director and real servers on one Ethernet segment (a bridge in
//! a namespace of its own), each in its own network namespace, set up as an LVS-DR site
//! is set up by hand: the director owns the VIPs, each real server has them on its
//! loopback with `arp_ignore=1` / `arp_announce=2` (by `deploy/realserver.sh`) and runs
//! nginx answering with its own name. Everything is removed when the lab is dropped.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use crate::netns::{self, Netns};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const HTTP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;

pub struct Host {
    pub netns: Netns,
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub mac: String,
}

/// How the director is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arms {
    /// Client, director and real servers on one segment, set up for LVS-DR.
    One,
    /// Client, director and real servers on one segment, the real servers set up for
    /// LVS-TUN (`realserver.sh start --tun`: `lb-decap`, no tunnel device).
    Tunnel,
    /// Clients on one segment (the director's `eth0`), real servers on another
    /// (198.18.21.0/24, 2001:db8:21::/64, the director's `eth1` at .1 and ::1) with
    /// the director as their default gateway (`gateway: true`, LVS-NAT) or with no
    /// route beyond their segment at all (`gateway: false`, for Full-NAT).
    Two { gateway: bool },
}

impl Arms {
    /// Whether client, director and real servers share one segment.
    pub fn one_segment(self) -> bool {
        matches!(self, Self::One | Self::Tunnel)
    }
}

/// The director's address on the real servers' segment of a two-armed lab.
pub const INSIDE4: Ipv4Addr = Ipv4Addr::new(198, 18, 21, 1);
pub const INSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x21, 0, 0, 0, 0, 1);
/// The director's Full-NAT local addresses in a two-armed lab.
pub const LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 18, 21, 100);
pub const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x21, 0, 0, 0, 0, 0x100);
/// The port real servers also serve HTTP on, for port mapping.
pub const MAPPED_HTTP_PORT: u16 = 8080;
/// Bytes of the file real servers serve at `/big`.
pub const BIG_FILE_LEN: usize = 4 << 20;

pub struct Lab {
    pub arms: Arms,
    pub client: Host,
    pub director: Host,
    pub reals: Vec<Host>,
    /// Scratch space: configurations, logs, nginx's files.
    pub dir: PathBuf,
    servers: Vec<Child>,
    /// Each real server's nginx, by index: stopped and started by health tests.
    nginx: Mutex<Vec<Option<Child>>>,
    /// Hold `xdp_pass` on the switch side of the director's links.
    _veth_helpers: Vec<Ebpf>,
    _switch: Netns,
}

/// What the client's nftables counted: packets and bytes it sent to each VIP's HTTP
/// port, and replies from a VIP by the sender's MAC.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientCounters {
    pub sent4: Count,
    pub sent6: Count,
    pub replies_from_director: Count,
    pub replies_from_reals: Count,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

const CLIENT_COUNTERS: [&str; 4] = ["sent4", "sent6", "replies_from_director", "replies_from_reals"];

/// The client's nftables: what leaves for the VIPs (at output, so before any offload
/// splits or merges packets), and who the HTTP replies come from (at the device's ingress).
const CLIENT_RULESET: &str = r#"
table inet lab {
  counter sent4 {}
  counter sent6 {}
  chain out {
    type filter hook output priority 0;
    ip daddr VIP4 tcp dport PORT counter name sent4
    ip6 daddr VIP6 tcp dport PORT counter name sent6
  }
}
table netdev lab {
  counter replies_from_director {}
  counter replies_from_reals {}
  chain in {
    type filter hook ingress device "eth0" priority 0;
    ether saddr DIRECTOR_MAC ip saddr VIP4 tcp sport PORT counter name replies_from_director
    ether saddr DIRECTOR_MAC ip6 saddr VIP6 tcp sport PORT counter name replies_from_director
    ether saddr { REAL_MACS } ip saddr VIP4 tcp sport PORT counter name replies_from_reals
    ether saddr { REAL_MACS } ip6 saddr VIP6 tcp sport PORT counter name replies_from_reals
  }
}
"#;

/// One HTTP exchange as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The body: the answering real server's name; empty if the request failed.
    pub body: String,
    pub status: u16,
    pub local_port: u16,
}

impl Lab {
    /// Builds the one-armed (LVS-DR) lab with `reals` real servers, all serving HTTP,
    /// and waits until each answers the client directly.
    pub fn start(reals: usize) -> Result<Self> {
        Self::start_with(reals, Arms::One)
    }

    /// Builds a lab wired as `arms` says, with `reals` real servers serving HTTP (on
    /// port 80 and [`MAPPED_HTTP_PORT`]) and UDP, and waits until each answers.
    pub fn start_with(reals: usize, arms: Arms) -> Result<Self> {
        ensure_root()?;
        remove_orphans();
        let prefix = netns::unique_prefix();
        let dir = std::env::temp_dir().join(format!("{SCRATCH}{prefix}"));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("big.bin"), big_file())?;
        mount_bpf_fs(&dir)?;

        let switch = Netns::create(format!("{prefix}-switch"))?;
        for bridge in ["br0", "br1"] {
            switch.run(&["ip", "link", "add", bridge, "type", "bridge"])?;
            switch.run(&["ip", "link", "set", bridge, "up"])?;
        }
        let outside = Segment { bridge: "br0", subnet: 1 };
        let inside = Segment { bridge: "br1", subnet: 21 };
        let host = |name: &str, segment: &Segment, last: u8| plug(&switch, &prefix, name, segment, last);
        let client = host("client", &outside, 1)?;
        let director = host("director", &outside, 2)?;
        let reals_on = if arms.one_segment() { &outside } else { &inside };
        let reals: Vec<Host> =
            (0..reals).map(|i| host(&format!("rs{}", i + 1), reals_on, 11 + i as u8)).collect::<Result<_>>()?;

        // The director owns the VIPs, as keepalived would give them to it; the client
        // reaches them on the segment, so the director answers ARP and ND for them.
        director.netns.run(&["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "eth0"])?;
        director.netns.run(&["ip", "addr", "add", &format!("{VIP6}/128"), "dev", "eth0", "nodad"])?;
        client.netns.run(&["ip", "route", "add", "203.0.113.0/24", "dev", "eth0"])?;
        client.netns.run(&["ip", "-6", "route", "add", "2001:db8:100::/64", "dev", "eth0"])?;

        let mut veth_helpers = vec![attach_veth_helper(&switch, "director")?];
        if let Arms::Two { gateway } = arms {
            veth_helpers.push(wire_inside(&switch, &director, &reals, gateway)?);
        }
        let mut lab = Self {
            arms,
            client,
            director,
            reals,
            dir,
            servers: Vec::new(),
            nginx: Mutex::default(),
            _veth_helpers: veth_helpers,
            _switch: switch,
        };
        for i in 0..lab.reals.len() {
            lab.setup_real(i)?;
        }
        lab.wait_for_servers()?;
        Ok(lab)
    }

    /// LVS-DR real-server set-up with the project's script (a NAT real server needs
    /// none), then nginx and the UDP service.
    fn setup_real(&mut self, i: usize) -> Result<()> {
        let real = &self.reals[i];
        let script = workspace_root().join("deploy/realserver.sh");
        // Behind a one-armed director the real servers answer from the VIPs; behind a
        // two-armed one (NAT) they are addressed as themselves.
        let udp_addresses = if self.arms.one_segment() {
            let mut command = real.netns.command("sh");
            command.arg(&script).arg("start");
            if self.arms == Arms::Tunnel {
                let bin_dir = binary("lb-decap")?.parent().map(PathBuf::from).unwrap_or_default();
                let path = std::env::var("PATH").unwrap_or_default();
                command.arg("--tun").env("PATH", format!("{}:{path}", bin_dir.display()));
                command.env("LB_RUN_DIR", self.dir.join(format!("{}-run", real.name)));
            }
            netns::run(command.args([VIP4.to_string(), VIP6.to_string()]))?;
            [format!("{VIP4}:{UDP_PORT}"), format!("[{VIP6}]:{UDP_PORT}")]
        } else {
            [format!("{}:{UDP_PORT}", real.ipv4), format!("[{}]:{UDP_PORT}", real.ipv6)]
        };
        fs::write(self.nginx_conf_of(i), nginx_conf(&real.name, &self.dir))?;
        self.start_nginx(i)?;
        let echo = real
            .netns
            .command(&binary("lb-udp-echo")?.to_string_lossy())
            .arg(&real.name)
            .args(udp_addresses)
            .spawn()
            .context("starting lb-udp-echo")?;
        self.servers.push(echo);
        Ok(())
    }

    fn nginx_conf_of(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}-nginx.conf", self.reals[i].name))
    }

    /// Starts real server `i`'s nginx (again).
    pub fn start_nginx(&self, i: usize) -> Result<()> {
        let child = spawn_nginx(&self.reals[i], &self.nginx_conf_of(i), &self.dir)?;
        let mut nginx = self.nginx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let len = nginx.len().max(i + 1);
        nginx.resize_with(len, || None);
        nginx[i] = Some(child);
        Ok(())
    }

    /// Stops real server `i`'s nginx: its port refuses connections from then on.
    pub fn stop_nginx(&self, i: usize) -> Result<()> {
        let mut nginx = self.nginx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut child = nginx.get_mut(i).and_then(Option::take).context("nginx is not running there")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    fn wait_for_servers(&self) -> Result<()> {
        self.reals.iter().try_for_each(wait_for_http)
    }

    /// `count` HTTP GETs of `url` from the client, each on a connection of its own (so
    /// each from a new source port), with curl.
    pub fn http_get(&self, url: &str, count: usize) -> Result<Vec<Reply>> {
        self.http_get_from(None, url, count)
    }

    /// Like [`Lab::http_get`], from the client's `source` address when given.
    pub fn http_get_from(&self, source: Option<IpAddr>, url: &str, count: usize) -> Result<Vec<Reply>> {
        let mut command = self.client.netns.command("curl");
        if let Some(source) = source {
            command.args(["--interface", &source.to_string()]);
        }
        command.args(["--silent", "--globoff", "--max-time", "5", "--header", "Connection: close"]);
        command.args(["--write-out", " %{http_code} %{local_port}\\n"]);
        for _ in 0..count {
            command.arg(url);
        }
        let output = command.output().context("running curl (run `cargo xtask setup`)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let replies: Vec<Reply> = text.lines().map(parse_reply).collect::<Result<_>>()?;
        if replies.len() != count {
            bail!("curl reported {} of {count} requests: {text}", replies.len());
        }
        Ok(replies)
    }

    /// One UDP query from the client's `port` to `address`; returns the answer (the
    /// real server's name). (Ports the kernel picks for UDP are random and may repeat a
    /// flow; tests that count new flows choose them.)
    pub fn udp_query(&self, port: u16, address: SocketAddr) -> Result<String> {
        let socket = self.client.netns.within(|| {
            let local = SocketAddr::new(
                if address.is_ipv4() { self.client.ipv4.into() } else { self.client.ipv6.into() },
                port,
            );
            UdpSocket::bind(local).with_context(|| format!("binding {local}"))
        })?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.connect(address)?;
        socket.send(b"who are you?")?;
        let mut answer = [0u8; 64];
        let len = socket.recv(&mut answer).with_context(|| format!("no answer from {address}"))?;
        Ok(String::from_utf8_lossy(&answer[..len]).into_owned())
    }

    /// A TCP connection from the client to `address`, held open by the caller.
    pub fn connect(&self, address: SocketAddr) -> Result<KeptAlive> {
        self.client.netns.within(|| KeptAlive::connect(address))
    }

    /// The standard configuration: an IPv4 and an IPv6 web service (TCP) and DNS-like
    /// service (UDP) over every real server, with the given weights, scheduled by
    /// `scheduler`, forwarded by direct routing.
    pub fn config(&self, scheduler: &str, weights: &[u32]) -> String {
        self.config_for("dr", scheduler, weights, "")
    }

    /// Like [`Lab::config`], forwarded by `forwarding`, with `extra` (YAML lines
    /// indented for a service's fields) in every service. NAT and Full-NAT web
    /// services map port 80 to the real servers' [`MAPPED_HTTP_PORT`].
    pub fn config_for(&self, forwarding: &str, scheduler: &str, weights: &[u32], extra: &str) -> String {
        let mut yaml = String::from("interfaces:\n  - name: eth0\n    xdp_mode: native\n");
        if !self.arms.one_segment() {
            yaml += "  - name: eth1\n    xdp_mode: native\n";
        }
        let _ =
            write!(yaml, "metrics_listen: 127.0.0.1:9798\napi_socket: {}\nservices:\n", self.api_socket().display());
        let services = [
            ("web4", IpAddr::V4(VIP4), HTTP_PORT, "tcp"),
            ("web6", IpAddr::V6(VIP6), HTTP_PORT, "tcp"),
            ("dns4", IpAddr::V4(VIP4), UDP_PORT, "udp"),
            ("dns6", IpAddr::V6(VIP6), UDP_PORT, "udp"),
        ];
        let mapped = matches!(forwarding, "nat" | "fnat");
        for (name, vip, port, protocol) in services {
            let _ = write!(
                yaml,
                "  - name: {name}\n    vip: {vip}\n    port: {port}\n    protocol: {protocol}\n    scheduler: {scheduler}\n    forwarding: {forwarding}\n{extra}    reals:\n"
            );
            let real_port =
                if mapped && protocol == "tcp" { format!(", port: {MAPPED_HTTP_PORT}") } else { String::new() };
            for (real, weight) in self.reals.iter().zip(weights) {
                let address = if vip.is_ipv4() { IpAddr::V4(real.ipv4) } else { IpAddr::V6(real.ipv6) };
                let _ = writeln!(yaml, "      - {{ address: {address}, weight: {weight}{real_port} }}");
            }
        }
        yaml
    }

    /// `path` from the client through the VIP, over one connection; the body.
    pub fn fetch(&self, vip: IpAddr, path: &str) -> Result<Vec<u8>> {
        let url = match vip {
            IpAddr::V4(v4) => format!("http://{v4}:{HTTP_PORT}{path}"),
            IpAddr::V6(v6) => format!("http://[{v6}]:{HTTP_PORT}{path}"),
        };
        let output =
            self.client.netns.command("curl").args(["--silent", "--fail", "--max-time", "20", &url]).output()?;
        if !output.status.success() {
            bail!("curl {url} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
        }
        Ok(output.stdout)
    }

    /// Sends `data` from the client through the VIP with an HTTP PUT to
    /// `/upload/NAME`, and returns the name of the real server that stored it intact.
    pub fn upload(&self, vip: IpAddr, name: &str, data: &[u8]) -> Result<String> {
        let file = self.dir.join(format!("client-{name}"));
        fs::write(&file, data)?;
        let url = match vip {
            IpAddr::V4(v4) => format!("http://{v4}:{HTTP_PORT}/upload/{name}"),
            IpAddr::V6(v6) => format!("http://[{v6}]:{HTTP_PORT}/upload/{name}"),
        };
        let output = self
            .client
            .netns
            .command("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "30", "--upload-file"])
            .arg(&file)
            .arg(&url)
            .output()?;
        if !output.status.success() {
            bail!("curl --upload-file {url} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
        }
        for real in &self.reals {
            let stored = self.dir.join(format!("{}-uploads/upload/{name}", real.name));
            if let Ok(bytes) = fs::read(&stored) {
                ensure!(
                    bytes == data,
                    "{}: the upload arrived with {} of {} bytes, or changed",
                    real.name,
                    bytes.len(),
                    data.len()
                );
                return Ok(real.name.clone());
            }
        }
        bail!("no real server stored the upload {name}")
    }

    /// Starts counting in the client (see [`ClientCounters`]).
    pub fn count_client_traffic(&self) -> Result<()> {
        let reals: Vec<&str> = self.reals.iter().map(|real| real.mac.as_str()).collect();
        let reals = reals.join(", ");
        let ruleset = CLIENT_RULESET
            .replace("VIP4", &VIP4.to_string())
            .replace("VIP6", &VIP6.to_string())
            .replace("PORT", &HTTP_PORT.to_string())
            .replace("DIRECTOR_MAC", &self.director.mac)
            .replace("REAL_MACS", &reals);
        let path = self.dir.join("client.nft");
        fs::write(&path, ruleset)?;
        self.client.netns.run(&["nft", "-f", &path.to_string_lossy()]).context("installing the client's counters")?;
        Ok(())
    }

    pub fn client_counters(&self) -> Result<ClientCounters> {
        let mut counts = [Count::default(); 4];
        for (count, name) in counts.iter_mut().zip(CLIENT_COUNTERS) {
            let family = if name.starts_with("sent") { "inet" } else { "netdev" };
            let out = self.client.netns.run(&["nft", "list", "counter", family, "lab", name])?;
            let text = String::from_utf8_lossy(&out.stdout);
            let number = |key: &str| -> Result<u64> {
                let at = text.find(key).with_context(|| format!("no {key} in {text}"))? + key.len();
                let digits: String = text[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
                Ok(digits.parse()?)
            };
            *count = Count { packets: number("packets")?, bytes: number("bytes")? };
        }
        let [sent4, sent6, replies_from_director, replies_from_reals] = counts;
        Ok(ClientCounters { sent4, sent6, replies_from_director, replies_from_reals })
    }

    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("lb.sock")
    }

    /// The agent's `pin_path`: in the lab's own BPF file system, so labs never share
    /// pins, and none outlive the lab.
    pub fn pin_path(&self) -> PathBuf {
        self.dir.join("bpffs/lb")
    }

    /// Starts `lb-agent` on the director with `yaml`, and waits until it answers.
    pub fn start_agent(&self, yaml: &str) -> Result<Agent> {
        self.start_agent_with(yaml, &[])
    }

    /// Like [`Lab::start_agent`], with more command-line arguments.
    pub fn start_agent_with(&self, yaml: &str, args: &[&str]) -> Result<Agent> {
        let config = self.dir.join("lb.yaml");
        fs::write(&config, self.with_pin_path(yaml))?;
        self.run_agent(&binary("lb-agent")?, &config, &self.api_socket(), args)
    }

    /// `yaml` with the lab's `pin_path` (last, so a file's first lines stay its own),
    /// unless it names one.
    pub fn with_pin_path(&self, yaml: &str) -> String {
        with_pin_line(yaml, &format!("pin_path: {}", self.pin_path().display()))
    }

    /// [`run_agent`] on the director.
    pub fn run_agent(&self, agent: &Path, config: &Path, socket: &Path, args: &[&str]) -> Result<Agent> {
        run_agent(&self.director.netns, agent, config, socket, args)
    }

    /// Runs a command on the director (metrics with curl, lbctl, ...); returns stdout.
    pub fn on_director(&self, argv: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.director.netns.run(argv)?.stdout).into_owned())
    }

    /// The id of the XDP program attached to the director's eth0.
    pub fn xdp_program(&self) -> Result<u32> {
        let link = self.on_director(&["ip", "-details", "link", "show", "dev", "eth0"])?;
        let at = link.find("prog/xdp id ").map(|at| at + "prog/xdp id ".len());
        let id = at.and_then(|at| link[at..].split_whitespace().next()?.parse().ok());
        id.ok_or_else(|| anyhow!("no XDP program on eth0:\n{link}"))
    }

    /// The agent's /metrics, fetched with curl on the director.
    pub fn metrics(&self) -> Result<String> {
        self.on_director(&["curl", "--silent", "--fail", "http://127.0.0.1:9798/metrics"])
    }
}

/// Starts `agent` (an lb-agent binary) in `netns` with the configuration file `config`,
/// and waits until it answers on `socket`. It logs to `config` with the extension `log`
/// (appending: each agent's own part is its [`Agent::log_text`]). The returned agent
/// takes that director out of service (`--detach`) when dropped.
pub fn run_agent(netns: &Netns, agent: &Path, config: &Path, socket: &Path, args: &[&str]) -> Result<Agent> {
    let log_path = config.with_extension("log");
    let log = fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let before = fs::metadata(&log_path)?.len() as usize;
    let child = netns
        .command(&agent.to_string_lossy())
        .args(["--config", &config.to_string_lossy()])
        .args(args)
        .env("RUST_LOG", "info,netlink_packet_route=error")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("starting lb-agent")?;
    let detach = Some(netns.command(&agent.to_string_lossy()));
    let text = fs::read_to_string(config)?;
    let pin_path = text.lines().find(|line| line.starts_with("pin_path:")).map(str::to_owned);
    let mut agent = Agent { child, config: config.to_owned(), log: log_path, log_start: before, detach, pin_path };
    wait_until(Duration::from_secs(15), "lb-agent to answer on its socket", || {
        if let Some(status) = agent.child.try_wait()? {
            agent.detach = None;
            bail!("lb-agent exited ({status}):\n{}", agent.log_text());
        }
        Ok(lb_api::call(socket, &lb_api::Request::List).is_ok())
    })?;
    Ok(agent)
}

impl Drop for Lab {
    fn drop(&mut self) {
        let nginx = self.nginx.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for server in self.servers.iter_mut().chain(nginx.iter_mut().flatten()) {
            let _ = server.kill();
            let _ = server.wait();
        }
        remove_scratch(&self.dir);
    }
}

/// An HTTP/1.1 connection kept alive across requests.
pub struct KeptAlive {
    reader: BufReader<TcpStream>,
}

impl KeptAlive {
    /// Connects to `address` from the calling thread's namespace.
    pub fn connect(address: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self { reader: BufReader::new(stream) })
    }

    /// The client's port of this connection.
    pub fn local_port(&self) -> Result<u16> {
        Ok(self.reader.get_ref().local_addr()?.port())
    }

    /// One GET on this connection; returns the body (the real server's name).
    pub fn get(&mut self) -> Result<String> {
        self.reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
        let mut length = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection was closed");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("no Content-Length")?];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8(body)?)
    }
}

/// A running `lb-agent`. Dropped, it is stopped with SIGTERM and the director taken
/// out of service (`lb-agent --detach`), so the next test starts afresh.
pub struct Agent {
    child: Child,
    pub config: PathBuf,
    /// The lab's agents' log: this one's from `log_start` on.
    pub log: PathBuf,
    log_start: usize,
    /// The same binary, in the director's namespace, for `--detach` (once).
    detach: Option<Command>,
    /// The configuration's `pin_path:` line, kept in the files it is reloaded with.
    pin_path: Option<String>,
}

impl Agent {
    /// Writes a new configuration (keeping the pin_path it started with, unless the new one
    /// names one) and sends SIGHUP; waits until the agent's log shows the reload's outcome
    /// and returns the lines it logged for it.
    pub fn reload(&self, yaml: &str) -> Result<String> {
        match &self.pin_path {
            Some(line) => fs::write(&self.config, with_pin_line(yaml, line))?,
            None => fs::write(&self.config, yaml)?,
        }
        let before = self.log_text().len();
        self.signal(libc::SIGHUP)?;
        let mut outcome = String::new();
        wait_until(Duration::from_secs(15), "lb-agent to finish reloading", || {
            outcome = self.log_text().get(before..).unwrap_or_default().to_owned();
            Ok(outcome.contains("reloaded:") || outcome.contains("keeping the running configuration"))
        })?;
        Ok(outcome)
    }

    /// What this agent logged.
    pub fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.get(self.log_start..).unwrap_or_default().to_owned()
    }

    /// Stops the agent (SIGTERM; the data path stays) and runs `lb-agent --detach`;
    /// returns the latter's output.
    pub fn take_out_of_service(mut self) -> Result<String> {
        self.detach()
    }

    fn detach(&mut self) -> Result<String> {
        self.terminate()?;
        let Some(mut detach) = self.detach.take() else { return Ok(String::new()) };
        let output = netns::run(detach.args(["--config", &self.config.to_string_lossy(), "--detach"]))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn signal(&self, signal: i32) -> Result<()> {
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            bail!("signalling lb-agent: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the agent with SIGTERM and returns its exit status. The data path stays
    /// pinned, forwarding, for the next agent (whose drop takes it out of service).
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.detach = None;
        self.terminate()
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("lb-agent ignored SIGTERM for 10 s")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            eprintln!("taking the lab's director out of service: {err:#}");
        }
    }
}

/// An Ethernet segment of the lab: a bridge of the switch, and its subnets
/// 198.18.SUBNET.0/24 and 2001:db8:SUBNET::/64.
pub struct Segment {
    pub bridge: &'static str,
    pub subnet: u8,
}

/// A host namespace with `eth0` plugged into `segment`.
pub fn plug(switch: &Netns, prefix: &str, name: &str, segment: &Segment, last: u8) -> Result<Host> {
    let netns = Netns::create(format!("{prefix}-{name}"))?;
    create_port(switch, &netns, "eth0", name, segment)?;
    host_on_eth0(netns, name, segment.subnet, last)
}

/// An interface `device` of `netns` on `segment` (its switch-side end named
/// `switch_port`), not addressed yet.
pub fn create_port(switch: &Netns, netns: &Netns, device: &str, switch_port: &str, segment: &Segment) -> Result<()> {
    Command::new("ip")
        .args(["link", "add", device, "netns", netns.name(), "type", "veth", "peer", "name", switch_port])
        .args(["netns", switch.name()])
        .status()
        .context("creating a veth pair")?
        .success()
        .then_some(())
        .ok_or_else(|| anyhow!("creating the veth pair of {switch_port}"))?;
    switch.run(&["ip", "link", "set", switch_port, "master", segment.bridge, "up"])?;
    Ok(())
}

/// `netns` as a host called `name`: its `eth0` addressed 198.18.`subnet`.`last`/24 and
/// 2001:db8:`subnet`::`last`/64, up, computing its checksums in full.
pub fn host_on_eth0(netns: Netns, name: &str, subnet: u8, last: u8) -> Result<Host> {
    let (ipv4, ipv6) = address(&netns, "eth0", subnet, last)?;
    let mac = String::from_utf8_lossy(&netns.run(&["cat", "/sys/class/net/eth0/address"])?.stdout).trim().to_owned();
    Ok(Host { netns, name: name.to_owned(), ipv4, ipv6, mac })
}

/// Addresses `device` of `netns` with 198.18.`subnet`.`last`/24 and
/// 2001:db8:`subnet`::`last`/64, brings it up, and has it compute its checksums in full.
pub fn address(netns: &Netns, device: &str, subnet: u8, last: u8) -> Result<(Ipv4Addr, Ipv6Addr)> {
    let ipv4 = Ipv4Addr::new(198, 18, subnet, last);
    // 2001:db8:1::11 beside 198.18.1.11: the groups read as the IPv4 bytes do.
    let group = |byte: u8| u16::from_str_radix(&byte.to_string(), 16).expect("decimal digits are hex digits");
    let ipv6 = Ipv6Addr::new(0x2001, 0xdb8, group(subnet), 0, 0, 0, 0, group(last));
    netns.run(&["ip", "addr", "add", &format!("{ipv4}/24"), "dev", device])?;
    netns.run(&["ip", "addr", "add", &format!("{ipv6}/64"), "dev", device, "nodad"])?;
    netns.run(&["ip", "link", "set", device, "up"])?;
    // A veth leaves TCP/UDP checksums to be finished by whoever transmits the packet
    // last; once XDP has sent a frame on, nobody does. Compute them here, as a NIC would.
    netns.run(&["ethtool", "-K", device, "tx", "off"])?;
    Ok((ipv4, ipv6))
}

/// The director's second arm: `eth1` on the real servers' segment, forwarding on (its
/// replies are routed by the kernel's tables), the Full-NAT local addresses, and the
/// real servers' default routes through it when `gateway`.
fn wire_inside(switch: &Netns, director: &Host, reals: &[Host], gateway: bool) -> Result<Ebpf> {
    let inside = Segment { bridge: "br1", subnet: 21 };
    create_port(switch, &director.netns, "eth1", "director1", &inside)?;
    address(&director.netns, "eth1", inside.subnet, 1)?;
    let netns = &director.netns;
    netns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
    // A director that routes tells clients on its link to go around it; not here.
    netns.run(&["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth1.send_redirects=0"])?;
    netns.run(&["ip", "addr", "add", &format!("{LOCAL4}/32"), "dev", "eth1"])?;
    netns.run(&["ip", "addr", "add", &format!("{LOCAL6}/128"), "dev", "eth1", "nodad"])?;
    if gateway {
        for real in reals {
            real.netns.run(&["ip", "route", "add", "default", "via", &INSIDE4.to_string()])?;
            real.netns.run(&["ip", "-6", "route", "add", "default", "via", &INSIDE6.to_string()])?;
        }
    }
    attach_veth_helper(switch, "director1")
}

/// The contents of `/big`: bytes that differ from position to position, so a
/// reordered or corrupted transfer shows.
pub fn big_file() -> Vec<u8> {
    (0..BIG_FILE_LEN).map(|i| (i % 251) as u8).collect()
}

/// `xdp_pass` on the switch side of `port`: without an XDP program there, the kernel
/// drops what the director sends with `XDP_TX`.
pub fn attach_veth_helper(switch: &Netns, port: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(lb_agent::dataplane::TESTBED_OBJECT).context("loading the test bed object")?;
    let program: &mut Xdp = ebpf.program_mut("xdp_pass").context("no xdp_pass in the test bed object")?.try_into()?;
    program.load()?;
    switch.within(|| {
        program.attach(port, XdpMode::Driver).context("attaching xdp_pass")?;
        Ok(())
    })?;
    Ok(ebpf)
}

/// Starts nginx on `real` with the configuration file `conf` (from [`nginx_conf`]),
/// logging into `dir`.
pub fn spawn_nginx(real: &Host, conf: &Path, dir: &Path) -> Result<Child> {
    let log = fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{}-nginx.log", real.name)))?;
    real.netns
        .command("nginx")
        .args(["-p", &dir.to_string_lossy(), "-c", &conf.to_string_lossy()])
        .args(["-e", &dir.join(format!("{}-error.log", real.name)).to_string_lossy()])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting nginx (is nginx-light installed? run `cargo xtask setup`)")
}

/// Waits until `real`'s nginx answers with its name (asked on its own address).
pub fn wait_for_http(real: &Host) -> Result<()> {
    let url = format!("http://{}:{MAPPED_HTTP_PORT}/", real.ipv4);
    wait_until(Duration::from_secs(10), &format!("{} to serve HTTP", real.name), || {
        let served = real.netns.command("curl").args(["--silent", "--max-time", "2", &url]).output()?;
        Ok(served.stdout == real.name.as_bytes())
    })
}

/// nginx's configuration for a real server called `name` whose files are in `dir`: it
/// answers `/` with its name.
pub fn nginx_conf(name: &str, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/{name}-nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/{name}-body;\n  proxy_temp_path {dir}/{name}-proxy;\n\
         \x20 fastcgi_temp_path {dir}/{name}-fastcgi;\n  uwsgi_temp_path {dir}/{name}-uwsgi;\n  scgi_temp_path {dir}/{name}-scgi;\n\
         \x20 server {{\n    listen 80 default_server;\n    listen [::]:80 default_server;\n\
         \x20   listen 8080;\n    listen [::]:8080;\n    client_max_body_size 16m;\n\
         \x20   location / {{ default_type text/plain; return 200 \"{name}\"; }}\n\
         \x20   location = /peer {{ default_type text/plain; return 200 \"$remote_addr $server_port\"; }}\n\
         \x20   location = /big {{ alias {dir}/big.bin; }}\n\
         \x20   location /upload/ {{ root {dir}/{name}-uploads; dav_methods PUT; create_full_put_path on; }}\n  }}\n}}\n"
    )
}

fn parse_reply(line: &str) -> Result<Reply> {
    let mut fields = line.rsplitn(3, ' ');
    let port = fields.next().and_then(|p| p.parse().ok());
    let status = fields.next().and_then(|s| s.parse().ok());
    let body = fields.next().unwrap_or_default();
    match (status, port) {
        (Some(status), Some(local_port)) => Ok(Reply { body: body.to_owned(), status, local_port }),
        _ => bail!("unexpected curl output line {line:?}"),
    }
}

/// Scratch directories are `/tmp/lb-lab-<namespace prefix>`.
pub const SCRATCH: &str = "lb-lab-";

/// Removes every lab of this process (namespaces, processes in them, scratch
/// directories); for signal handlers, where nothing is dropped.
pub fn remove_all() {
    netns::remove_all();
    let mine = format!("{SCRATCH}{}", netns::process_prefix());
    for name in netns::names_in(std::env::temp_dir()) {
        if name.starts_with(&mine) {
            let _ = fs::remove_dir_all(std::env::temp_dir().join(name));
        }
    }
}

/// Removes what labs of processes that are gone left behind.
pub fn remove_orphans() {
    netns::remove_orphans();
    for name in netns::names_in(std::env::temp_dir()) {
        if name.starts_with(SCRATCH) && netns::is_orphan(&name) {
            remove_scratch(&std::env::temp_dir().join(name));
        }
    }
}

/// `yaml` with `line` (a `pin_path:` line) last, unless it names a pin_path already.
fn with_pin_line(yaml: &str, line: &str) -> String {
    if yaml.lines().any(|other| other.starts_with("pin_path:")) {
        return yaml.to_owned();
    }
    let newline = if yaml.is_empty() || yaml.ends_with('\n') { "" } else { "\n" };
    format!("{yaml}{newline}{line}\n")
}

/// Mounts a BPF file system of the lab's own at `dir/bpffs` (for the agent's pins).
pub fn mount_bpf_fs(dir: &Path) -> Result<()> {
    let mount_point = dir.join("bpffs");
    fs::create_dir_all(&mount_point)?;
    netns::run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&mount_point))
        .context("mounting the lab's BPF file system")?;
    Ok(())
}

/// Removes a lab's scratch folder: its BPF file system (with any pins left in it),
/// the agent's state saved for those pins, and the folder.
pub fn remove_scratch(dir: &Path) {
    let _ = Command::new("umount").arg("--lazy").arg(dir.join("bpffs")).stderr(Stdio::null()).status();
    let _ = fs::remove_dir_all(Path::new("/run/lb/state").join(dir.strip_prefix("/").unwrap_or(dir)));
    let _ = fs::remove_dir_all(dir);
}

/// Polls `check` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(100));
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_owned()
}

/// A binary of the workspace: from `LB_BIN_DIR` (set by `cargo xtask`), else the
/// release build under `target/`.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("LB_BIN_DIR").map_or_else(|| workspace_root().join("target/release"), PathBuf::from);
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} is missing: run `cargo xtask build` first", path.display());
    }
    Ok(path)
}

pub fn ensure_root() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    Ok(())
}
