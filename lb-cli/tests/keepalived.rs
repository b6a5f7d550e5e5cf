//! `lbctl import keepalived`: realistic keepalived.conf files (under `keepalived/`), the
//! YAML written (read back, and loaded by the agent's own configuration model) and what
//! is said on standard error, line for line.

use std::{path::Path, process::Command};

use serde_yaml::Value;

struct Imported {
    yaml: Value,
    stderr: Vec<String>,
}

fn lbctl(file: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["import", "keepalived", &format!("tests/keepalived/{file}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("lbctl runs")
}

/// Imports a fixture, which must succeed and give YAML the agent loads.
fn import(file: &str) -> Imported {
    let output = lbctl(file);
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 YAML");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 warnings");
    assert!(output.status.success(), "lbctl import keepalived {file} failed: {stderr}");
    assert!(stdout.starts_with(&format!("# Imported by `lbctl import keepalived` from tests/keepalived/{file}.\n")));
    let yaml: Value = serde_yaml::from_str(&stdout).unwrap_or_else(|err| panic!("{file}: not YAML: {err}\n{stdout}"));
    agent_loads(&yaml, file);
    Imported { yaml, stderr: stderr.lines().map(str::to_owned).collect() }
}

/// lb-agent's `Config` accepts the YAML, health checks and all, once a firewall-mark
/// service's empty `match:` is filled as an operator would.
fn agent_loads(yaml: &Value, file: &str) {
    let mut yaml = yaml.clone();
    for service in yaml["services"].as_sequence_mut().expect("services") {
        let service = service.as_mapping_mut().expect("a service is a mapping");
        if let Some(mark) = service.get("fwmark").and_then(Value::as_u64) {
            let matched = format!("[{{ vip: 198.51.100.{mark}, protocol: tcp, ports: [80] }}]");
            service.insert("match".into(), serde_yaml::from_str(&matched).unwrap());
        }
    }
    let text = serde_yaml::to_string(&yaml).unwrap();
    if let Err(err) = lb_agent::config::Config::parse(&text, Path::new(file)) {
        panic!("the agent refuses the import of {file}: {err}\n{text}");
    }
}

fn service<'a>(imported: &'a Imported, name: &str) -> &'a Value {
    let services = imported.yaml["services"].as_sequence().expect("services");
    services.iter().find(|service| service["name"] == name).unwrap_or_else(|| panic!("no service {name}"))
}

fn names(imported: &Imported) -> Vec<&str> {
    let services = imported.yaml["services"].as_sequence().expect("services");
    services.iter().map(|service| service["name"].as_str().expect("a name")).collect()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

#[track_caller]
fn assert_stderr(imported: &Imported, file: &str, expected: &[&str]) {
    let expected: Vec<String> = expected.iter().map(|line| format!("tests/keepalived/{file}{line}")).collect();
    assert_eq!(imported.stderr, expected);
}

#[test]
fn dr_web_farm_with_http_checks_and_digests() {
    let imported = import("dr-web.conf");
    assert_eq!(imported.yaml["interfaces"], yaml("[{ name: eth1 }]"), "the VRRP instance's interface");
    assert_eq!(imported.yaml["timeouts"], yaml("{ tcp: 7200, tcp_fin: 60, udp: 120 }"));
    assert_eq!(names(&imported), ["203.0.113.10-80-tcp"]);
    let web = service(&imported, "203.0.113.10-80-tcp");
    assert_eq!(web["vip"], "203.0.113.10");
    assert_eq!(web["port"], 80);
    assert_eq!(web["protocol"], "tcp");
    assert_eq!(web["scheduler"], "wrr");
    assert_eq!(web["forwarding"], "dr");
    assert_eq!(web["on_failure"], "remove", "keepalived removes a failed real server unless inhibit_on_failure");
    assert_eq!(web["quorum"], 2);
    assert_eq!(web["check"], Value::Null, "the third real server's check differs: each keeps its own");
    // retry 3 (nb_get_retry 3 alike): down after the fourth failure in a row.
    let check = yaml("{ type: http, path: /healthz, status: 200, interval: 6s, timeout: 3s, rise: 1, fall: 4 }");
    let reals = &web["reals"];
    assert_eq!(reals[0], {
        let mut real = yaml("{ address: 198.18.1.11, weight: 3, upper_threshold: 1000, lower_threshold: 800 }");
        real["check"] = check.clone();
        real
    });
    assert_eq!(reals[1]["check"], check);
    // DR cannot map port 80 to 8080: the port goes, the check keeps connect_port 80,
    // which is the service's; of status_code 200-299 301, one range.
    assert_eq!(reals[2]["port"], Value::Null);
    assert_eq!(reals[2]["weight"], 2);
    assert_eq!(
        reals[2]["check"],
        yaml("{ type: http, path: /healthz, status: [200, 299], interval: 6s, timeout: 3s, rise: 1, fall: 4 }")
    );
    assert_stderr(
        &imported,
        "dr-web.conf",
        &[
            ":4: notification_email: not carried over: a keepalived global setting",
            ":7: notification_email_from: not carried over: a keepalived global setting",
            ":8: smtp_server: not carried over: a keepalived global setting",
            ":9: router_id: not carried over: a keepalived global setting",
            ":13: vrrp_instance: not carried over: VRRP (the VIPs' failover) stays keepalived's; its interface eth1 is listed under interfaces:",
            ":30: alpha: not carried over: no alpha mode: the agent decides a real server's first state itself",
            ":39: digest: not carried over: our http check compares the status (and expect:), not an MD5 digest of the body",
            ":44: delay_before_retry: not carried over: our checks keep their interval after a failure: a real server goes down after 4 × 6s = 24s",
            ":52: digest: not carried over: our http check compares the status (and expect:), not an MD5 digest of the body",
            ":57: delay_before_retry: not carried over: our checks keep their interval after a failure: a real server goes down after 4 × 6s = 24s",
            ":60: real_server: not carried over: port 8080: only nat maps ports; the real server serves port 80",
            ":62: notify_down: not carried over: no notify scripts: the agent logs every transition and exports lb_real_up",
            ":66: status_code: not carried over: our status is one code or one range: 200-299 is kept, 301 not",
            ":68: url: not carried over: our check requests one path: /healthz",
            ":74: delay_before_retry: not carried over: our checks keep their interval after a failure: a real server goes down after 4 × 6s = 24s",
        ],
    );
}

#[test]
fn nat_with_tcp_checks_and_a_sorry_server() {
    let imported = import("nat-sorry.conf");
    assert_eq!(imported.yaml["interfaces"], yaml("[{ name: eth0 }]"), "a placeholder, said on standard error");
    assert_eq!(
        names(&imported),
        ["192.0.2.20-80-tcp", "192.0.2.21-0-udp"],
        "a virtual server without real servers is left out"
    );
    let app = service(&imported, "192.0.2.20-80-tcp");
    assert_eq!(app["forwarding"], "nat");
    assert_eq!(app["scheduler"], "wlc");
    assert_eq!(app["persistence"], yaml("{ timeout: 600, netmask: 255.255.255.0 }"));
    assert_eq!(app["on_failure"], "quiesce", "inhibit_on_failure of the virtual server");
    assert_eq!(app["sorry_server"], "192.0.2.99");
    assert_eq!(app["quorum"], 5);
    // Every real server's TCP_CHECK comes to the same: the service's, with the virtual
    // server's delay_loop, connect_timeout and retry.
    assert_eq!(app["check"], yaml("{ type: tcp, interval: 3s, timeout: 2s, rise: 1, fall: 3 }"));
    assert_eq!(
        app["reals"],
        yaml(
            "[{ address: 10.1.0.11, port: 8080, weight: 2 }, { address: 10.1.0.12, port: 8080, weight: 2 },
              { address: 10.1.0.13, port: 8080, weight: 1 }]"
        )
    );
    // keepalived's defaults: no protocol is UDP, port 0 is persistent for 6 minutes, NAT.
    let any = service(&imported, "192.0.2.21-0-udp");
    assert_eq!(any["protocol"], "udp");
    assert_eq!(any["port"], 0);
    assert_eq!(any["forwarding"], "nat");
    assert_eq!(any["persistence"], yaml("{ timeout: 360 }"));
    assert_eq!(any["check"], yaml("{ type: tcp, port: 53, interval: 60s, timeout: 5s, rise: 1, fall: 2 }"));
    assert_stderr(
        &imported,
        "nat-sorry.conf",
        &[
            ": interfaces: no vrrp_instance names one: eth0 is written, put the director's there",
            ":4: @backup: not carried over: conditional configuration: lbctl cannot know which host's config id applies; the line is left out",
            ":13: sorry_server: not carried over: port 8081: our sorry server serves the service's port",
            ":14: sorry_server_inhibit: not carried over: the sorry server is not checked, so never quiesced",
            ":17: hysteresis: not carried over: our quorum has no hysteresis",
            ":18: quorum_up: not carried over: no notify scripts: the agent logs every transition and exports lb_real_up",
            ":35: inhibit_on_failure: not carried over: on_failure is the service's here: quiesce",
            ":37: bindto: not carried over: checks leave from the director's own addresses",
            ":43: virtual_server: no protocol: keepalived's default is UDP, and so is it here",
            ":43: virtual_server: port 0 is for persistent services: keepalived makes it persistent for 360 s, and so is it here",
            ":52: virtual_server: not carried over: it has no real_server (keepalived leaves it out too)",
        ],
    );
}

#[test]
fn firewall_mark_with_persistence_and_a_misc_check() {
    let imported = import("fwmark.conf");
    let marked = service(&imported, "fwmark-10");
    assert_eq!(marked["fwmark"], 10);
    assert_eq!(marked["match"], yaml("[]"), "keepalived.conf does not say what iptables marks");
    assert_eq!(marked["vip"], Value::Null);
    assert_eq!(marked["scheduler"], "sh");
    assert_eq!(marked["scheduler_flags"], yaml("[sh-port, sh-fallback]"), "flag-1 is sh's fallback");
    assert_eq!(marked["persistence"], yaml("{ timeout: 360, netmask: 255.255.255.0 }"));
    // The scripts' literal address and port become %a and %p: one check for the service.
    // MISC_CHECK's retry is 0 (down at the first failure); misc_timeout is its timeout.
    assert_eq!(
        marked["check"],
        yaml(
            "{ type: exec, port: 80, command: '/usr/local/bin/check_web.sh %a %p', interval: 10s, timeout: 5s,
               rise: 1, fall: 1 }"
        )
    );
    assert_eq!(marked["reals"], yaml("[{ address: 10.2.0.11, weight: 1 }, { address: 10.2.0.12, weight: 1 }]"));
    assert_stderr(
        &imported,
        "fwmark.conf",
        &[
            ": interfaces: no vrrp_instance names one: eth0 is written, put the director's there",
            ":4: virtual_server: fwmark 10: list under match: the VIPs, protocols and ports (inet) iptables marks with 10",
            ":9: mh-port: not carried over: not a flag of sh (keepalived ignores it too)",
            ":11: protocol: not carried over: a firewall-mark service's protocols are those of its match: entries",
            ":16: real_server: not carried over: port 80: a firewall-mark or port-0 service keeps the port each client asked for",
            ":20: misc_dynamic: not carried over: exit codes set no weights here: 0 is healthy, anything else is not",
            ":23: real_server: not carried over: port 80: a firewall-mark or port-0 service keeps the port each client asked for",
        ],
    );
}

#[test]
fn a_group_is_one_service_per_address_and_mark_as_keepalived_makes_them() {
    let imported = import("group.conf");
    assert_eq!(
        names(&imported),
        [
            "WEB-192.0.2.10-80-tcp",
            "WEB-192.0.2.11-80-tcp",
            "WEB-192.0.2.12-80-tcp",
            "WEB-192.0.2.20-443-tcp",
            "WEB-fwmark-7"
        ]
    );
    for (name, vip, port) in
        [("WEB-192.0.2.11-80-tcp", "192.0.2.11", 80), ("WEB-192.0.2.20-443-tcp", "192.0.2.20", 443)]
    {
        let web = service(&imported, name);
        assert_eq!((&web["vip"], &web["port"], &web["protocol"]), (&vip.into(), &port.into(), &"tcp".into()));
        assert_eq!(web["forwarding"], "tun");
        assert_eq!(web["reals"], yaml("[{ address: 10.3.0.11, weight: 1 }, { address: 10.3.0.12, weight: 1 }]"));
    }
    // The check's connect_port 80 is the port of the port-80 services, not of the others.
    let check = "{ type: tcp, interval: 5s, timeout: 2s, rise: 1, fall: 2 }";
    assert_eq!(service(&imported, "WEB-192.0.2.10-80-tcp")["check"], yaml(check));
    let on_80 = "{ type: tcp, port: 80, interval: 5s, timeout: 2s, rise: 1, fall: 2 }";
    assert_eq!(service(&imported, "WEB-192.0.2.20-443-tcp")["check"], yaml(on_80));
    let marked = service(&imported, "WEB-fwmark-7");
    assert_eq!((&marked["fwmark"], &marked["match"], &marked["check"]), (&7.into(), &yaml("[]"), &yaml(on_80)));
    assert_stderr(
        &imported,
        "group.conf",
        &[
            ": interfaces: no vrrp_instance names one: eth0 is written, put the director's there",
            ":5: 192.0.2.128/30: not carried over: address prefixes are not expanded here: write the range as FIRST-LAST",
            ":9: virtual_server: fwmark 7: list under match: the VIPs, protocols and ports iptables marks with 7",
            ":29: virtual_server: not carried over: no virtual_server_group NOWHERE with entries (keepalived leaves it out too)",
        ],
    );
}

#[test]
fn udp_dns_with_dns_and_udp_checks() {
    let imported = import("dns.conf");
    assert_eq!(names(&imported), ["dns", "dns-2"], "snmp_name names them, the second numbered");
    let udp = service(&imported, "dns");
    assert_eq!((&udp["protocol"], &udp["scheduler"], &udp["check"]), (&"udp".into(), &"rr".into(), &Value::Null));
    // DNS_CHECK's retry is 3; UDP_CHECK's require_reply "ok" is text to expect.
    assert_eq!(udp["reals"][0]["check"], yaml("{ type: dns, interval: 5s, timeout: 5s, rise: 1, fall: 4 }"));
    assert_eq!(
        udp["reals"][1]["check"],
        yaml("{ type: udp, expect: ok, interval: 5s, timeout: 4s, rise: 1, fall: 2 }")
    );
    let tcp = service(&imported, "dns-2");
    assert_eq!((&tcp["protocol"], &tcp["port"], &tcp["scheduler"]), (&"tcp".into(), &53.into(), &"wlc".into()));
    assert_eq!(tcp["check"], yaml("{ type: tcp, interval: 60s, timeout: 5s, rise: 1, fall: 2 }"));
    assert_stderr(
        &imported,
        "dns.conf",
        &[
            ": interfaces: no vrrp_instance names one: eth0 is written, put the director's there",
            ":11: type: not carried over: our dns check has no query type of choice",
            ":12: name: not carried over: our dns check has no query name of choice",
            ":17: payload: not carried over: our udp check chooses what it sends",
            ":21: PING_CHECK: not carried over: no such check here (tcp, http, https, udp, dns, exec)",
            ":27: lb_algo: not carried over: no scheduler twos here: wlc is written",
        ],
    );
}

#[test]
fn includes_follow_globs_from_the_including_files_directory() {
    let imported = import("include/keepalived.conf");
    // conf.d/*.conf in sorted order (README.txt does not match); 10-web.conf's
    // `include web-reals.inc` is found beside it, in conf.d.
    assert_eq!(names(&imported), ["192.0.2.80-80-tcp", "192.0.2.81-443-tcp"]);
    let web = service(&imported, "192.0.2.80-80-tcp");
    assert_eq!(web["reals"], yaml("[{ address: 10.5.0.11, weight: 5 }, { address: 10.5.0.12, weight: 5 }]"));
    // Blocks opened and closed on one line; SSL_GET's status is keepalived's 200-299;
    // a url without a path is left out.
    let api = service(&imported, "192.0.2.81-443-tcp");
    assert_eq!(
        api["check"],
        yaml("{ type: https, path: /ping, status: [200, 299], interval: 60s, timeout: 5s, rise: 1, fall: 2 }")
    );
    assert_eq!(
        imported.stderr,
        [
            "tests/keepalived/include/keepalived.conf: interfaces: no vrrp_instance names one: eth0 is written, put the director's there",
            "tests/keepalived/include/keepalived.conf:2: router_id: not carried over: a keepalived global setting",
            "tests/keepalived/include/keepalived.conf:5: include: no file matches missing/*.conf",
            "tests/keepalived/include/conf.d/web-reals.inc:6: ops: not carried over: no one-packet scheduling",
            "tests/keepalived/include/conf.d/20-api.conf:5: url: not carried over: it has no path (keepalived ignores it too)",
        ]
    );
}

#[test]
fn ipv6_with_a_prefix_granularity_and_tunnelled_ipv4() {
    let imported = import("ipv6.conf");
    assert_eq!(
        names(&imported),
        ["2001:db8:100::10-443-tcp", "DNS6-2001:db8:53::1-53-udp", "DNS6-2001:db8:53::2-53-udp"]
    );
    let web = service(&imported, "2001:db8:100::10-443-tcp");
    assert_eq!(web["vip"], "2001:db8:100::10");
    assert_eq!(web["persistence"], yaml("{ timeout: 360, netmask: 64 }"), "an IPv6 granularity is a prefix length");
    assert_eq!(web["scheduler_flags"], yaml("[mh-port]"));
    let reals = web["reals"].as_sequence().unwrap();
    // 198.18.9.9 is left out (IPv4, not tunnelled); 198.18.9.10 is tunnelled.
    assert_eq!(reals.len(), 2);
    assert_eq!(reals[0]["address"], "2001:db8:1::11");
    assert_eq!(reals[0]["check"]["expect"], "healthy", "a regex of plain text is expect:");
    assert_eq!(reals[1]["address"], "198.18.9.10");
    assert_eq!(reals[1]["forwarding"], "tun");
    assert_eq!(reals[1]["check"]["expect"], Value::Null);
    assert_eq!(service(&imported, "DNS6-2001:db8:53::2-53-udp")["vip"], "2001:db8:53::2", "the range's last 16 bits");
    assert_stderr(
        &imported,
        "ipv6.conf",
        &[
            ": interfaces: no vrrp_instance names one: eth0 is written, put the director's there",
            ":15: enable_sni: not carried over: our https check has no TLS settings",
            ":18: real_server: not carried over: 198.18.9.9 is not of the VIP's IP version and not tunnelled (keepalived leaves it out too)",
            ":25: regex: not carried over: our check looks for a plain string (expect:), not a regular expression",
        ],
    );
}

#[test]
fn a_block_left_open_is_an_error_naming_its_file_and_line() {
    let output = lbctl("unclosed.conf");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "lbctl: tests/keepalived/unclosed.conf:1: the block opened here is not closed\n"
    );
}
