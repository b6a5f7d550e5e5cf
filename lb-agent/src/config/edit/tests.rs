use std::{net::IpAddr, path::Path};

use lb_api::{Change, Map, RealRef, ServiceRef, Value};
use serde_json::json;

use super::apply;
use crate::config::{Config, Scheduler, sync::Role};

const RUNNING: &str = "\
interfaces: [{ name: eth0 }]
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    scheduler: wrr
    reals:
      - { address: 198.18.1.11, weight: 1 }
      - { address: 198.18.1.12, weight: 2 }
";

fn running() -> Config {
    Config::parse(RUNNING, Path::new("lb.yaml")).unwrap()
}

/// A JSON object's fields, as a change carries them.
pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(fields) => fields,
        other => panic!("not an object: {other}"),
    }
}

fn web() -> ServiceRef {
    ServiceRef::Address { protocol: "tcp".into(), vip: "203.0.113.10".parse().unwrap(), port: 80 }
}

fn real(address: &str) -> RealRef {
    RealRef { address: address.parse().unwrap(), port: None }
}

fn refusal(changes: &[Change]) -> String {
    format!("{:#}", apply(&running(), changes).expect_err("the change should be refused"))
}

#[test]
fn an_added_service_without_a_name_is_named_after_its_address() {
    let add = |vip: &str| Change::AddService {
        service: fields(json!({ "vip": vip, "port": 443, "protocol": "tcp", "scheduler": "rr" })),
    };
    let config = apply(&running(), &[add("203.0.113.10"), add("2001:db8:100::10")]).unwrap();
    let names: Vec<&str> = config.services.iter().map(|service| service.name.as_str()).collect();
    assert_eq!(names, ["web", "tcp-203.0.113.10-443", "tcp-2001:db8:100::10-443"]);
    assert_eq!(config.services[1].scheduler, Scheduler::Rr);
    let fwmark = Change::AddService {
        service: fields(json!({ "fwmark": 11, "match": [{ "vip": "203.0.113.11", "protocol": "udp" }] })),
    };
    assert_eq!(apply(&config, &[fwmark]).unwrap().services[3].name, "fwm-11");
}

#[test]
fn a_service_or_real_server_that_exists_is_not_added_again() {
    let again = Change::AddService { service: fields(json!({ "vip": "203.0.113.10", "port": 80, "protocol": "tcp" })) };
    assert!(refusal(&[again]).contains("already exists, as `web`"), "{}", refusal(&[]));
    let real = Change::AddReal { service: web(), real: fields(json!({ "address": "198.18.1.12" })) };
    assert!(refusal(&[real]).contains("198.18.1.12 already exists"));
}

#[test]
fn edits_replace_the_keys_given_and_null_takes_one_out() {
    let changes = [
        Change::EditService {
            service: ServiceRef::Name("web".into()),
            set: fields(json!({ "scheduler": "sh", "scheduler_flags": ["sh-port"], "persistence": { "timeout": 60 } })),
        },
        Change::EditReal { service: web(), real: real("198.18.1.12"), set: fields(json!({ "weight": 0 })) },
        Change::DeleteReal { service: web(), real: real("198.18.1.11") },
        Change::SetTimeouts { set: fields(json!({ "tcp": 60 })) },
    ];
    let config = apply(&running(), &changes).unwrap();
    let web = &config.services[0];
    assert_eq!((web.scheduler, web.persistence.map(|p| p.timeout)), (Scheduler::Sh, Some(60)));
    assert_eq!(web.reals.len(), 1);
    assert_eq!((web.reals[0].address, web.reals[0].weight), ("198.18.1.12".parse::<IpAddr>().unwrap(), 0));
    assert_eq!((config.timeouts.tcp, config.timeouts.udp), (60, 300));
    let back =
        Change::EditService { service: ServiceRef::Name("web".into()), set: fields(json!({ "persistence": null })) };
    assert_eq!(apply(&config, &[back]).unwrap().services[0].persistence, None);
}

#[test]
fn a_change_is_checked_by_the_files_rules_and_named_by_service() {
    let typo = Change::EditService { service: web(), set: fields(json!({ "schedler": "rr" })) };
    assert!(refusal(&[typo]).contains("unknown field `schedler`"));
    let bad = Change::EditService { service: web(), set: fields(json!({ "scheduler": "fastest" })) };
    assert!(refusal(&[bad]).contains("unknown variant `fastest`"));
    let heavy = Change::EditReal { service: web(), real: real("198.18.1.11"), set: fields(json!({ "weight": 70000 })) };
    let refused = refusal(&[heavy]);
    assert!(refused.starts_with("service web: reals[0].weight"), "{refused}");
    let missing = Change::DeleteReal { service: web(), real: real("198.18.1.99") };
    assert!(refusal(&[missing]).contains("no real server 198.18.1.99"));
    assert!(refusal(&[Change::DeleteService { service: ServiceRef::Fwmark(3) }]).contains("no service fwmark 3"));
}

#[test]
fn changes_are_taken_together_or_not_at_all() {
    let good = Change::AddReal { service: web(), real: fields(json!({ "address": "198.18.1.13" })) };
    let bad = Change::AddReal { service: web(), real: fields(json!({ "address": "198.18.1.14", "weight": -1 })) };
    assert!(apply(&running(), std::slice::from_ref(&good)).is_ok());
    assert!(apply(&running(), &[good, bad]).is_err());
    let cleared = apply(&running(), &[Change::Clear]).unwrap();
    assert!(cleared.services.is_empty());
}

#[test]
fn where_the_socket_and_metrics_are_is_not_lbctls_to_change() {
    let moved = RUNNING.replace("interfaces:", "api_group: users\ninterfaces:");
    let refused = refusal(&[Change::Replace { yaml: moved }]);
    assert_eq!(refused, "api_group is set in the configuration file by root, not through lbctl");
}

#[test]
fn start_and_stop_daemon_change_the_sync_role_as_ipvsadm_does() {
    let dir = std::env::temp_dir().join(format!("lb-edit-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("sync.key");
    std::fs::write(&key, "00112233445566778899aabbccddeeff").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let start = |state: &str, set: Value| Change::StartDaemon { state: state.into(), set: fields(set) };
    let stop = |state: &str| Change::StopDaemon { state: state.into() };
    let first = start("master", json!({ "interface": "eth1", "syncid": 7, "key_file": key }));
    let config = apply(&running(), &[first]).unwrap();
    let sync = config.sync.clone().unwrap();
    assert_eq!((sync.role, sync.interface.as_str(), sync.syncid, sync.port), (Role::Master, "eth1", 7, 8848));
    let both = apply(&config, &[start("backup", json!({}))]).unwrap();
    assert_eq!(both.sync.as_ref().unwrap().role, Role::Both);
    let backup = apply(&both, &[stop("master")]).unwrap();
    assert_eq!(backup.sync.as_ref().unwrap().role, Role::Backup);
    assert_eq!(apply(&backup, &[stop("backup")]).unwrap().sync.unwrap().role, Role::None);
    let without_interface = refusal(&[start("master", json!({}))]);
    assert!(without_interface.contains("--mcast-interface"), "{without_interface}");
    assert!(refusal(&[stop("master")]).contains("no sync daemon runs"));
    let without_key = refusal(&[start("master", json!({ "interface": "eth1", "key_file": dir.join("none") }))]);
    assert!(without_key.contains("sync.key_file"), "{without_key}");
    std::fs::remove_dir_all(&dir).unwrap();
}
