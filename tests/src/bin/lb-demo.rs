//! `cargo xtask demo`: an LVS-DR site in network namespaces (a client, a director
//! running lb-agent, three real servers weighted 1:2:3), real HTTP over IPv4 and IPv6,
//! and what each part saw. Everything is removed at the end, on error and on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result};
use lb_tests::lab::{self, Agent, HTTP_PORT, Lab, VIP4, VIP6};

const WEIGHTS: [u32; 3] = [1, 2, 3];
const REQUESTS: usize = 300;
/// Connections the client holds open while the agent restarts.
const HELD: usize = 60;

fn main() {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: removing the lab");
        lab::remove_all();
        std::process::exit(130);
    })
    .expect("installing the Ctrl-C handler");
    if let Err(err) = demo() {
        eprintln!("demo failed: {err:#}");
        std::process::exit(1);
    }
}

fn demo() -> Result<()> {
    println!("Building the lab: client, director and three real servers on one bridge, each in its own namespace");
    let lab = Lab::start(WEIGHTS.len())?;
    println!("  client    {:<12} {}", lab.client.ipv4, lab.client.ipv6);
    println!(
        "  director  {:<12} {}   owns VIPs {VIP4} and {VIP6}, runs lb-agent",
        lab.director.ipv4, lab.director.ipv6
    );
    for (real, weight) in lab.reals.iter().zip(WEIGHTS) {
        println!(
            "  {:<9} {:<12} {}   VIPs on lo (arp_ignore=1, arp_announce=2), nginx, weight {weight}",
            real.name, real.ipv4, real.ipv6
        );
    }
    lab.count_client_traffic()?;
    let config = lab.config("wrr", &WEIGHTS);
    let agent = lab.start_agent(&config)?;
    println!("\nlb-agent is running on the director with this configuration:\n");
    println!("{}", indent(&config));

    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let url = match vip {
            IpAddr::V4(v4) => format!("http://{v4}/"),
            IpAddr::V6(v6) => format!("http://[{v6}]/"),
        };
        println!("curl from the client: {REQUESTS} requests to {url}, each on a new connection");
        let replies = lab.http_get(&url, REQUESTS)?;
        let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
        for reply in replies.iter().filter(|reply| reply.status == 200) {
            *answered.entry(reply.body.as_str()).or_default() += 1;
        }
        let total: u32 = WEIGHTS.iter().sum();
        for (real, weight) in lab.reals.iter().zip(WEIGHTS) {
            let count = answered.get(real.name.as_str()).copied().unwrap_or(0);
            let expected = REQUESTS as u32 * weight / total;
            println!("  {} answered {count:>3}   (weight {weight}: {expected} expected)", real.name);
        }
        let failed = replies.iter().filter(|reply| reply.status != 200).count();
        println!("  failed       {failed:>3}\n");
    }

    let counters = lab.client_counters()?;
    println!(
        "HTTP replies the client received straight from the real servers: {} packets",
        counters.replies_from_reals.packets
    );
    println!(
        "HTTP replies the client received through the director:           {} packets (direct routing)\n",
        counters.replies_from_director.packets
    );

    let agent = restart_under_held_connections(&lab, agent)?;

    println!("The agent's /metrics (excerpt):\n");
    let metrics = lab.metrics()?;
    for line in metrics.lines().filter(|line| is_highlight(line)) {
        println!("  {line}");
    }

    let lbctl = lab::binary("lbctl")?;
    for (args, layout) in [(["list", "--stats"], "ipvsadm -Ln --stats"), (["list", "-n"], "ipvsadm -Ln")] {
        println!("\nlbctl {} (the layout of {layout}):\n", args.join(" "));
        let socket = lab.api_socket();
        let command = [&*lbctl.to_string_lossy(), "--socket", &*socket.to_string_lossy(), args[0], args[1]];
        println!("{}", indent(&lab.on_director(&command)?));
    }

    let detached = agent.take_out_of_service().context("taking the director out of service")?;
    println!("lb-agent stopped (SIGTERM), then `lb-agent --detach`:\n{}", indent(&detached));
    println!("Removing the lab.");
    Ok(())
}

/// Restarts the agent while the client holds connections open, and shows that each
/// carries on with its real server: the program stays attached while no agent runs,
/// and the next agent adopts its pinned maps and replaces it in place.
fn restart_under_held_connections(lab: &Lab, agent: Agent) -> Result<Agent> {
    println!("Restarting lb-agent while the client holds {HELD} keep-alive connections open:");
    let mut held = Vec::new();
    for i in 0..HELD {
        let vip = if i % 2 == 0 { IpAddr::V4(VIP4) } else { IpAddr::V6(VIP6) };
        let mut connection = lab.connect(SocketAddr::new(vip, HTTP_PORT))?;
        let real = connection.get()?;
        held.push((connection, real));
    }
    let before = lab.xdp_program()?;
    let config = agent.config.clone();
    agent.stop().context("stopping lb-agent")?;
    let alone = answered_as_before(&mut held);
    println!("  SIGTERM: lb-agent exited; XDP program {} still on eth0", lab.xdp_program()?);
    println!("  {alone} of {HELD} held connections answered by their real servers with no agent running");
    let agent = lab.run_agent(&lab::binary("lb-agent")?, &config, &lab.api_socket(), &[])?;
    let log = agent.log_text();
    let adopted = log.lines().find_map(|line| Some(&line[line.find("adopted ")?..])).unwrap_or("(nothing adopted)");
    println!("  lb-agent started again: {adopted}");
    println!("  the program in eth0's link went from id {before} to {} in place", lab.xdp_program()?);
    let kept = answered_as_before(&mut held);
    println!("  {kept} of {HELD} held connections answered again by the same real server\n");
    Ok(agent)
}

/// How many of the held connections answer a request from the real server they had.
fn answered_as_before(held: &mut [(lab::KeptAlive, String)]) -> usize {
    held.iter_mut()
        .map(|(connection, real)| connection.get().ok().as_ref() == Some(&*real))
        .filter(|&same| same)
        .count()
}

fn is_highlight(line: &str) -> bool {
    const SHOWN: [&str; 5] =
        ["lb_service_", "lb_real_connections", "lb_real_packets", "lb_dropped_packets", "lb_passed_packets"];
    !line.starts_with('#') && SHOWN.iter().any(|prefix| line.starts_with(prefix)) && !line.ends_with(" 0")
        || line.starts_with("lb_dropped_packets_total{reason=\"malformed_ip\"}")
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}
