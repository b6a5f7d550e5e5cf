//! End to end in the lab: real TCP through the director, real servers answering the
//! client directly, reloads, the metrics and lbctl, all with real processes.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use lb_tests::{
    deploy,
    lab::{self, Agent, HTTP_PORT, Lab, Reply, UDP_PORT, VIP4, VIP6},
    prometheus::Samples,
};

/// One lab at a time: they would only compete for the two CPUs.
static ONE_LAB: Mutex<()> = Mutex::new(());

const REQUESTS: usize = 300;
const WEIGHTS: [u32; 3] = [1, 2, 3];

fn lab() -> (std::sync::MutexGuard<'static, ()>, Lab) {
    let guard = ONE_LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    (guard, Lab::start(3).expect("building the lab"))
}

fn url(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(v4) => format!("http://{v4}:{HTTP_PORT}/"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{HTTP_PORT}/"),
    }
}

/// Replies per real server name, after checking every one succeeded.
fn answered_by(replies: &[Reply]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for reply in replies {
        assert_eq!(reply.status, 200, "{reply:?}");
        *counts.entry(reply.body.clone()).or_default() += 1;
    }
    counts
}

fn spread(lab: &Lab, counts: &HashMap<String, usize>) -> Vec<usize> {
    lab.reals.iter().map(|real| counts.get(&real.name).copied().unwrap_or(0)).collect()
}

#[test]
fn direct_routing_spreads_real_tcp_connections_by_weight_and_counts_them() -> Result<()> {
    let (_one, lab) = lab();
    lab.count_client_traffic()?;
    let rx_vlan_offload = || -> Result<bool> {
        let features = lab.on_director(&["ethtool", "-k", "eth0"])?;
        Ok(features.lines().any(|line| line == "rx-vlan-offload: on"))
    };
    assert!(rx_vlan_offload()?, "a veth strips VLAN tags by default");
    let agent = lab.start_agent(&lab.config("wrr", &WEIGHTS))?;
    assert!(!rx_vlan_offload()?, "attached, the agent keeps 802.1Q tags in the frames lb_ingress reads");

    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let replies = lab.http_get(&url(vip), REQUESTS)?;
        let ports: HashSet<u16> = replies.iter().map(|reply| reply.local_port).collect();
        assert_eq!(ports.len(), REQUESTS, "each request on a connection of its own");
        // 300 new connections walk wrr's 1:2:3 cycle exactly fifty times.
        assert_eq!(spread(&lab, &answered_by(&replies)), vec![50, 100, 150], "{vip}");
    }

    let client = lab.client_counters()?;
    assert!(client.replies_from_reals.packets >= 2 * REQUESTS as u64, "{client:?}");
    assert_eq!(client.replies_from_director.packets, 0, "direct routing: the director never carries a reply");

    let metrics = Samples::parse(&lab.metrics()?)?;
    for (service, sent) in [("web4", client.sent4), ("web6", client.sent6)] {
        let labels = [("service", service)];
        assert_eq!(metrics.value("lb_service_packets_total", &labels)?, sent.packets as f64, "{service}");
        assert_eq!(metrics.value("lb_service_bytes_total", &labels)?, sent.bytes as f64, "{service}");
        assert_eq!(metrics.value("lb_service_connections_total", &labels)?, REQUESTS as f64, "{service}");
        let per_real: f64 =
            metrics.all("lb_real_packets_total").filter(|(l, _)| l["service"] == service).map(|(_, v)| v).sum();
        assert_eq!(per_real, sent.packets as f64, "{service}: real servers' packets add up");
    }
    for (real, weight) in lab.reals.iter().zip(WEIGHTS) {
        let labels = [("service", "web4"), ("real", &real.ipv4.to_string() as &str)];
        assert_eq!(metrics.value("lb_real_connections_total", &labels)?, f64::from(weight) * 50.0);
    }
    assert_eq!(metrics.value("lb_dropped_packets_total", &[("reason", "malformed_ip")])?, 0.0);
    ensure!(metrics.get("lb_passed_packets_total", &[("reason", "not_ip")]).is_some(), "pass reasons are exported");
    director_state_is_exported(&lab, &metrics)?;

    let lbctl = |args: &[&str]| lbctl(&lab, args);
    let list = lbctl(&["list", "--stats"])?;
    assert!(list.contains("Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"), "{list}");
    let conns = |prefix: &str| {
        let line = list.lines().find(|line| line.starts_with(prefix));
        line.and_then(|line| line[prefix.len()..].split_whitespace().next()).map(str::to_owned)
    };
    assert_eq!(conns("TCP  203.0.113.10:80").as_deref(), Some("300"), "{list}");
    assert_eq!(conns("  -> [2001:db8:1::13]:80").as_deref(), Some("150"), "{list}");

    // Every connection was closed by the client's FIN, which only direct routing's
    // input-only table sees: FIN_WAIT, inactive, until tcp_fin (120 s) has passed.
    let list = lbctl(&["list", "-n"])?;
    assert!(list.contains("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"), "{list}");
    assert!(list.contains("\nTCP  203.0.113.10:80 wrr\n"), "{list}");
    for (real, weight) in lab.reals.iter().zip(WEIGHTS) {
        let line =
            format!("  -> {:<28} Route   {weight:<6} {:<10} {:<10}", format!("{}:80", real.ipv4), 0, weight * 50);
        assert!(list.contains(&line), "{line:?} in\n{list}");
        let labels = [("service", "web4"), ("real", &real.ipv4.to_string() as &str)];
        assert_eq!(metrics.value("lb_real_active_connections", &labels)?, 0.0);
        assert_eq!(metrics.value("lb_real_inactive_connections", &labels)?, f64::from(weight) * 50.0);
    }
    let connections = lbctl(&["list", "-c"])?;
    let fin_wait = connections.lines().filter(|line| line.starts_with("TCP 0") && line.contains(" FIN_WAIT ")).count();
    assert_eq!(fin_wait, 600, "web4's and web6's:\n{connections}");

    let detached = agent.take_out_of_service()?;
    assert!(detached.contains("detached lb_ingress from eth0"), "{detached}");
    assert!(rx_vlan_offload()?, "lb-agent --detach gave the interface its VLAN offload back");
    let links = lab.on_director(&["ip", "link", "show", "dev", "eth0"])?;
    assert!(!links.contains("xdp"), "--detach removed the program: {links}");
    assert!(!lab.pin_path().exists(), "and the pins");
    Ok(())
}

/// What the director holds, read at scrape time: weights, the table's capacity, the
/// XDP mode each interface took, the agent's build.
fn director_state_is_exported(lab: &Lab, metrics: &Samples) -> Result<()> {
    for (real, weight) in lab.reals.iter().zip(WEIGHTS) {
        let labels = [("service", "web6"), ("real", &real.ipv6.to_string() as &str)];
        assert_eq!(metrics.value("lb_real_weight", &labels)?, f64::from(weight));
    }
    let capacity = metrics.value("lb_connection_table_capacity", &[])?;
    assert_eq!(capacity, f64::from(lb_common::CONN_TABLE_SIZE), "the default connection_table_size");
    assert!(metrics.value("lb_connection_table_entries", &[])? <= capacity);
    let modes: Vec<_> = metrics.all("lb_interface_xdp_mode").collect();
    let eth0 = [("interface", "eth0"), ("mode", "driver")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    assert_eq!(modes, [(&eth0, 1.0)], "xdp_mode: native, on eth0 only");
    let builds: Vec<_> = metrics.all("lb_build_info").collect();
    ensure!(builds.len() == 1 && builds[0].1 == 1.0, "one lb_build_info, of 1: {builds:?}");
    assert_eq!(builds[0].0["version"], env!("CARGO_PKG_VERSION"));
    let commit = &builds[0].0["commit"];
    ensure!(commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()), "commit {commit:?}");
    Ok(())
}

/// Every metric the alert rules and the dashboard of deploy/ use is one the agent
/// exports (in this scrape, of an agent with health checks), or Prometheus' own `up`.
fn deploy_uses_only_exported_metrics(metrics: &Samples) -> Result<()> {
    let exported = metrics.names();
    let dashboard = deploy::dashboard()?;
    let queries =
        [deploy::alert_queries()?, deploy::panel_queries(&dashboard)?, deploy::variable_queries(&dashboard)?].concat();
    let mut used = 0;
    for query in &queries {
        for name in deploy::metric_names(&query.expr)? {
            used += 1;
            let known = exported.contains(name.as_str()) || deploy::PROMETHEUS_OWN.contains(&name.as_str());
            ensure!(known, "{}: {name} is not a metric the agent exports ({})", query.place, query.expr);
        }
    }
    ensure!(queries.len() > 20 && used > queries.len(), "{} queries, {used} names: were they all read?", queries.len());
    Ok(())
}

#[test]
fn udp_flows_are_spread_by_weight_and_answered_from_the_vip() -> Result<()> {
    let (_one, lab) = lab();
    let agent = lab.start_agent_with(&lab.config("wrr", &WEIGHTS), &["--ebpf-log-level", "debug"])?;
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let mut answers = HashMap::new();
        for port in 20000..20060 {
            // Each query from a new port is a new flow; the answer comes back from the
            // VIP (the client's connected socket accepts nothing else).
            *answers.entry(lab.udp_query(port, SocketAddr::new(vip, UDP_PORT))?).or_default() += 1;
        }
        assert_eq!(spread(&lab, &answers), vec![10, 20, 30], "{vip}");
    }
    let metrics = Samples::parse(&lab.metrics()?)?;
    assert_eq!(metrics.value("lb_service_connections_total", &[("service", "dns6")])?, 60.0);
    // Asked to, the XDP program traced each scheduling decision into the agent's log.
    lab::wait_until(std::time::Duration::from_secs(5), "the eBPF log in the agent's log", || {
        Ok(agent.log_text().matches("new flow from [2001:db8:1::1]:").count() == 60)
    })?;
    Ok(())
}

#[test]
fn established_connections_survive_reloads_and_a_bad_config_changes_nothing() -> Result<()> {
    let (_one, lab) = lab();
    let agent = lab.start_agent(&lab.config("wrr", &[1, 1, 1]))?;
    let mut kept = Vec::new();
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        for _ in 0..9 {
            let mut connection = lab.connect(SocketAddr::new(vip, HTTP_PORT))?;
            let first = connection.get()?;
            kept.push((connection, first));
        }
    }
    let names: HashSet<&str> = kept.iter().map(|(_, first)| first.as_str()).collect();
    assert_eq!(names.len(), 3, "the kept connections are on every real server");

    // rs1 quiesced and rs2 weighted up: established connections must not move.
    let outcome = agent.reload(&lab.config("wrr", &[0, 3, 1]))?;
    assert!(outcome.contains("reloaded:"), "{outcome}");
    for (connection, first) in &mut kept {
        assert_eq!(&connection.get()?, first, "an established connection stays on its real server");
    }
    let replies = lab.http_get(&url(IpAddr::V4(VIP4)), 40)?;
    assert_eq!(spread(&lab, &answered_by(&replies)), vec![0, 30, 10], "new connections follow the new weights");

    // A typo: refused with file, line and field; the running configuration stays.
    let broken = lab.config("wrr", &[1, 1, 1]).replacen("    scheduler: wrr", "    schedular: wrr", 1);
    let outcome = agent.reload(&broken)?;
    let line = broken.lines().position(|l| l.contains("schedular")).unwrap() + 1;
    let expected = format!("{}:{line}: services[0]: unknown field `schedular`", agent.config.display());
    assert!(outcome.contains(&expected), "expected {expected:?} in:\n{outcome}");
    assert!(outcome.contains("keeping the running configuration"), "{outcome}");
    // Valid YAML, but an interface the director does not have: refused before
    // anything is attached, detached or written.
    let missing = lab.config("wrr", &[1, 1, 1]).replace("interfaces:\n", "interfaces:\n  - name: eth9\n");
    let outcome = agent.reload(&missing)?;
    assert!(
        outcome.contains("no interface named eth9") && outcome.contains("keeping the running configuration"),
        "{outcome}"
    );
    assert!(lab.on_director(&["ip", "link", "show", "dev", "eth0"])?.contains("xdp"), "eth0 stays attached");

    let replies = lab.http_get(&url(IpAddr::V4(VIP4)), 40)?;
    assert_eq!(spread(&lab, &answered_by(&replies)), vec![0, 30, 10], "still the 0:3:1 configuration");
    for (connection, first) in &mut kept {
        assert_eq!(&connection.get()?, first);
    }
    Ok(())
}

#[test]
fn a_real_server_whose_mac_changes_keeps_receiving_its_connections() -> Result<()> {
    let (_one, lab) = lab();
    let _agent: Agent = lab.start_agent(&lab.config("rr", &[1, 1, 1]))?;
    let before = spread(&lab, &answered_by(&lab.http_get(&url(IpAddr::V4(VIP4)), 30)?));
    assert_eq!(before, vec![10, 10, 10]);

    // A new NIC in rs1: it announces its new MAC (arp_notify, ndisc_notify), as
    // operators configure hosts whose MAC may move.
    let rs1 = &lab.reals[0].netns;
    rs1.run(&["sysctl", "-qw", "net.ipv4.conf.eth0.arp_notify=1", "net.ipv6.conf.eth0.ndisc_notify=1"])?;
    rs1.run(&["ip", "link", "set", "dev", "eth0", "address", "02:00:00:00:0b:01"])?;
    lab::wait_until(std::time::Duration::from_secs(20), "the director to follow rs1's new MAC", || {
        let replies = lab.http_get(&url(IpAddr::V4(VIP4)), 3)?;
        Ok(replies.iter().all(|reply| reply.status == 200))
    })?;
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let after = spread(&lab, &answered_by(&lab.http_get(&url(vip), 30)?));
        assert_eq!(after, vec![10, 10, 10], "{vip}: rs1 still takes its share");
    }
    Ok(())
}

#[test]
fn wlc_sends_new_connections_to_the_least_loaded_and_thresholds_stop_and_resume_them() -> Result<()> {
    let (_one, lab) = lab();
    let web4 = url(IpAddr::V4(VIP4));
    let agent = lab.start_agent(&lab.config("wlc", &[1, 1, 0]))?;
    // Long-lived connections, held on the first two real servers.
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut connection = lab.connect(SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT))?;
        let name = connection.get()?;
        held.push((connection, name));
    }
    let on = |name: &str| held.iter().filter(|(_, held)| held == name).count();
    assert_eq!((on(&lab.reals[0].name), on(&lab.reals[1].name)), (5, 5), "wlc alternates between equals");

    // The third comes in: it has no active connection, so it takes every new one (a
    // closed connection weighs 1/256 of an active one).
    let outcome = agent.reload(&lab.config("wlc", &[1, 1, 1]))?;
    ensure!(outcome.contains("reloaded:"), "{outcome}");
    assert_eq!(spread(&lab, &answered_by(&lab.http_get(&web4, 20)?)), vec![0, 0, 20]);
    let list = lbctl(&lab, &["list"])?;
    for (real, (active, inactive)) in lab.reals.iter().zip([(5, 0), (5, 0), (0, 20)]) {
        let line = format!("  -> {:<28} Route   1      {active:<10} {inactive:<10}", format!("{}:80", real.ipv4));
        assert!(list.contains(&line), "the held connections active, the closed ones not: {line:?} in\n{list}");
    }

    // An upper threshold of 25 on the third: five more, then the others take them.
    let rs3 = format!("      - {{ address: {}, weight: 1 }}", lab.reals[2].ipv4);
    let limited = |settings: &str| {
        let limit = rs3.replace(" }", ", upper_threshold: 25 }");
        format!("{settings}{}", lab.config("wlc", &[1, 1, 1]).replace(&rs3, &limit))
    };
    let outcome = agent.reload(&limited(""))?;
    ensure!(outcome.contains("reloaded:"), "{outcome}");
    assert_eq!(spread(&lab, &answered_by(&lab.http_get(&web4, 10)?)), vec![3, 2, 5], "overloaded at 25");
    let metrics = Samples::parse(&lab.metrics()?)?;
    let rs3_labels = [("service", "web4"), ("real", &lab.reals[2].ipv4.to_string() as &str)];
    assert_eq!(metrics.value("lb_real_inactive_connections", &rs3_labels)?, 25.0);

    // Once its closed connections expire (below 3/4 of 25), it takes new ones again.
    let outcome = agent.reload(&limited("timeouts: { tcp_fin: 1 }\n"))?;
    ensure!(outcome.contains("reloaded:"), "{outcome}");
    lab::wait_until(std::time::Duration::from_secs(20), "the closed connections to expire", || {
        let metrics = Samples::parse(&lab.metrics()?)?;
        Ok(metrics.value("lb_real_inactive_connections", &rs3_labels)? == 0.0)
    })?;
    assert_eq!(spread(&lab, &answered_by(&lab.http_get(&web4, 5)?)), vec![0, 0, 5], "no longer overloaded");
    for (connection, name) in &mut held {
        assert_eq!(&connection.get()?, name, "the held connections stayed where they were");
    }
    Ok(())
}

#[test]
fn persistence_keeps_a_client_network_together_and_a_firewall_mark_service_its_ports() -> Result<()> {
    let (_one, lab) = lab();
    let web4 = url(IpAddr::V4(VIP4));
    // A neighbour of the client, in its /24.
    let neighbour: IpAddr = "198.18.1.50".parse()?;
    lab.client.netns.run(&["ip", "addr", "add", &format!("{neighbour}/24"), "dev", "eth0"])?;
    let persistent = lab.config("rr", &WEIGHTS).replacen(
        "    reals:\n",
        "    persistence: { timeout: 3, netmask: 255.255.255.0 }\n    reals:\n",
        1,
    );
    let agent = lab.start_agent(&format!("timeouts: {{ tcp_fin: 1, time_wait: 1, close: 1 }}\n{persistent}"))?;
    let chosen = answered_by(&lab.http_get(&web4, 20)?);
    assert_eq!(chosen.len(), 1, "rr alone would spread them: {chosen:?}");
    let first = chosen.keys().next().cloned().unwrap_or_default();
    let neighbours = answered_by(&lab.http_get_from(Some(neighbour), &web4, 10)?);
    assert_eq!(neighbours, HashMap::from([(first.clone(), 10)]), "the same /24, the same real server");
    let list = lbctl(&lab, &["list"])?;
    assert!(list.contains("TCP  203.0.113.10:80 rr persistent 3 mask 255.255.255.0\n"), "{list}");
    lbctl(&lab, &["service", "edit", "web4", "--persistence", "3"])?;
    let list = lbctl(&lab, &["list"])?;
    assert!(list.contains("TCP  203.0.113.10:80 rr persistent 3 mask 255.255.255.0\n"), "a new timeout keeps the mask");
    // Quiet for longer than the timeout, its connections closed and expired: the
    // template goes, and the client is scheduled afresh (rr's next).
    std::thread::sleep(std::time::Duration::from_secs(10));
    let moved = answered_by(&lab.http_get(&web4, 1)?);
    assert!(!moved.contains_key(&first), "the client moved on from {first}: {moved:?}");

    // A firewall-mark service over ports 80 and 8080 of both VIPs, with persistence:
    // a client's connections to either port go to one real server.
    let header = &persistent[..persistent.find("services:\n").expect("a services list")];
    let mut shop = format!(
        "{header}services:\n  - name: shop\n    fwmark: 11\n    match:\n\
         \x20     - {{ vip: {VIP4}, protocol: tcp, ports: [80, 8080] }}\n\
         \x20     - {{ vip: \"{VIP6}\", protocol: tcp, ports: [80, 8080] }}\n\
         \x20   scheduler: rr\n    persistence: {{ timeout: 600 }}\n    reals:\n"
    );
    for real in &lab.reals {
        shop += &format!("      - {{ address: {} }}\n      - {{ address: \"{}\" }}\n", real.ipv4, real.ipv6);
    }
    let outcome = agent.reload(&shop)?;
    ensure!(outcome.contains("reloaded:"), "{outcome}");
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let mut answers = Vec::new();
        for port in [80, 8080, 80, 8080, 8080, 80] {
            let url = url(vip).replace(":80/", &format!(":{port}/"));
            answers.extend(lab.http_get(&url, 2)?.into_iter().map(|reply| reply.body));
        }
        answers.dedup();
        assert_eq!(answers.len(), 1, "{vip}: one real server for both ports: {answers:?}");
    }
    let list = lbctl(&lab, &["list"])?;
    assert!(list.contains("FWM  11 rr persistent 600\n"), "{list}");
    Ok(())
}

/// `lbctl --socket <the agent's> ARGS...` on the director.
fn lbctl(lab: &Lab, args: &[&str]) -> Result<String> {
    let lbctl = lb_tests::lab::binary("lbctl")?;
    let socket = lab.api_socket();
    lab.on_director(&[&[&*lbctl.to_string_lossy(), "--socket", &*socket.to_string_lossy()], args].concat())
}

#[test]
fn ipvsadm_command_lines_build_the_configuration_and_are_written_back() -> Result<()> {
    let (_one, lab) = lab();
    // The agent starts with interfaces only; ipvsadm's commands build the rest.
    let config = lab.config("wrr", &[]);
    let interfaces_only =
        format!("# Built by lbctl.\n{}", &config[..config.find("services:\n").unwrap_or(config.len())]);
    let agent = lab.start_agent(&interfaces_only)?;
    let lbctl = |args: &[&str]| lbctl(&lab, args);
    let vip4 = format!("{VIP4}:{HTTP_PORT}");
    lbctl(&["-A", "-t", &vip4, "-s", "wrr"])?;
    for (real, weight) in lab.reals.iter().zip(WEIGHTS) {
        lbctl(&["-a", "-t", &vip4, "-r", &format!("{}:{HTTP_PORT}", real.ipv4), "-g", "-w", &weight.to_string()])?;
    }
    let web4 = url(IpAddr::V4(VIP4));
    assert_eq!(spread(&lab, &answered_by(&lab.http_get(&web4, 60)?)), vec![10, 20, 30]);
    let list = lbctl(&["-L", "-n"])?;
    let mut expected = format!(
        "IP Virtual Server version 1.2.1 (size={})\nProt LocalAddress:Port Scheduler Flags\n  -> \
         RemoteAddress:Port           Forward Weight ActiveConn InActConn\nTCP  203.0.113.10:80 wrr\n",
        lb_common::CONN_TABLE_SIZE
    );
    for (real, weight) in lab.reals.iter().zip(WEIGHTS) {
        let name = format!("{}:80", real.ipv4);
        expected += &format!("  -> {name:<28} Route   {weight:<6} {:<10} {:<10}\n", 0, weight * 10);
    }
    assert_eq!(list, expected, "ipvsadm -Ln's lines");

    // Written back: the file runs the same after a reload, its comment kept.
    let written = std::fs::read_to_string(&agent.config)?;
    assert!(written.starts_with("# Built by lbctl.\ninterfaces:\n"), "{written}");
    assert!(written.contains("  - name: tcp-203.0.113.10-80\n"), "{written}");
    let saved = lbctl(&["-S", "-n"])?;
    agent.signal(libc::SIGHUP)?;
    lab::wait_until(std::time::Duration::from_secs(15), "the reload", || Ok(agent.log_text().contains("reloaded:")))?;
    assert_eq!(lbctl(&["-S", "-n"])?, saved, "a reload of the written file runs the same");

    // A mistake is answered with what was expected, and changes nothing.
    let status = |args: &str| {
        let lbctl = lab::binary("lbctl").expect("lbctl is built");
        let line =
            format!("{} --socket {} {args} 2>&1; echo \"status $?\"", lbctl.display(), lab.api_socket().display());
        lab.on_director(&["sh", "-c", &line])
    };
    let missing = status(&format!("-a -t {vip4} -w 3"))?;
    assert_eq!(missing, "You need to supply the 'real-server' option for the 'add-server' command\nstatus 2\n");
    let again = status(&format!("-A -t {vip4} -s rr"))?;
    assert!(again.ends_with("status 255\n") && again.contains("already exists"), "{again}");
    let heavy = status(&format!("-e -t {vip4} -r {}:80 -w 70000", lab.reals[0].ipv4))?;
    assert_eq!(heavy, "illegal weight specified\nstatus 2\n");
    assert_eq!(lbctl(&["-S", "-n"])?, saved, "refused changes change nothing");

    // -S, -C, -R: the same rules back.
    let rules = lab.dir.join("rules");
    std::fs::write(&rules, &saved)?;
    lbctl(&["-C"])?;
    assert_eq!(lbctl(&["-S", "-n"])?, "");
    lab.on_director(&[
        "sh",
        "-c",
        &format!(
            "{} --socket {} -R < {}",
            lab::binary("lbctl")?.display(),
            lab.api_socket().display(),
            rules.display()
        ),
    ])?;
    assert_eq!(lbctl(&["-S", "-n"])?, saved);
    // A file edited since the last reload is not written over.
    let running = std::fs::read_to_string(&agent.config)?;
    std::fs::write(&agent.config, running.replacen("weight: 3", "weight: 4", 1))?;
    let stale = status("--set 0 0 60")?;
    assert!(stale.contains("is not what runs") && stale.ends_with("status 255\n"), "{stale}");
    std::fs::write(&agent.config, running)?;
    lbctl(&["--set", "0", "0", "60"])?;
    assert_eq!(lbctl(&["-L", "--timeout"])?, "Timeout (tcp tcpfin udp): 900 120 60\n");

    // Drain under live traffic: weight 0 at once, and --wait returns when the held
    // connections end.
    let service = "tcp-203.0.113.10-80";
    let first = lab.reals[0].ipv4.to_string();
    let mut held = Vec::new();
    while held.len() < 2 {
        let mut connection = lab.connect(SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT))?;
        if connection.get()? == lab.reals[0].name {
            held.push(connection);
        }
    }
    let drained = std::thread::scope(|scope| -> Result<String> {
        let drain = scope.spawn(|| lbctl(&["real", "drain", service, &first, "--wait", "30"]));
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert!(!drain.is_finished(), "two connections are still active");
        let during = answered_by(&lab.http_get(&web4, 10)?);
        assert!(!during.contains_key(&lab.reals[0].name), "no new connection to a drained server: {during:?}");
        held.clear();
        drain.join().expect("the drain thread")
    })?;
    assert!(drained.contains("drained, no active connections"), "{drained}");
    assert!(lbctl(&["-L", "-n"])?.contains(&format!("  -> {:<28} Route   0 ", format!("{first}:80"))));

    // Readable commands name what they change.
    lbctl(&[
        "service",
        "add",
        "web8080",
        "--vip",
        &VIP4.to_string(),
        "--port",
        "8080",
        "--protocol",
        "tcp",
        "--scheduler",
        "rr",
    ])?;
    lbctl(&["real", "add", "web8080", &first, "--weight", "2"])?;
    assert!(lbctl(&["service", "list"])?.contains("web8080"));
    assert!(lbctl(&["-L", "-n", "-t", &format!("{VIP4}:8080")])?.contains("TCP  203.0.113.10:8080 rr\n"));
    lbctl(&["service", "del", "web8080"])?;
    assert!(lbctl(&["save"])?.contains("name: tcp-203.0.113.10-80"));

    // The socket is root's and its group's (root): nobody else may even list.
    assert_eq!(lab.on_director(&["stat", "-c", "%a", &lab.api_socket().to_string_lossy()])?, "660\n");
    let nobody = format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups {} --socket {} -L -n 2>&1; echo \"status $?\"",
        lab::binary("lbctl")?.display(),
        lab.api_socket().display()
    );
    let refused = lab.on_director(&["sh", "-c", &nobody])?;
    assert!(refused.contains("Permission denied") && refused.ends_with("status 2\n"), "{refused}");
    Ok(())
}

/// The configuration head of `lab.config` (interfaces, metrics, socket) with `services`.
fn with_services(lab: &Lab, services: &str) -> String {
    let config = lab.config("rr", &[]);
    format!("{}services:\n{services}", &config[..config.find("services:\n").unwrap_or(config.len())])
}

/// One request of the steady load: when it started and ended, and what it got.
struct Request {
    started: Instant,
    ended: Instant,
    reply: Reply,
}

#[test]
fn health_checks_take_failed_real_servers_out_under_load_and_bring_them_back() -> Result<()> {
    let (_one, lab) = lab();
    let [rs1, rs2, rs3] = [0, 1, 2].map(|i| lab.reals[i].ipv4);
    let [rs1_v6, rs2_v6] = [0, 1].map(|i| lab.reals[i].ipv6);
    let down_file = |address: IpAddr| lab.dir.join(format!("down-{address}"));
    let yaml = with_services(
        &lab,
        &format!(
            "  - name: web4
    vip: {VIP4}
    port: 80
    protocol: tcp
    scheduler: rr
    check: {{ type: http, path: /, status: 200, expect: rs, interval: 300ms, timeout: 1s, rise: 2, fall: 2 }}
    sorry_server: {rs3}
    reals: [{{ address: {rs1} }}, {{ address: {rs2} }}]
  - name: web6
    vip: \"{VIP6}\"
    port: 80
    protocol: tcp
    scheduler: rr
    on_failure: quiesce
    check: {{ type: exec, command: \"test ! -e {}/down-%a\", interval: 200ms, rise: 1, fall: 1 }}
    reals: [{{ address: \"{rs1_v6}\" }}, {{ address: \"{rs2_v6}\" }}]
",
            lab.dir.display()
        ),
    );
    let agent = lab.start_agent(&yaml)?;
    let web4 = url(IpAddr::V4(VIP4));
    let names = |replies: &[Reply]| answered_by(replies).into_keys().collect::<HashSet<String>>();
    let [name1, name2, name3] = [0, 1, 2].map(|i| lab.reals[i].name.clone());
    assert_eq!(names(&lab.http_get(&web4, 10)?), HashSet::from([name1.clone(), name2.clone()]));
    let up = |service: &str, real: IpAddr| -> Result<f64> {
        Samples::parse(&lab.metrics()?)?.value("lb_real_up", &[("service", service), ("real", &real.to_string())])
    };
    // What the data path serves, once the health transition is applied.
    let served = |vip: &str| lbctl(&lab, &["-L", "-n", "-t", vip]);
    let wait_served = |vip: &str, what: &str, wanted: &dyn Fn(&str) -> bool| {
        lab::wait_until(Duration::from_secs(10), what, || Ok(wanted(&served(vip)?)))
    };
    let (vip4, vip6) = (format!("{VIP4}:80"), format!("[{VIP6}]:80"));
    let line = |real: IpAddr, weight: u32| match real {
        IpAddr::V4(v4) => format!("  -> {:<28} Route   {weight:<6}", format!("{v4}:80")),
        IpAddr::V6(v6) => format!("  -> {:<28} Route   {weight:<6}", format!("[{v6}]:80")),
    };

    // rs1's web server stops under a steady load of new connections: once its two
    // failed checks have taken it out, every request succeeds, on rs2.
    let stop = AtomicBool::new(false);
    let requests = Mutex::new(Vec::new());
    let requests_since = |since: Instant| {
        let requests = requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        requests.iter().filter(|request: &&Request| request.started > since).count()
    };
    let (stopped, removed) = std::thread::scope(|scope| -> Result<_> {
        let load = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = lab.http_get(&web4, 1)?.remove(0);
                let request = Request { started, ended: Instant::now(), reply };
                requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(request);
            }
            anyhow::Ok(())
        });
        std::thread::sleep(Duration::from_millis(500));
        let stopped = Instant::now();
        lab.stop_nginx(0)?;
        wait_served(&vip4, "rs1 to be removed", &|list| !list.contains(&format!("{rs1}:80")))?;
        let removed = Instant::now();
        while requests_since(removed) < 10 {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        load.join().expect("the load's thread")?;
        Ok((stopped, removed))
    })?;
    let requests = requests.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Two failed checks 300ms apart, each refused at once: well within a few seconds.
    let took = removed - stopped;
    assert!(took < Duration::from_secs(4), "rs1 was taken out {took:?} after it stopped");
    for request in requests.iter().filter(|request| request.ended < stopped) {
        assert_eq!(request.reply.status, 200, "before rs1 stopped every request succeeds: {:?}", request.reply);
    }
    let after: Vec<&Request> = requests.iter().filter(|request| request.started > removed).collect();
    assert!(after.len() >= 10, "the load went on after rs1 was taken out");
    for request in after {
        assert_eq!((request.reply.status, &request.reply.body), (200, &name2), "rs2 alone: {:?}", request.reply);
    }

    // rs2 stops too: below the quorum, the sorry server serves alone, until both are
    // healthy again for `rise` checks.
    lab.stop_nginx(1)?;
    wait_served(&vip4, "the sorry server alone", &|list| {
        list.contains(&line(rs3.into(), 1)) && !list.contains(&line(rs2.into(), 1))
    })?;
    assert_eq!(up("web4", rs2.into())?, 0.0);
    assert_eq!(names(&lab.http_get(&web4, 6)?), HashSet::from([name3.clone()]), "the sorry server");
    lab.start_nginx(0)?;
    lab.start_nginx(1)?;
    wait_served(&vip4, "rs1 and rs2 back", &|list| {
        list.contains(&line(rs1.into(), 1))
            && list.contains(&line(rs2.into(), 1))
            && !list.contains(&format!("{rs3}:80"))
    })?;
    assert_eq!((up("web4", rs1.into())?, up("web4", rs2.into())?), (1.0, 1.0));
    assert_eq!(names(&lab.http_get(&web4, 10)?), HashSet::from([name1, name2.clone()]), "both back, no sorry server");

    // An exec check quiesces rs1 in web6: weight 0 in the listing, no new connections.
    std::fs::write(down_file(rs1_v6.into()), "")?;
    wait_served(&vip6, "rs1 quiesced in web6", &|list| list.contains(&line(rs1_v6.into(), 0)))?;
    assert_eq!(up("web6", rs1_v6.into())?, 0.0);
    let web6 = url(IpAddr::V6(VIP6));
    assert_eq!(names(&lab.http_get(&web6, 6)?), HashSet::from([name2]));
    std::fs::remove_file(down_file(rs1_v6.into()))?;
    wait_served(&vip6, "rs1 back in web6", &|list| list.contains(&line(rs1_v6.into(), 1)))?;
    // ipvsadm -S saves the configuration, not what the checks left of it.
    let saved = lbctl(&lab, &["-S", "-n"])?;
    assert!(saved.contains(&format!("-a -t {VIP4}:80 -r {rs1}:80 -g -w 1")), "{saved}");
    assert!(!saved.contains(&format!("{rs3}")), "no sorry server in the rules: {saved}");

    let metrics = Samples::parse(&lab.metrics()?)?;
    let rs1_labels = [("service", "web4"), ("real", &rs1.to_string() as &str)];
    assert!(metrics.value("lb_health_check_failures_total", &rs1_labels)? >= 2.0);
    assert!(metrics.value("lb_health_check_duration_seconds_count", &rs1_labels)? >= 4.0);
    deploy_uses_only_exported_metrics(&metrics)?;
    let log = agent.log_text();
    for said in [format!("real server {rs1} is down"), format!("real server {rs1} is up again")] {
        assert!(log.contains(&said), "the agent's log says {said:?}:\n{log}");
    }
    Ok(())
}

/// Connections held open through the restarts, half to each VIP.
const HELD: usize = 300;

/// Restarts keep every connection. SIGTERM leaves the program attached and its maps
/// pinned, forwarding alone; the next agent adopts the maps (the connection table
/// with them) and replaces the program inside the link; so does a new binary of the
/// same layout. Through it all, 300 held connections stay with their real servers and
/// a steady stream of new ones succeeds. A second agent with its own pins and socket
/// disturbs none of it; one on the same pins, or of another layout, is refused.
#[test]
fn restarts_and_a_new_binary_keep_every_connection_and_new_ones_succeed() -> Result<()> {
    let (_one, lab) = lab();
    let agent = lab.start_agent(&lab.config("wrr", &WEIGHTS))?;
    let (binary, config, socket) = (lab::binary("lb-agent")?, agent.config.clone(), lab.api_socket());
    let vips = [SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT), SocketAddr::new(IpAddr::V6(VIP6), HTTP_PORT)];
    let mut held = Vec::new();
    for i in 0..HELD {
        let mut connection = lab.connect(vips[i % 2])?;
        let real = connection.get()?;
        held.push((connection, real));
    }
    let program = || lab.xdp_program();
    let first = program()?;

    let stop = AtomicBool::new(false);
    let (opened, failed) = (AtomicUsize::new(0), Mutex::new(Vec::new()));
    let (last, agent) = std::thread::scope(|scope| -> Result<(u32, Agent)> {
        scope.spawn(|| {
            for vip in vips.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match lab.connect(*vip).and_then(|mut connection| connection.get()) {
                    Ok(_) => opened.fetch_add(1, Ordering::Relaxed),
                    Err(err) => {
                        failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(format!("{vip}: {err:#}"));
                        0
                    }
                };
            }
        });
        let counted = real_connections(&lab)?;
        let stopped = agent.stop()?;
        ensure!(stopped.success(), "lb-agent exits cleanly on SIGTERM: {stopped}");
        ensure!(program()? == first, "the program stays attached without its agent");
        answer_as_before(&mut held, "with no agent running")?;
        let opened_alone = opened.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        ensure!(opened.load(Ordering::Relaxed) > opened_alone, "new connections are served with no agent running");

        // The configuration changes while no agent runs: web4's weights, and the UDP
        // services make way for a new one (new ids and ring slots beside the adopted).
        let changed = lab.with_pin_path(&changed_while_stopped(&lab.config("wrr", &WEIGHTS)));
        std::fs::write(&config, &changed)?;
        let agent = lab.run_agent(&binary, &config, &socket, &[])?;
        let log = agent.log_text();
        ensure!(log.contains("adopted the maps pinned at"), "{log}");
        ensure!(log.contains("replaced the program attached to eth0"), "{log}");
        let second = program()?;
        ensure!(second != first, "the new agent's program replaced the old one in place ({first} → {second})");
        answer_as_before(&mut held, "after a restart")?;
        for (real, before) in &counted {
            let now = real_connections(&lab)?.remove(real).unwrap_or_default();
            ensure!(now >= *before, "{real:?}'s connections counter went on from {before} (now {now}): ids kept");
        }
        ensure!(lab.http_get(&url(IpAddr::V4(VIP4)).replace(":80/", ":8080/"), 6)?.len() == 6, "the new service");
        // The adopted maps were read back: what the file no longer has is taken out.
        let dns4 = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
        ensure!(lab.udp_query(40053, dns4).is_err(), "dns4, removed while no agent ran, is no longer forwarded");

        let new_binary = lab.dir.join("lb-agent.new");
        std::fs::copy(&binary, &new_binary)?;
        agent.stop()?;
        let agent = lab.run_agent(&new_binary, &config, &socket, &[])?;
        let third = program()?;
        ensure!(third != second, "the new binary's program is attached");
        answer_as_before(&mut held, "after the binary was replaced")?;
        two_agents_on_one_host_keep_apart(&lab, &binary)?;
        answer_as_before(&mut held, "beside a second agent")?;
        stop.store(true, Ordering::Relaxed);
        Ok((third, agent))
    })?;
    let failed = failed.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    ensure!(failed.is_empty(), "{} new connections failed: {failed:?}", failed.len());
    let opened = opened.into_inner();
    ensure!(opened >= 100, "a steady stream of new connections: {opened}");

    // The connection table was kept: once the ager has counted it (the stream's last
    // connections closing), the held connections are the active ones.
    let mut list = String::new();
    lab::wait_until(Duration::from_secs(15), "the held connections to be the active ones", || {
        list = lbctl(&lab, &["-L", "-n"])?;
        let active: usize = list
            .lines()
            .filter(|line| line.starts_with("  -> "))
            .filter_map(|line| line.split_whitespace().nth(4)?.parse::<usize>().ok())
            .sum();
        Ok(active == HELD)
    })
    .map_err(|err| err.context(list.clone()))?;

    // An agent of another layout's pins is refused before it touches anything.
    agent.stop()?;
    std::fs::create_dir(lab.pin_path().join("layout-999"))?;
    let refused = lab.run_agent(&binary, &config, &socket, &[]).err().map(|err| format!("{err:#}")).unwrap_or_default();
    ensure!(refused.contains("another layout (999;"), "{refused}");
    ensure!(refused.contains("lb-agent --detach"), "{refused}");
    ensure!(program()? == last, "the refused agent changed nothing");
    answer_as_before(&mut held, "after an agent of another layout was refused")?;
    let detached =
        lab.on_director(&[&*binary.to_string_lossy(), "--config", &*config.to_string_lossy(), "--detach"])?;
    ensure!(detached.contains("detached lb_ingress from eth0"), "{detached}");
    ensure!(!lab.on_director(&["ip", "link", "show", "dev", "eth0"])?.contains("xdp"), "--detach removed the program");
    ensure!(!lab.pin_path().exists(), "and every layout's pins: {detached}");
    Ok(())
}

/// `yaml` (the lab's standard configuration) with web4's first weight doubled, the UDP
/// services gone and a new service on port 8080 of the IPv4 VIP.
fn changed_while_stopped(yaml: &str) -> String {
    let start = yaml.find("services:\n").expect("a services list") + "services:\n".len();
    let (head, services) = yaml.split_at(start);
    let kept: Vec<String> = services
        .split("  - name: ")
        .filter(|service| !service.is_empty() && !service.starts_with("dns"))
        .map(|service| format!("  - name: {service}"))
        .collect();
    let web4 = kept.iter().find(|service| service.starts_with("  - name: web4")).expect("web4").clone();
    let web4_8080 = web4.replacen("web4", "web4-8080", 1).replacen("port: 80\n", "port: 8080\n", 1);
    format!("{head}{}{}{web4_8080}", web4.replacen("weight: 1 }", "weight: 2 }", 1), kept[1..].concat())
}

/// Each real server's `lb_real_connections_total`, by service and address.
fn real_connections(lab: &Lab) -> Result<HashMap<(String, String), f64>> {
    let metrics = Samples::parse(&lab.metrics()?)?;
    let counted = metrics.all("lb_real_connections_total").map(|(labels, value)| {
        let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
        ((label("service"), label("real")), value)
    });
    Ok(counted.collect())
}

/// Every held connection answers again, from the real server it had.
fn answer_as_before(held: &mut [(lab::KeptAlive, String)], when: &str) -> Result<()> {
    for (i, (connection, real)) in held.iter_mut().enumerate() {
        let now = connection.get().map_err(|err| err.context(format!("held connection {i}, {when}")))?;
        ensure!(now == *real, "held connection {i} moved from {real} to {now} {when}");
    }
    Ok(())
}

/// A second agent beside the first, with a pin_path, api_socket and metrics_listen of
/// its own (on the director's loopback, no services), runs and is taken out of service
/// without touching the first; one on the first's pins is refused.
fn two_agents_on_one_host_keep_apart(lab: &Lab, binary: &std::path::Path) -> Result<()> {
    let program = lab.xdp_program()?;
    let (config, socket) = (lab.dir.join("second.yaml"), lab.dir.join("second.sock"));
    let pins = lab.dir.join("bpffs/second");
    let yaml = format!(
        "interfaces: [{{ name: lo, xdp_mode: generic }}]\npin_path: {}\napi_socket: {}\nmetrics_listen: \
         127.0.0.1:9799\n",
        pins.display(),
        socket.display()
    );
    std::fs::write(&config, &yaml)?;
    let second = lab.run_agent(binary, &config, &socket, &[])?;
    ensure!(pins.join(format!("layout-{}", lb_common::LAYOUT)).join("xdp-lo").exists(), "the second agent's own pins");
    std::fs::write(&config, yaml.replace(&pins.display().to_string(), &lab.pin_path().display().to_string()))?;
    let refused = lab
        .run_agent(binary, &config, &lab.dir.join("third.sock"), &[])
        .err()
        .map(|err| format!("{err:#}"))
        .unwrap_or_default();
    ensure!(refused.contains("another lb-agent holds the pins"), "{refused}");
    std::fs::write(&config, &yaml)?;
    let detached = second.take_out_of_service()?;
    ensure!(detached.contains("detached lb_ingress from lo"), "{detached}");
    ensure!(!pins.exists(), "the second agent's pins are gone");
    ensure!(lab.xdp_program()? == program, "the first agent's program is where it was");
    ensure!(lb_api::call(&lab.api_socket(), &lb_api::Request::List).is_ok(), "the first agent still answers");
    Ok(())
}
