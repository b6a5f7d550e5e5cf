//! The high-availability labs, directors that take over from one another, each in
//! network namespaces of its own and removed when dropped:
//!
//! - [`HaLab::ecmp`]: active-active. A client behind a router (198.18.50.0/24); the
//!   router, the directors and the real servers on one segment (198.18.51.0/24). Each
//!   director runs `lb-agent` (XDP, `dr`) and BIRD with `deploy/bird/bird.conf`,
//!   announcing the VIP by BGP while `deploy/bird/lb-announce watch` finds its agent
//!   serving (from [`HaLab::announce`] on); the router runs
//!   BIRD with `deploy/bird/router.conf` and installs one multipath route through every
//!   director that announces, hashed by addresses and ports. Real servers answer the
//!   client through the router.
//! - [`HaLab::vrrp`]: active/standby. Client, two directors and the real servers on one
//!   segment (198.18.52.0/24); the directors run `lb-agent` and keepalived with
//!   `deploy/keepalived/keepalived-{master,backup}.conf`, whose VRRP instance holds the
//!   VIP and whose notify hooks (`deploy/keepalived/lb-sync-role`) switch the agent's
//!   sync role with lbctl.
//!
//! The shipped files are used as they are, but for addresses, interface names and paths.
//!
//! Each director's agent serves the VIP's web service (nginx on the real servers) and a
//! `load` service, whose real servers only complete handshakes once
//! [`HaLab::listen_for_load`] ran: connections held by the thousand cost them no file.

use std::{
    collections::HashSet,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::Ebpf;

use crate::{
    lab::{
        self, Agent, HTTP_PORT, Host, KeptAlive, SCRATCH, Segment, VIP4, attach_veth_helper, binary, wait_until,
        workspace_root,
    },
    load,
    netns::{self, Netns},
    prometheus::Samples,
};

/// The sync daemon's settings in both labs (`sync:` and keepalived's hooks).
pub const SYNC_ID: u8 = 7;
pub const SYNC_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 1);
pub const SYNC_PORT: u16 = 8848;
/// The `load` service's port.
pub const LOAD_PORT: u16 = 9000;
/// How many connections a real server's `load` listener queues.
const LOAD_BACKLOG: u16 = 65_535;

/// The segments: the client's side of the router, the directors' (ECMP), and the
/// VRRP pair's (everything on one).
const CLIENT_SUBNET: u8 = 50;
const DIRECTORS_SUBNET: u8 = 51;
const PAIR_SUBNET: u8 = 52;
/// The router's addresses: .254 towards the client, .1 towards the directors (the
/// address `deploy/bird/bird.conf` names).
const ROUTER_OUTSIDE: u8 = 254;
const ROUTER_INSIDE: u8 = 1;
/// Directors are .2, .3, ... and real servers .11, .12, ... of their segment.
const FIRST_DIRECTOR: u8 = 2;
const FIRST_REAL: u8 = 11;
/// The real servers' weights for weighted schedulers: unequal, so the choice is the
/// director's own and only sync can carry it to another.
const WEIGHTS: [u32; 3] = [1, 2, 3];

/// How long the lab's daemons may take: BGP sessions to come up and routes to
/// follow (hold time 3 s), VRRP to elect and to notice a dead master (3 adverts of 1 s).
const CONVERGENCE: Duration = Duration::from_secs(20);

/// Whether a director's agent syncs its connections, in which role, and how.
#[derive(Clone, Copy, Debug)]
pub enum Sync<'a> {
    Off,
    /// Over the multicast group (IPVS's way).
    Group(&'a str),
    /// Unicast to every other director (`peers:`).
    Peers(&'a str),
}

/// What runs a director's high availability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ecmp,
    Vrrp,
}

/// A director of the lab: its host, its agent once started, and its BIRD or keepalived.
pub struct Director {
    pub host: Host,
    /// The agent's control socket (lbctl's `--socket`).
    pub socket: PathBuf,
    agent: Option<Agent>,
    /// BIRD or keepalived, in a process group of its own, so that a crash kills all of
    /// its processes at once (keepalived's VRRP child among them).
    daemon: Option<Child>,
    /// `lb-announce watch`, once started, in a process group of its own.
    watcher: Option<Child>,
}

pub struct HaLab {
    pub client: Host,
    /// The ECMP lab's router.
    pub router: Option<Host>,
    pub directors: Vec<Director>,
    pub reals: Vec<Host>,
    /// Scratch space: configurations, logs, sockets, the sync key, the BPF file system.
    pub dir: PathBuf,
    kind: Kind,
    router_bird: Option<Child>,
    nginx: Vec<Child>,
    load_listeners: Vec<TcpListener>,
    /// Hold `xdp_pass` on the switch side of the directors' links.
    _veth_helpers: Vec<Ebpf>,
    _switch: Netns,
}

impl HaLab {
    /// The active-active lab: `directors` directors (at most 3, the neighbours
    /// `deploy/bird/router.conf` names) behind the router, `reals` real servers. BIRD
    /// runs everywhere; no director announces until [`HaLab::announce`].
    pub fn ecmp(directors: usize, reals: usize) -> Result<Self> {
        ensure!(directors <= 3, "deploy/bird/router.conf names three directors");
        let mut lab = Self::build(Kind::Ecmp, directors, reals)?;
        lab.start_router_bird()?;
        for i in 0..lab.directors.len() {
            lab.start_director_bird(i)?;
        }
        lab.wait_for_bgp_sessions()?;
        Ok(lab)
    }

    /// The active/standby lab: two directors and `reals` real servers with the client
    /// on one segment. keepalived starts with [`HaLab::start_keepalived`].
    pub fn vrrp(reals: usize) -> Result<Self> {
        Self::build(Kind::Vrrp, 2, reals)
    }

    fn build(kind: Kind, directors: usize, reals: usize) -> Result<Self> {
        lab::ensure_root()?;
        lab::remove_orphans();
        let prefix = netns::unique_prefix();
        let dir = std::env::temp_dir().join(format!("{SCRATCH}{prefix}"));
        fs::create_dir_all(&dir)?;
        lab::mount_bpf_fs(&dir)?;
        write_sync_key(&dir)?;

        let switch = Netns::create(format!("{prefix}-switch"))?;
        for bridge in ["br0", "br1"] {
            switch.run(&["ip", "link", "add", bridge, "type", "bridge"])?;
            switch.run(&["ip", "link", "set", bridge, "up"])?;
        }
        let (outside, inside) = match kind {
            Kind::Ecmp => {
                (Segment { bridge: "br0", subnet: CLIENT_SUBNET }, Segment { bridge: "br1", subnet: DIRECTORS_SUBNET })
            }
            Kind::Vrrp => {
                (Segment { bridge: "br0", subnet: PAIR_SUBNET }, Segment { bridge: "br0", subnet: PAIR_SUBNET })
            }
        };
        let host = |name: &str, segment: &Segment, last: u8| lab::plug(&switch, &prefix, name, segment, last);
        let client = host("client", &outside, 1)?;
        let router = match kind {
            Kind::Ecmp => Some(wire_router(&switch, host("router", &outside, ROUTER_OUTSIDE)?, &inside)?),
            Kind::Vrrp => None,
        };
        let mut veth_helpers = Vec::new();
        let mut lab_directors = Vec::new();
        for i in 0..directors {
            let name = format!("d{}", i + 1);
            let director = host(&name, &inside, FIRST_DIRECTOR + i as u8)?;
            veth_helpers.push(attach_veth_helper(&switch, &name)?);
            prepare_director(&director, kind)?;
            let socket = dir.join(format!("{name}.sock"));
            lab_directors.push(Director { host: director, socket, agent: None, daemon: None, watcher: None });
        }
        let reals: Vec<Host> =
            (0..reals).map(|i| host(&format!("rs{}", i + 1), &inside, FIRST_REAL + i as u8)).collect::<Result<_>>()?;
        prepare_client(&client, kind)?;

        let mut lab = Self {
            client,
            router,
            directors: lab_directors,
            reals,
            dir,
            kind,
            router_bird: None,
            nginx: Vec::new(),
            load_listeners: Vec::new(),
            _veth_helpers: veth_helpers,
            _switch: switch,
        };
        for i in 0..lab.reals.len() {
            lab.setup_real(i)?;
        }
        lab.reals.iter().try_for_each(lab::wait_for_http)?;
        Ok(lab)
    }

    /// LVS-DR real-server set-up with the project's script, nginx answering with its
    /// name, and (behind the router) the way back to the client.
    fn setup_real(&mut self, i: usize) -> Result<()> {
        let real = &self.reals[i];
        let script = workspace_root().join("deploy/realserver.sh");
        netns::run(real.netns.command("sh").arg(&script).args(["start", &VIP4.to_string()]))?;
        if self.kind == Kind::Ecmp {
            let router = Ipv4Addr::new(198, 18, DIRECTORS_SUBNET, ROUTER_INSIDE);
            real.netns.run(&["ip", "route", "add", "default", "via", &router.to_string()])?;
        }
        let conf = self.dir.join(format!("{}-nginx.conf", real.name));
        fs::write(&conf, lab::nginx_conf(&real.name, &self.dir))?;
        self.nginx.push(lab::spawn_nginx(real, &conf, &self.dir)?);
        Ok(())
    }

    /// The agent's configuration for director `i`: the web and load services on the
    /// VIP over every real server (checked on nginx's port), scheduled by `scheduler`
    /// with `flags`, forwarded by direct routing, with connection sync as `sync` says. Its own socket, metrics
    /// address and pins.
    pub fn agent_config(&self, i: usize, scheduler: &str, flags: &[&str], sync: Sync) -> String {
        let director = &self.directors[i];
        let mut yaml = format!(
            "interfaces:\n  - name: eth0\n    xdp_mode: native\n\
             api_socket: {}\nmetrics_listen: {}:9798\npin_path: {}\nservices:\n",
            director.socket.display(),
            director.host.ipv4,
            self.dir.join("bpffs").join(&director.host.name).display(),
        );
        for (name, port) in [("web", HTTP_PORT), ("load", LOAD_PORT)] {
            yaml += &format!(
                "  - name: {name}\n    vip: {VIP4}\n    port: {port}\n    protocol: tcp\n\
                 \x20   scheduler: {scheduler}\n    scheduler_flags: [{}]\n    forwarding: dr\n\
                 \x20   check: {{ type: tcp, port: {HTTP_PORT}, interval: 1s, timeout: 1s, rise: 1, fall: 2 }}\n\
                 \x20   reals:\n",
                flags.join(", "),
            );
            for (real, weight) in self.reals.iter().zip(WEIGHTS.iter().cycle()) {
                yaml += &format!("      - {{ address: {}, weight: {weight} }}\n", real.ipv4);
            }
        }
        let (role, reaches) = match sync {
            Sync::Off => return yaml,
            Sync::Group(role) => (role, format!("group: {SYNC_GROUP}")),
            Sync::Peers(role) => {
                let others = self.directors.iter().filter(|other| other.host.name != director.host.name);
                (
                    role,
                    format!(
                        "peers: [{}]",
                        others.map(|other| other.host.ipv4.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                )
            }
        };
        yaml + &format!(
            "sync:\n  role: {role}\n  interface: eth0\n  syncid: {SYNC_ID}\n  {reaches}\n  port: {SYNC_PORT}\n  \
             key_file: {}\n",
            self.sync_key().display()
        )
    }

    /// Every real server listens on the load port, with a queue deep enough that the
    /// kernel completes every handshake of a load; nothing accepts them.
    pub fn listen_for_load(&mut self) -> Result<()> {
        for real in &self.reals {
            real.netns.run(&["sysctl", "-qw", &format!("net.core.somaxconn={LOAD_BACKLOG}")])?;
            let listener = real.netns.within(|| {
                let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, LOAD_PORT))?;
                // Listening again sets the queue's length; std asks for 128.
                if unsafe { libc::listen(listener.as_raw_fd(), i32::from(LOAD_BACKLOG)) } != 0 {
                    bail!("listen: {}", std::io::Error::last_os_error());
                }
                Ok(listener)
            })?;
            self.load_listeners.push(listener);
        }
        Ok(())
    }

    /// The lab's sync key (hex, mode 0600).
    pub fn sync_key(&self) -> PathBuf {
        self.dir.join("sync.key")
    }

    /// Starts an agent on every director, each with `config(i)`.
    pub fn start_agents(&mut self, config: impl Fn(&Self, usize) -> String) -> Result<()> {
        let agent = binary("lb-agent")?;
        for i in 0..self.directors.len() {
            let file = self.dir.join(format!("{}.yaml", self.directors[i].host.name));
            fs::write(&file, config(self, i))?;
            let director = &self.directors[i];
            let running = lab::run_agent(&director.host.netns, &agent, &file, &director.socket, &[])
                .with_context(|| format!("starting {}'s agent", director.host.name))?;
            self.directors[i].agent = Some(running);
        }
        Ok(())
    }

    pub fn agent(&self, i: usize) -> Result<&Agent> {
        self.directors[i].agent.as_ref().context("that director's agent is not running")
    }

    /// `deploy/bird/lb-announce watch 1` on every director, as
    /// `deploy/bird/lb-announce-watch.service` runs it, each announcing while its agent
    /// serves; waits until the router routes the VIP through all.
    pub fn announce(&mut self) -> Result<()> {
        let script = workspace_root().join("deploy/bird/lb-announce");
        for i in 0..self.directors.len() {
            let director = &self.directors[i];
            let mut watch = director.host.netns.command(&script.to_string_lossy());
            watch.args(["watch", "1"]).env("BIRD_SOCKET", self.bird_socket(i)).env("LB_SOCKET", &director.socket);
            self.directors[i].watcher = Some(self.spawn_daemon(i, "lb-announce", &mut watch)?);
        }
        self.wait_for_paths(self.directors.len())
    }

    /// Stops director `i`'s agent (SIGTERM; its data path stays).
    pub fn stop_agent(&mut self, i: usize) -> Result<()> {
        let agent = self.directors[i].agent.take().context("that director's agent is not running")?;
        agent.stop()?;
        Ok(())
    }

    /// Cuts director `i` off the real servers (a route that refuses them: its health
    /// checks fail as over a broken link), or (`cut` false) mends it.
    pub fn cut_from_reals(&self, i: usize, cut: bool) -> Result<()> {
        let netns = &self.directors[i].host.netns;
        for real in &self.reals {
            netns.run(&["ip", "route", if cut { "add" } else { "del" }, "prohibit", &format!("{}/32", real.ipv4)])?;
        }
        Ok(())
    }

    /// The directors the router sends the VIP's flows to, by their addresses.
    pub fn router_paths(&self) -> Result<Vec<Ipv4Addr>> {
        let router = self.router.as_ref().context("only the ECMP lab has a router")?;
        let routes = router.netns.run(&["ip", "-4", "route", "show", &format!("{VIP4}/32")])?;
        let text = String::from_utf8_lossy(&routes.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words.windows(2).filter(|pair| pair[0] == "via").filter_map(|pair| pair[1].parse().ok()).collect())
    }

    /// Waits until the router's route to the VIP has `count` paths.
    pub fn wait_for_paths(&self, count: usize) -> Result<()> {
        let mut paths = Vec::new();
        wait_until(CONVERGENCE, &format!("the router to route the VIP through {count} directors"), || {
            paths = self.router_paths()?;
            Ok(paths.len() == count)
        })
        .with_context(|| format!("the router's paths: {paths:?}\n{}", self.bird_status()))
    }

    /// Starts keepalived on both directors with the shipped pair of configurations: the
    /// master's first, until it holds the VIP, then the backup's, until it is BACKUP.
    pub fn start_keepalived(&mut self) -> Result<()> {
        ensure!(self.kind == Kind::Vrrp, "keepalived runs in the VRRP lab");
        self.start_director_keepalived(0, "keepalived-master.conf")?;
        self.wait_for_vip(0)?;
        self.start_director_keepalived(1, "keepalived-backup.conf")?;
        wait_until(CONVERGENCE, "d2's keepalived to enter BACKUP", || {
            Ok(self.keepalived_log(1).contains("Entering BACKUP STATE"))
        })
    }

    /// Whether director `i` holds the VIP on its eth0 (keepalived put it there).
    pub fn holds_vip(&self, i: usize) -> Result<bool> {
        let addresses = self.directors[i].host.netns.run(&["ip", "-4", "addr", "show", "dev", "eth0"])?;
        Ok(String::from_utf8_lossy(&addresses.stdout).contains(&format!("inet {VIP4}/32")))
    }

    /// Waits until director `i` holds the VIP.
    pub fn wait_for_vip(&self, i: usize) -> Result<()> {
        wait_until(CONVERGENCE, &format!("{} to hold the VIP", self.directors[i].host.name), || self.holds_vip(i))
            .with_context(|| self.keepalived_log(i))
    }

    /// What director `i`'s keepalived logged.
    pub fn keepalived_log(&self, i: usize) -> String {
        fs::read_to_string(self.daemon_log(i, "keepalived")).unwrap_or_default()
    }

    /// Director `i` fails as a machine does: its link goes down first (so that nothing
    /// it does while dying is seen: no BGP notification, no VRRP priority 0, no TCP
    /// reset of the BGP session), then its daemon's whole process group and its agent
    /// are killed. The XDP program stays attached to the dead link, as it would.
    pub fn crash(&mut self, i: usize) -> Result<()> {
        let director = &mut self.directors[i];
        director.host.netns.run(&["ip", "link", "set", "eth0", "down"])?;
        if let Some(daemon) = director.daemon.as_mut() {
            kill_group(daemon)?;
        }
        if let Some(agent) = &director.agent {
            agent.signal(libc::SIGKILL)?;
        }
        Ok(())
    }

    /// Opens `count` TCP connections from the client to the VIP's web service and
    /// keeps them.
    pub fn hold(&self, count: usize) -> Result<Vec<KeptAlive>> {
        let vip = SocketAddr::from((VIP4, HTTP_PORT));
        self.client.netns.within(|| (0..count).map(|_| KeptAlive::connect(vip)).collect())
    }

    /// The client ports of the web connections director `i`'s agent holds.
    pub fn connections(&self, i: usize) -> Result<HashSet<u16>> {
        Ok(self.connections_to(i, HTTP_PORT)?.into_iter().map(|conn| conn.source.port()).collect())
    }

    /// The client's connections to the VIP's `port` that director `i`'s agent holds.
    pub fn connections_to(&self, i: usize, port: u16) -> Result<Vec<lb_api::ConnectionStatus>> {
        let socket = &self.directors[i].socket;
        match lb_api::call(socket, &lb_api::Request::Connections)? {
            lb_api::Response::Connections { connections } => Ok(connections
                .into_iter()
                .filter(|conn| conn.source.ip() == self.client.ipv4 && conn.virtual_address.port() == port)
                .collect()),
            other => bail!("asked for connections, {} answered {other:?}", self.directors[i].host.name),
        }
    }

    /// Director `i`'s agent's metrics.
    pub fn metrics(&self, i: usize) -> Result<Samples> {
        let host = &self.directors[i].host;
        let url = format!("http://{}:9798/metrics", host.ipv4);
        let output = host.netns.run(&["curl", "--silent", "--fail", "--max-time", "5", &url])?;
        Samples::parse(&String::from_utf8_lossy(&output.stdout))
    }

    /// BIRD's view on the router and on every director, for failure messages.
    pub fn bird_status(&self) -> String {
        let mut status = String::new();
        if let Some(router) = &self.router {
            status += &birdc(&router.netns, &self.dir.join("router-bird.ctl"), &["show", "protocols"]);
            status += &birdc(&router.netns, &self.dir.join("router-bird.ctl"), &["show", "route"]);
        }
        for (i, director) in self.directors.iter().enumerate() {
            status += &birdc(&director.host.netns, &self.bird_socket(i), &["show", "protocols"]);
        }
        status
    }

    fn start_router_bird(&mut self) -> Result<()> {
        let router = self.router.as_ref().context("no router")?;
        let text = fs::read_to_string(workspace_root().join("deploy/bird/router.conf"))?;
        let address = Ipv4Addr::new(198, 18, DIRECTORS_SUBNET, ROUTER_INSIDE);
        let conf = with_defines(&text, &[("ROUTER", &address.to_string())])?;
        for i in 0..self.directors.len() {
            let neighbour = format!("neighbor {} as DIRECTOR_AS;", self.directors[i].host.ipv4);
            ensure!(conf.contains(&neighbour), "deploy/bird/router.conf has no `{neighbour}`");
        }
        let path = self.dir.join("router-bird.conf");
        fs::write(&path, conf)?;
        self.router_bird = Some(spawn_bird(&router.netns, &path, &self.dir.join("router-bird.ctl"), &self.dir)?);
        Ok(())
    }

    fn start_director_bird(&mut self, i: usize) -> Result<()> {
        let text = fs::read_to_string(workspace_root().join("deploy/bird/bird.conf"))?;
        let director = &self.directors[i].host;
        let router = Ipv4Addr::new(198, 18, DIRECTORS_SUBNET, ROUTER_INSIDE);
        let conf = with_defines(&text, &[("DIRECTOR", &director.ipv4.to_string()), ("ROUTER", &router.to_string())])?;
        let path = self.dir.join(format!("{}-bird.conf", director.name));
        fs::write(&path, conf)?;
        let bird = spawn_bird(&director.netns, &path, &self.bird_socket(i), &self.dir)?;
        self.directors[i].daemon = Some(bird);
        Ok(())
    }

    fn bird_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}-bird.ctl", self.directors[i].host.name))
    }

    /// Every director's BGP session with the router is up (nothing announced yet).
    fn wait_for_bgp_sessions(&self) -> Result<()> {
        for i in 0..self.directors.len() {
            wait_until(CONVERGENCE, &format!("{}'s BGP session", self.directors[i].host.name), || {
                let protocols = birdc(&self.directors[i].host.netns, &self.bird_socket(i), &["show", "protocols"]);
                Ok(protocols.lines().any(|line| line.starts_with("uplink") && line.contains("Established")))
            })
            .with_context(|| self.bird_status())?;
        }
        Ok(())
    }

    /// keepalived on director `i` with the shipped `file`: its notify hooks run the
    /// shipped `lb-sync-role` against this director's socket, finding lbctl on PATH.
    fn start_director_keepalived(&mut self, i: usize, file: &str) -> Result<()> {
        let deploy = workspace_root().join("deploy/keepalived");
        let text = fs::read_to_string(deploy.join(file))?;
        let director = &self.directors[i];
        let conf = text
            .replace("/usr/local/sbin/lb-sync-role", &deploy.join("lb-sync-role").to_string_lossy())
            .replace("/run/lb/lb.sock", &director.socket.to_string_lossy());
        let name = &director.host.name;
        let path = self.dir.join(format!("{name}-keepalived.conf"));
        fs::write(&path, conf)?;
        let pid = |what: &str| self.dir.join(format!("{name}-{what}.pid"));
        let mut keepalived = director.host.netns.command("keepalived");
        // In the foreground, logging to the console, with files of its own: several run
        // on this host.
        keepalived
            .args(["--dont-fork", "--log-console", "--log-detail", "--use-file"])
            .arg(&path)
            .arg("--pid")
            .arg(pid("keepalived"))
            .arg("--vrrp_pid")
            .arg(pid("vrrp"))
            .arg("--checkers_pid")
            .arg(pid("checkers"));
        self.directors[i].daemon = Some(self.spawn_daemon(i, "keepalived", &mut keepalived)?);
        Ok(())
    }

    /// Starts `what` (`command`) for director `i`: lbctl on its PATH (the shipped
    /// scripts find it there), its output in the director's log of `what`, in a process
    /// group of its own (a crash kills all of it).
    fn spawn_daemon(&self, i: usize, what: &str, command: &mut Command) -> Result<Child> {
        let log = fs::File::create(self.daemon_log(i, what))?;
        let bin_dir = binary("lbctl")?.parent().map(PathBuf::from).unwrap_or_default();
        command
            .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what} (run `cargo xtask setup`)"))
    }

    fn daemon_log(&self, i: usize, daemon: &str) -> PathBuf {
        self.dir.join(format!("{}-{daemon}.log", self.directors[i].host.name))
    }
}

impl Drop for HaLab {
    fn drop(&mut self) {
        // Agents first: each takes its director out of service (`--detach`), which needs
        // the pins in the scratch directory.
        for director in &mut self.directors {
            director.agent.take();
        }
        let watchers = self.directors.iter_mut().filter_map(|director| director.watcher.as_mut());
        for watcher in watchers {
            let _ = kill_group(watcher);
        }
        let daemons = self.directors.iter_mut().filter_map(|director| director.daemon.as_mut());
        for daemon in daemons.chain(self.router_bird.as_mut()) {
            let _ = kill_group(daemon);
        }
        for server in &mut self.nginx {
            let _ = server.kill();
            let _ = server.wait();
        }
        lab::remove_scratch(&self.dir);
    }
}

/// The router's second leg (eth1 on the directors' segment), routing with the L4
/// multipath hash, and no redirects (clients and directors are on different links,
/// but the real servers' replies come in and go out of eth1's neighbours).
fn wire_router(switch: &Netns, router: Host, inside: &Segment) -> Result<Host> {
    lab::create_port(switch, &router.netns, "eth1", "router1", inside)?;
    lab::address(&router.netns, "eth1", inside.subnet, ROUTER_INSIDE)?;
    router.netns.run(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv4.fib_multipath_hash_policy=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.eth0.send_redirects=0",
        "net.ipv4.conf.eth1.send_redirects=0",
    ])?;
    Ok(router)
}

/// A director owns the VIP: on its loopback behind the router (BGP brings the flows,
/// so it must not answer ARP for it: it is the real servers' too), with its default
/// route through the router; for VRRP on eth0 only while keepalived gives it. It sends
/// no redirects.
fn prepare_director(director: &Host, kind: Kind) -> Result<()> {
    let netns = &director.netns;
    netns.run(&["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0"])?;
    if kind == Kind::Ecmp {
        netns.run(&["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
        netns.run(&["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"])?;
        let router = Ipv4Addr::new(198, 18, DIRECTORS_SUBNET, ROUTER_INSIDE);
        netns.run(&["ip", "route", "add", "default", "via", &router.to_string()])?;
    }
    Ok(())
}

/// The client's way to the VIP (through the router, or on its segment), keeping each
/// TCP flow's hash (hence its ECMP path) across retransmissions; its low ports kept
/// for loads.
fn prepare_client(client: &Host, kind: Kind) -> Result<()> {
    let netns = &client.netns;
    match kind {
        Kind::Ecmp => {
            let router = Ipv4Addr::new(198, 18, CLIENT_SUBNET, ROUTER_OUTSIDE);
            netns.run(&["ip", "route", "add", "default", "via", &router.to_string()])?;
        }
        Kind::Vrrp => {
            netns.run(&["ip", "route", "add", "203.0.113.0/24", "dev", "eth0"])?;
        }
    }
    netns.run(&["sysctl", "-qw", "net.core.txrehash=0"])?;
    load::reserve_ports(netns)
}

/// A key for the directors' sync datagrams, as an operator makes one.
fn write_sync_key(dir: &Path) -> Result<()> {
    let output = netns::run(Command::new("openssl").args(["rand", "-hex", "32"]))?;
    let path = dir.join("sync.key");
    fs::write(&path, &output.stdout)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// `text` (a BIRD configuration) with the values of its `define NAME = VALUE;` lines
/// replaced; each name must be defined there.
fn with_defines(text: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (name, value) in values {
        let start = format!("define {name} = ");
        let line = lines.iter_mut().find(|line| line.starts_with(&start)).ok_or_else(|| anyhow!("no `{start}`"))?;
        let rest = line.split_once(';').map_or("", |(_, rest)| rest).to_owned();
        *line = format!("{start}{value};{rest}");
    }
    Ok(lines.join("\n") + "\n")
}

/// BIRD in the foreground in `netns` with `conf`, its control socket at `socket`.
fn spawn_bird(netns: &Netns, conf: &Path, socket: &Path, dir: &Path) -> Result<Child> {
    let log = fs::File::create(conf.with_extension("log"))?;
    netns
        .command("bird")
        .arg("-f")
        .arg("-c")
        .arg(conf)
        .arg("-s")
        .arg(socket)
        .arg("-P")
        .arg(conf.with_extension("pid"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting bird (run `cargo xtask setup`)")
}

/// birdc's answer, or why there is none.
fn birdc(netns: &Netns, socket: &Path, command: &[&str]) -> String {
    match netns.command("birdc").arg("-s").arg(socket).args(command).output() {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(err) => format!("birdc: {err}\n"),
    }
}

/// SIGKILL to `child`'s whole process group (it leads one), then reaps it.
fn kill_group(child: &mut Child) -> Result<()> {
    if child.try_wait()?.is_none() && unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) } != 0 {
        bail!("killing process group {}: {}", child.id(), std::io::Error::last_os_error());
    }
    child.wait()?;
    Ok(())
}
