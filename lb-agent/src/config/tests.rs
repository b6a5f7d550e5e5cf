use std::{path::Path, time::Duration};

use super::*;

const EXAMPLE: &str = "\
interfaces:
  - name: eth0
    xdp_mode: auto
metrics_listen: 127.0.0.1:9798
services:
  - name: web              # unique; used in metrics labels and by lbctl
    vip: 203.0.113.10      # IPv4 or IPv6
    port: 80               # 0 = all ports
    protocol: tcp          # tcp | udp
    scheduler: wrr
    forwarding: dr         # default for the reals below
    reals:
      - { address: 198.18.1.11, weight: 1 }
      - { address: 198.18.1.12, weight: 2 }
";

fn parse(source: &str) -> Result<Config, ConfigError> {
    Config::parse(source, Path::new("/etc/lb/lb.yaml"))
}

/// The example with one line replaced.
fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = EXAMPLE.lines().collect();
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

fn refused(source: &str) -> ConfigError {
    parse(source).expect_err("the configuration should be refused")
}

#[test]
fn the_documented_example_parses() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.interfaces, vec![Interface { name: "eth0".into(), xdp_mode: XdpMode::Auto }]);
    assert_eq!(config.api_socket, PathBuf::from(lb_api::DEFAULT_SOCKET));
    let web = &config.services[0];
    assert_eq!(
        (web.name.as_str(), web.port, web.protocol, web.scheduler),
        ("web", Some(80), Some(Protocol::Tcp), Scheduler::Wrr)
    );
    assert_eq!(web.reals.iter().map(|r| r.weight).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(web.forwarding_of(&web.reals[0]), Forwarding::Dr);
}

#[test]
fn the_deployed_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lb.yaml");
    Config::load(&path).unwrap();
}

#[test]
fn defaults_are_ipvsadm_s() {
    let config = parse(&with_line(13, "      - { address: 198.18.1.11 }")).unwrap();
    assert_eq!(config.services[0].reals[0].weight, 1);
    let config = parse("interfaces: [{ name: eth0 }]\n").unwrap();
    assert_eq!(config.interfaces[0].xdp_mode, XdpMode::Auto);
    assert_eq!(config.metrics_listen, "127.0.0.1:9798".parse().unwrap());
    assert!(config.services.is_empty());
    let timeouts = config.timeouts;
    assert_eq!((timeouts.tcp, timeouts.tcp_fin, timeouts.udp), (900, 120, 300), "ipvsadm -L --timeout");
    assert_eq!((timeouts.time_wait, timeouts.close, timeouts.syn_recv), (120, 10, 60), "ip_vs_proto_tcp.c");
}

#[test]
fn timeouts_left_out_keep_ipvs_defaults() {
    let config = parse(&format!("timeouts: {{ udp: 1 }}\n{EXAMPLE}")).unwrap();
    assert_eq!(config.timeouts, Timeouts { udp: 1, ..Timeouts::default() });
    let config = parse(&format!("timeouts: {{ tcp: 60, tcp_fin: 10, udp: 30, time_wait: 2 }}\n{EXAMPLE}")).unwrap();
    assert_eq!(config.timeouts, Timeouts { tcp: 60, tcp_fin: 10, udp: 30, time_wait: 2, ..Timeouts::default() });
}

#[test]
fn pin_path_is_the_hosts_bpf_file_system_by_default_and_must_be_absolute() {
    assert_eq!(parse(EXAMPLE).unwrap().pin_path, std::path::Path::new("/sys/fs/bpf/lb"));
    let config = parse(&format!("pin_path: /sys/fs/bpf/lb-second\n{EXAMPLE}")).unwrap();
    assert_eq!(config.pin_path, std::path::Path::new("/sys/fs/bpf/lb-second"));
    let err = refused(&format!("pin_path: bpf/lb\n{EXAMPLE}"));
    assert_eq!((err.line, err.field.as_str()), (Some(1), "pin_path"));
    assert!(err.message.contains("not an absolute path"), "{err}");
}

#[test]
fn a_zero_or_unknown_timeout_names_its_line() {
    let err = refused(&format!("{EXAMPLE}timeouts:\n  tcp: 900\n  tcp_fin: 0\n  udp: 300\n"));
    assert_eq!((err.line, err.field.as_str()), (Some(17), "timeouts.tcp_fin"));
    assert!(err.message.contains("at least 1"), "{err}");
    let err = refused(&format!("timeouts: {{ tcp: 900, udp: 0 }}\n{EXAMPLE}"));
    assert_eq!((err.line, err.field.as_str()), (Some(1), "timeouts.udp"));
    let err = refused(&format!("timeouts: {{ tcpfin: 120 }}\n{EXAMPLE}"));
    assert_eq!((err.line, err.field.as_str()), (Some(1), "timeouts"));
    assert!(err.message.contains("unknown field `tcpfin`"), "{err}");
    let err = refused(&format!("timeouts: {{ udp: -1 }}\n{EXAMPLE}"));
    assert_eq!((err.line, err.field.as_str()), (Some(1), "timeouts.udp"));
}

#[test]
fn a_typo_names_file_line_and_field() {
    let err = refused(&with_line(10, "    schedular: wrr"));
    assert_eq!(err.line, Some(10));
    assert_eq!(err.field, "services[0]");
    assert!(err.message.contains("unknown field `schedular`"), "{err}");
    assert!(err.to_string().starts_with("/etc/lb/lb.yaml:10: services[0]: unknown field `schedular`"), "{err}");
}

#[test]
fn a_bad_value_names_its_line() {
    let err = refused(&with_line(8, "    port: 80000"));
    assert_eq!((err.line, err.field.as_str()), (Some(8), "services[0].port"));
    let err = refused(&with_line(7, "    vip: 203.0.113.300"));
    assert_eq!((err.line, err.field.as_str()), (Some(7), "services[0].vip"));
    let err = refused(&with_line(3, "    xdp_mode: turbo"));
    assert_eq!((err.line, err.field.as_str()), (Some(3), "interfaces[0].xdp_mode"));
}

#[test]
fn broken_yaml_names_its_line() {
    let err = refused(&with_line(9, "    protocol: [tcp"));
    assert!(err.line.is_some_and(|line| line >= 9), "{err}");
}

#[test]
fn weight_out_of_range_is_refused_at_its_line() {
    let err = refused(&with_line(14, "      - { address: 198.18.1.12, weight: 70000 }"));
    assert_eq!((err.line, err.field.as_str()), (Some(14), "services[0].reals[1].weight"));
    assert!(err.message.contains("0 to 65535"), "{err}");
}

#[test]
fn scheduler_flags_must_belong_to_the_scheduler() {
    let sh = with_line(10, "    scheduler: sh\n    scheduler_flags: [sh-port, sh-fallback]");
    let web = &parse(&sh).unwrap().services[0];
    assert_eq!(web.scheduler_flags, [SchedulerFlag::ShPort, SchedulerFlag::ShFallback]);
    let err = refused(&with_line(10, "    scheduler: wrr\n    scheduler_flags: [sh-port]"));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].scheduler_flags[0]"));
    assert_eq!(err.message, "`sh-port` is a flag of the sh scheduler, not of wrr");
    let err = refused(&with_line(10, "    scheduler: sh\n    scheduler_flags: [sh-sticky]"));
    assert_eq!(err.line, Some(11), "{err}");
    let mh = with_line(10, "    scheduler: mh\n    scheduler_flags: [mh-port, mh-fallback]");
    assert_eq!(parse(&mh).unwrap().services[0].scheduler_flags, [SchedulerFlag::MhPort, SchedulerFlag::MhFallback]);
    let err = refused(&with_line(10, "    scheduler: mh\n    scheduler_flags: [mh-port, sh-fallback]"));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].scheduler_flags[1]"));
    assert_eq!(err.message, "`sh-fallback` is a flag of the sh scheduler, not of mh");
}

#[test]
fn mh_table_size_is_a_sensible_prime_for_mh_only() {
    let mh = |size: &str| with_line(10, &format!("    scheduler: mh\n    mh_table_size: {size}"));
    assert_eq!(parse(&mh("4093")).unwrap().services[0].mh_table_size(), 4093);
    let without = parse(&with_line(10, "    scheduler: mh")).unwrap();
    assert_eq!(without.services[0].mh_table_size(), DEFAULT_MH_TABLE_SIZE);
    for size in ["65536", "250", "241", "131101", "1"] {
        let err = refused(&mh(size));
        assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].mh_table_size"), "{size}");
        assert_eq!(err.message, format!("{size} is not a prime from 251 to 131071 (65537 if left out)"));
    }
    let err = refused(&with_line(10, "    scheduler: sh\n    mh_table_size: 251"));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].mh_table_size"));
    assert_eq!(err.message, "the table size is mh's; the scheduler is sh");
    let more: String =
        (0..252).map(|i| format!("      - {{ address: 198.18.{}.{} }}\n", 2 + i / 200, 1 + i % 200)).collect();
    let err = refused(&(mh("251") + &more));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].mh_table_size"));
    assert_eq!(err.message, "251 buckets cannot hold 254 real servers");
}

#[test]
fn the_default_scheduler_is_wlc_and_thresholds_are_ipvs_s() {
    let without = EXAMPLE.lines().filter(|line| !line.contains("scheduler:")).collect::<Vec<_>>().join("\n");
    assert_eq!(parse(&without).unwrap().services[0].scheduler, Scheduler::Wlc, "as ipvsadm");
    let wlc = with_line(10, "    scheduler: wlc");
    let config =
        parse(&wlc.replace("198.18.1.11, weight: 1 }", "198.18.1.11, upper_threshold: 1000, lower_threshold: 800 }"));
    let real = &config.unwrap().services[0].reals[0];
    assert_eq!((real.upper_threshold, real.lower_threshold), (1000, 800));
    let err =
        refused(&wlc.replace("198.18.1.11, weight: 1 }", "198.18.1.11, upper_threshold: 10, lower_threshold: 20 }"));
    assert_eq!((err.line, err.field.as_str()), (Some(13), "services[0].reals[0].lower_threshold"));
    assert!(err.message.contains("above the upper threshold"), "{err}");
    // As ipvsadm, with every scheduler.
    for scheduler in ["rr", "wrr", "sh", "dh", "mh"] {
        let fixed = with_line(10, &format!("    scheduler: {scheduler}"));
        let config = parse(&fixed.replace("198.18.1.11, weight: 1 }", "198.18.1.11, upper_threshold: 9 }"));
        assert_eq!(config.unwrap().services[0].reals[0].upper_threshold, 9, "{scheduler}");
    }
}

#[test]
fn every_ipvs_scheduler_is_accepted_and_an_unknown_one_is_named() {
    for scheduler in ["rr", "wrr", "lc", "wlc", "sed", "nq", "lblc", "lblcr", "dh", "sh", "mh", "fo", "ovf"] {
        let config = parse(&with_line(10, &format!("    scheduler: {scheduler}"))).unwrap();
        assert_eq!(config.services[0].scheduler.to_string(), scheduler);
    }
    let err = refused(&with_line(10, "    scheduler: fastest"));
    assert_eq!((err.line, err.field.as_str()), (Some(10), "services[0].scheduler"));
    assert!(err.message.contains("unknown variant `fastest`"), "{err}");
}

#[test]
fn lblc_and_lblcr_expire_their_entries_after_their_own_expiration() {
    let lblc = with_line(10, "    scheduler: lblc");
    let service = |source: &str| parse(source).unwrap().services[0].clone();
    assert_eq!(service(&lblc).locality_expiration(), Some(86400), "IPVS's default: a day");
    assert_eq!(service(&with_line(10, "    scheduler: wrr")).locality_expiration(), None);
    let lblc = with_line(10, "    scheduler: lblc\n    lblc_expiration: 60");
    assert_eq!(service(&lblc).locality_expiration(), Some(60));
    let lblcr = with_line(10, "    scheduler: lblcr\n    lblcr_expiration: 3600");
    assert_eq!(service(&lblcr).locality_expiration(), Some(3600));
    // Each belongs to its own scheduler, as each sysctl belongs to its module.
    let err = refused(&with_line(10, "    scheduler: lblcr\n    lblc_expiration: 60"));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].lblc_expiration"));
    assert_eq!(err.message, "the expiration is lblc's; the scheduler is lblcr");
    let err = refused(&with_line(10, "    scheduler: wrr\n    lblcr_expiration: 60"));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].lblcr_expiration"));
    assert_eq!(err.message, "the expiration is lblcr's; the scheduler is wrr");
    let err = refused(&with_line(10, "    scheduler: lblc\n    lblc_expiration: 0"));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].lblc_expiration"));
    assert_eq!(err.message, "0 seconds is too short (at least 1)");
    let err = refused(&with_line(10, "    scheduler: lblc\n    lblc_expiration: -5"));
    assert_eq!((err.line, err.field.as_str()), (Some(11), "services[0].lblc_expiration"), "{err}");
    assert!(
        err.to_string()
            .starts_with("/etc/lb/lb.yaml:11: services[0].lblc_expiration: invalid type: integer `-5`, expected u32"),
        "{err}"
    );
}

#[test]
fn duplicates_and_mixed_families_point_at_the_second_occurrence() {
    let twice = format!("{EXAMPLE}{}", &EXAMPLE[EXAMPLE.find("  - name: web").unwrap()..]);
    let err = refused(&twice);
    assert_eq!((err.line, err.field.as_str()), (Some(15), "services[1].name"));
    let err = refused(&twice.replacen("name: web", "name: web2", 2).replacen("name: web2", "name: web", 1));
    assert_eq!((err.line, err.field.as_str()), (Some(17), "services[1].port"));
    let err = refused(&with_line(14, "      - { address: 198.18.1.11, weight: 2 }"));
    assert_eq!((err.line, err.field.as_str()), (Some(14), "services[0].reals[1].address"));
    let err = refused(&with_line(14, "      - { address: '2001:db8::1', weight: 2 }"));
    assert_eq!((err.line, err.field.as_str()), (Some(14), "services[0].reals[1].address"));
    assert!(err.message.contains("different IP versions"), "{err}");
}

#[test]
fn tun_carries_one_ip_version_in_the_other() {
    let config = parse(&with_line(11, "    forwarding: ipip").replace("198.18.1.12", "\"2001:db8:21::12\"")).unwrap();
    assert_eq!(config.services[0].forwarding, Forwarding::Tun);
    let err = refused(&with_line(14, "      - { address: 198.18.1.12, weight: 1, port: 8080, forwarding: tun }"));
    assert_eq!((err.line, err.field.as_str()), (Some(14), "services[0].reals[1].port"));
    assert!(err.message.contains("tun does not rewrite the packet"), "{err}");
}

#[test]
fn tunnel_sources_are_one_address_or_one_per_ip_version() {
    let one = format!("tunnel_source: 198.18.21.1\n{EXAMPLE}");
    let config = parse(&one).unwrap();
    assert_eq!(config.tunnel_source_for("198.18.1.11".parse().unwrap()), Some("198.18.21.1".parse().unwrap()));
    assert_eq!(config.tunnel_source_for("2001:db8::1".parse().unwrap()), None);
    let both = format!("tunnel_source: [198.18.21.1, \"2001:db8:21::1\"]\n{EXAMPLE}");
    let config = parse(&both).unwrap();
    assert_eq!(config.tunnel_source_for("2001:db8::1".parse().unwrap()), Some("2001:db8:21::1".parse().unwrap()));
    let err = refused(&format!("tunnel_source: [198.18.21.1, 198.18.21.2]\n{EXAMPLE}"));
    assert_eq!((err.line, err.field.as_str()), (Some(1), "tunnel_source[1]"));
    assert!(err.message.contains("one per version"), "{err}");
    let err = refused(&format!("tunnel_source: eth0\n{EXAMPLE}"));
    assert_eq!(err.line, Some(1), "{err}");
}

#[test]
fn service_names_must_suit_metric_labels() {
    let err = refused(&with_line(6, "  - name: \"web site\""));
    assert_eq!((err.line, err.field.as_str()), (Some(6), "services[0].name"));
}

#[test]
fn no_interface_is_refused() {
    let err = refused("interfaces: []\n");
    assert_eq!((err.line, err.field.as_str()), (Some(1), "interfaces"));
}

#[test]
fn an_unreadable_file_says_so() {
    let err = Config::load(Path::new("/nonexistent/lb.yaml")).unwrap_err();
    assert_eq!(err.line, None);
    assert!(err.to_string().starts_with("/nonexistent/lb.yaml: cannot read"), "{err}");
}

#[test]
fn restart_only_fields_are_named() {
    let old = parse(EXAMPLE).unwrap();
    let mut new = old.clone();
    assert!(old.restart_only_changes(&new).is_empty());
    new.timeouts.tcp = 60;
    assert!(old.restart_only_changes(&new).is_empty(), "timeouts are the agent's own: a reload changes them");
    new.metrics_listen = "127.0.0.1:1".parse().unwrap();
    new.connection_table_size = 4096;
    new.pin_path = "/sys/fs/bpf/other".into();
    assert_eq!(old.restart_only_changes(&new), vec!["metrics_listen", "connection_table_size", "pin_path"]);
}

#[test]
fn nat_and_fnat_real_servers_may_map_the_port_and_dr_may_not() {
    let nat = with_line(11, "    forwarding: masq").replace("weight: 2 }", "weight: 2, port: 8080 }");
    let config = parse(&nat).unwrap();
    let web = &config.services[0];
    assert_eq!((web.forwarding_of(&web.reals[1]), web.port_of(&web.reals[1])), (Forwarding::Nat, 8080));
    assert_eq!(web.port_of(&web.reals[0]), 80, "the service's port by default");

    let err = refused(&EXAMPLE.replace("weight: 2 }", "weight: 2, port: 8080 }"));
    assert_eq!((err.line, err.field.as_str()), (Some(14), "services[0].reals[1].port"));
    assert!(err.message.contains("dr does not rewrite the packet") && err.message.contains("nat or fnat"), "{err}");
    let same_port = EXAMPLE.replace("weight: 2 }", "weight: 2, port: 80 }");
    assert!(parse(&same_port).is_ok(), "naming the service's own port is no mapping");
}

#[test]
fn fnat_needs_a_local_address_of_the_vips_family() {
    let fnat = with_line(11, "    forwarding: fnat");
    let err = refused(&fnat);
    assert_eq!((err.line, err.field.as_str()), (Some(6), "services[0].local_addresses"));
    assert!(err.message.contains("IPv4"), "{err}");
    let v6_only = fnat.replace("    reals:", "    local_addresses: [\"2001:db8:21::100\"]\n    reals:");
    assert_eq!(refused(&v6_only).field, "services[0].local_addresses");
    let both = fnat.replace(
        "    reals:",
        "    local_addresses: [198.18.21.100, 198.18.21.101, \"2001:db8:21::100\"]\n    toa: true\n    reals:",
    );
    assert!(parse(&both).unwrap().services[0].toa);
    let both = both.replace("    toa: true", "    toa: false");
    let config = parse(&both).unwrap();
    let web = &config.services[0];
    assert!(!web.toa);
    assert_eq!(web.local_port_range, [1024, 65535]);
    let locals: Vec<String> = web.local_addresses_of(true).map(|a| a.to_string()).collect();
    assert_eq!(locals, ["198.18.21.100", "198.18.21.101"]);
    let err = refused(&both.replace("    toa: false", "    local_port_range: [2000, 1000]"));
    assert_eq!((err.line, err.field.as_str()), (Some(13), "services[0].local_port_range"));
}

#[test]
fn toa_goes_with_full_nat_over_tcp() {
    let fnat = with_line(11, "    forwarding: fnat")
        .replace("    reals:", "    local_addresses: [198.18.21.100]\n    toa: true\n    reals:");
    let config = parse(&fnat).unwrap();
    assert!(config.services[0].toa);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());

    let err = refused(&fnat.replace("protocol: tcp", "protocol: udp"));
    assert_eq!((err.line, err.field.as_str()), (Some(13), "services[0].toa"));
    assert!(err.message.contains("TCP option") && err.message.contains("udp"), "{err}");

    for method in ["dr", "nat"] {
        let err = refused(&fnat.replace("forwarding: fnat", &format!("forwarding: {method}")));
        assert_eq!((err.line, err.field.as_str()), (Some(13), "services[0].toa"), "{method}");
        assert!(err.message.contains("goes with fnat") && err.message.contains(method), "{err}");
    }

    // A real server of another method beside Full-NAT ones: valid, and said.
    let mixed = fnat.replace("weight: 2 }", "weight: 2, forwarding: nat }");
    let warnings = parse(&mixed).unwrap().warnings();
    assert_eq!(warnings, ["service web: toa applies to its fnat real servers only; 198.18.1.12 (nat) get none"]);
    let mixed_without = mixed.replace("    toa: true\n", "");
    assert!(parse(&mixed_without).unwrap().warnings().is_empty());
}

const SHOP: &str = "  - name: shop
    fwmark: 11
    match:
      - { vip: 203.0.113.10, protocol: tcp, ports: [80, 443] }
      - { vip: \"2001:db8:100::10\", protocol: tcp, ports: [80, 443] }
    scheduler: rr
    persistence: { timeout: 600 }
    reals:
      - { address: 198.18.1.11 }
      - { address: \"2001:db8:1::11\" }
";

#[test]
fn a_firewall_mark_service_serves_every_vip_and_port_it_matches() {
    let example = EXAMPLE.replace("port: 80 ", "port: 8080 ");
    let config = parse(&format!("{example}{SHOP}")).unwrap();
    let shop = &config.services[1];
    assert_eq!((shop.fwmark, shop.persistence.map(|p| p.timeout)), (Some(11), Some(600)));
    let endpoints: Vec<String> = shop.endpoints().iter().map(|e| format!("{}:{}", e.vip, e.port)).collect();
    assert_eq!(endpoints, ["203.0.113.10:80", "203.0.113.10:443", "2001:db8:100::10:80", "2001:db8:100::10:443"]);
    assert_eq!(shop.families(), (true, true));
    // Each real server serves its own IP version's VIPs; a port of its own it cannot map.
    let mapped = SHOP.replace("{ address: 198.18.1.11 }", "{ address: 198.18.1.11, port: 8080, forwarding: nat }");
    let err = refused(&format!("{example}{mapped}"));
    assert_eq!((err.line, err.field.as_str()), (Some(23), "services[1].reals[0].port"));
}

#[test]
fn a_vip_port_in_a_firewall_mark_service_and_a_plain_one_is_ambiguous() {
    let err = refused(&format!("{EXAMPLE}{SHOP}"));
    assert_eq!((err.line, err.field.as_str()), (Some(18), "services[1].match[0]"));
    assert!(err.message.contains("tcp 203.0.113.10 port 80 is already served by services[0]: ambiguous"), "{err}");
    let all_ports = SHOP.replace("ports: [80, 443] }\n      - { vip: \"2001", "ports: [] }\n      - { vip: \"2001");
    let example = EXAMPLE.replace("port: 80 ", "port: 0  ");
    let err = refused(&format!("{example}{all_ports}"));
    assert!(err.message.contains("port 0 is already served by services[0]: ambiguous"), "{err}");
}

#[test]
fn a_service_is_plain_or_a_firewall_mark_one_not_both() {
    let example = EXAMPLE.replace("port: 80 ", "port: 8080 ");
    let err =
        refused(&format!("{example}{}", SHOP.replace("    fwmark: 11\n", "    fwmark: 11\n    vip: 203.0.113.11\n")));
    assert_eq!(err.field, "services[1].vip");
    assert!(err.message.contains("under match:"), "{err}");
    let err = refused(&format!("{example}{}", SHOP.replace("    fwmark: 11\n", "")));
    assert_eq!(err.field, "services[1].match");
    let err = refused(&with_line(7, "    vip: 203.0.113.10\n    fwmark: 0"));
    assert_eq!(err.field, "services[0].fwmark");
    let err = refused(&with_line(8, ""));
    assert_eq!((err.field.as_str(), err.message.contains("port: is missing")), ("services[0].port", true), "{err}");
}

#[test]
fn persistence_takes_ipvsadm_s_timeout_and_netmask() {
    let option = |line: &str| with_line(11, &format!("    forwarding: dr\n    {line}"));
    let with = |persistence: &str| option(&format!("persistence: {persistence}"));
    let config = parse(&with("{}")).unwrap();
    assert_eq!(config.services[0].persistence, Some(Persistence { timeout: 300, netmask: None }));
    assert_eq!(config.services[0].persistence_prefixes(), Some((32, 128)));
    let config = parse(&with("{ timeout: 360, netmask: 255.255.255.0 }")).unwrap();
    assert_eq!(config.services[0].persistence_prefixes(), Some((24, 128)));
    let config = parse(&with("{ timeout: 360, netmask: 16 }")).unwrap();
    assert_eq!(config.services[0].persistence_prefixes(), Some((16, 128)), "an IPv4 service's prefix length");
    let err = refused(&with("{ netmask: 255.0.255.0 }"));
    assert_eq!((err.line, err.field.as_str()), (Some(12), "services[0].persistence.netmask"));
    assert!(err.message.contains("not a netmask"), "{err}");
    let err = refused(&with("{ netmask: 48 }"));
    assert!(err.message.contains("/48 is longer"), "{err}");
    let err = refused(&with("{ timeout: 0 }"));
    assert_eq!(err.field, "services[0].persistence.timeout");
    let err = refused(&option("expire_quiescent_template: true"));
    assert_eq!(err.field, "services[0].expire_quiescent_template");
    let config = parse(&option("expire_nodest_conn: true")).unwrap();
    assert!(config.services[0].expire_nodest_conn);
}

#[test]
fn a_firewall_mark_service_of_every_port_is_ambiguous_beside_a_plain_port() {
    let all_ports = SHOP.replace("ports: [80, 443] }\n      - { vip: \"2001", "ports: [] }\n      - { vip: \"2001");
    let err = refused(&format!("{EXAMPLE}{all_ports}"));
    assert_eq!(err.field, "services[1].match[0]");
    assert!(err.message.contains("port 0 and services[0]'s port 80 are ambiguous"), "{err}");
}

/// The example's service with `keys` added (indented as its other keys).
fn with_service_keys(keys: &str) -> String {
    let indented: String = keys.lines().map(|line| format!("    {line}\n")).collect();
    EXAMPLE.replace("    reals:\n", &format!("{indented}    reals:\n"))
}

#[test]
fn the_issues_health_check_parses_with_its_words() {
    let config = parse(&with_service_keys(
        "check:\n  type: http\n  port: 8080\n  path: /healthz\n  status: [200, 299]\n  expect: \"ok\"\n  interval: \
         2s\n  timeout: 1s\n  rise: 2\n  fall: 3\non_failure: quiesce\nsorry_server: 198.18.1.99\nquorum: 2",
    ))
    .unwrap();
    let web = &config.services[0];
    let check = web.check.as_ref().unwrap();
    assert_eq!((check.kind, check.port, check.path.as_deref()), (CheckType::Http, Some(8080), Some("/healthz")));
    assert_eq!((check.status, check.expect.as_deref()), (Some(Status::Range([200, 299])), Some("ok")));
    assert_eq!((check.interval.0, check.timeout.0), (Duration::from_secs(2), Duration::from_secs(1)));
    assert_eq!((check.rise, check.fall), (2, 3));
    assert_eq!((web.on_failure, web.sorry_server, web.quorum()), (OnFailure::Quiesce, "198.18.1.99".parse().ok(), 2));
    assert_eq!(web.check_of(&web.reals[1]), Some(check));
}

#[test]
fn check_durations_read_as_operators_write_them() {
    for (written, expected) in
        [("500ms", 500_000), ("1.5s", 1_500_000), ("20500us", 20_500), ("1m", 60_000_000), ("3", 3_000_000)]
    {
        let config = parse(&with_service_keys(&format!("check: {{ type: tcp, interval: {written} }}"))).unwrap();
        assert_eq!(config.services[0].check.as_ref().unwrap().interval.0.as_micros(), expected, "{written}");
    }
    let err = refused(&with_service_keys("check: { type: tcp, interval: 2 seconds }"));
    assert!(err.to_string().contains("a duration such as 2s"), "{err}");
    // Written back in whole microseconds, a finer one would not read back the same.
    let err = refused(&with_service_keys("check: { type: tcp, interval: 1.0000005 }"));
    assert_eq!(err.field, "services[0].check.interval", "{err}");
}

#[test]
fn check_defaults_are_haproxys_and_keepaliveds() {
    let config = parse(&with_service_keys("check: { type: http }")).unwrap();
    let check = config.services[0].check.as_ref().unwrap();
    assert_eq!(
        (check.interval.0, check.timeout.0, check.rise, check.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
    );
    assert_eq!((check.path.as_deref(), check.status, check.port_on(80)), (None, None, 80));
    assert_eq!(config.services[0].on_failure, OnFailure::Remove);
}

#[test]
fn a_real_servers_own_check_replaces_the_services() {
    let source = with_service_keys("check: { type: tcp }").replace(
        "{ address: 198.18.1.12, weight: 2 }",
        "{ address: 198.18.1.12, weight: 2, check: { type: exec, command: \"/bin/true %a %p\" } }",
    );
    let config = parse(&source).unwrap();
    let web = &config.services[0];
    assert_eq!(web.check_of(&web.reals[0]).unwrap().kind, CheckType::Tcp);
    assert_eq!(web.check_of(&web.reals[1]).unwrap().kind, CheckType::Exec);
}

#[test]
fn checks_that_cannot_work_are_refused_with_the_field() {
    for (keys, field, says) in [
        ("check: { type: tcp, path: /x }", "services[0].check.path", "a tcp check has no `path`"),
        ("check: { type: exec }", "services[0].check.command", "needs the command"),
        ("check: { type: http, path: healthz }", "services[0].check.path", "is not a request path"),
        ("check: { type: http, status: [299, 200] }", "services[0].check.status", "a status code from 100"),
        ("check: { type: http, status: 700 }", "services[0].check.status", "a status code from 100"),
        ("check: { type: dns, expect: x }", "services[0].check.expect", "a dns check has no `expect`"),
        ("check: { type: tcp, rise: 0 }", "services[0].check.rise", "out of range"),
        ("check: { type: tcp, timeout: 0s }", "services[0].check.timeout", "out of range"),
        ("check: { type: exec, command: x, interval: 1us }", "services[0].check.interval", "10ms to a day"),
        (
            "check: { type: dns, query: a.very-long-label-of-more-than-sixty-three-bytes-is-not-a-dns-label.example }",
            "services[0].check.query",
            "longer than 63 bytes",
        ),
        ("check: { type: tcp, interval: 2d }", "services[0].check.interval", "a duration"),
        ("check: { type: smtp }", "services[0].check.type", "unknown variant `smtp`"),
        ("quorum: 0", "services[0].quorum", "at least 1"),
        ("sorry_server: 198.18.1.11", "services[0].sorry_server", "one of the service's real servers"),
        ("sorry_server: 2001:db8::99", "services[0].sorry_server", "not of the service's IP version"),
    ] {
        let err = refused(&with_service_keys(keys));
        assert_eq!(err.field, field, "{keys}: {err}");
        assert!(err.message.contains(says), "{keys}: {err}");
    }
}

#[test]
fn a_port_0_service_checks_a_port_it_names() {
    let port_0 =
        with_service_keys("check: { type: tcp }\npersistence: { timeout: 60 }").replace("port: 80 ", "port: 0 ");
    assert_eq!(refused(&port_0).field, "services[0].check.port");
    parse(&port_0.replace("type: tcp", "type: tcp, port: 22")).unwrap();
    parse(&port_0.replace("type: tcp", "type: exec, command: /bin/true")).unwrap();
}
