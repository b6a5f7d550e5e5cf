use std::path::Path;

use lb_api::{Change, ServiceRef};
use serde_json::json;

use super::text;
use crate::config::{Config, edit, edit::tests::fields};

const FILE: &str = "\
# The director's configuration.
interfaces:
  - name: eth0   # the client side

# How long idle connections stay.
timeouts: { tcp: 900, tcp_fin: 120, udp: 300 }

services:
  # ipvsadm -A -t 203.0.113.10:80 -s wrr
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    scheduler: wrr
    reals:
      - { address: 198.18.1.11, weight: 1 }   # the old one

  # The shop, on two ports.
  - name: shop
    fwmark: 11
    match:
      - { vip: 203.0.113.10, protocol: tcp, ports: [443, 8443] }
    scheduler: rr
    reals: [{ address: 198.18.1.12 }]
# The end.
";

fn changed(source: &str, changes: &[Change]) -> (Config, String) {
    let old = Config::parse(source, Path::new("lb.yaml")).unwrap();
    let new = edit::apply(&old, changes).unwrap();
    let text = text(source, &new).unwrap();
    assert_eq!(Config::parse(&text, Path::new("lb.yaml")).unwrap(), new, "the text must mean the new configuration");
    (new, text)
}

fn lines_of(text: &str, from: &str, to: &str) -> String {
    let start = text.find(from).unwrap_or_else(|| panic!("{from:?} not in\n{text}"));
    let end = text[start..].find(to).map_or(text.len(), |end| start + end);
    text[start..end].to_owned()
}

#[test]
fn an_untouched_service_keeps_its_text_and_a_changed_one_its_comments() {
    let weight = Change::EditReal {
        service: ServiceRef::Name("web".into()),
        real: lb_api::RealRef { address: "198.18.1.11".parse().unwrap(), port: None },
        set: fields(json!({ "weight": 5 })),
    };
    let (_, text) = changed(FILE, &[weight]);
    assert!(text.starts_with("# The director's configuration.\ninterfaces:\n  - name: eth0   # the client side\n"));
    assert!(text.contains("# How long idle connections stay.\ntimeouts: { tcp: 900, tcp_fin: 120, udp: 300 }\n"));
    assert!(text.contains("  # ipvsadm -A -t 203.0.113.10:80 -s wrr\n  - name: web\n"), "{text}");
    assert!(!text.contains("# the old one"), "the changed service is written anew:\n{text}");
    assert_eq!(lines_of(&text, "  # The shop", "# The end."), lines_of(FILE, "  # The shop", "# The end."));
    assert!(text.ends_with("# The end.\n"), "{text}");
}

#[test]
fn added_and_deleted_services_come_and_go_with_their_comments() {
    let add = Change::AddService {
        service: fields(json!({ "vip": "2001:db8:100::10", "port": 80, "protocol": "tcp", "scheduler": "mh" })),
    };
    let delete = Change::DeleteService { service: ServiceRef::Name("web".into()) };
    let (new, text) = changed(FILE, &[delete, add]);
    assert_eq!(new.services[1].name, "tcp-2001:db8:100::10-80");
    assert!(!text.contains("ipvsadm -A -t 203.0.113.10:80"), "{text}");
    assert!(text.contains("  # The shop, on two ports.\n  - name: shop\n"), "{text}");
    assert!(text.contains("  - name: tcp-2001:db8:100::10-80\n    vip: 2001:db8:100::10\n"), "{text}");
}

#[test]
fn changed_timeouts_are_written_anew_and_the_rest_kept() {
    let (_, text) = changed(FILE, &[Change::SetTimeouts { set: fields(json!({ "tcp": 60 })) }]);
    assert!(text.contains("timeouts:\n  tcp: 60\n"), "{text}");
    assert!(text.contains("# How long idle connections stay.\ntimeouts:"), "{text}");
    assert_eq!(lines_of(&text, "services:", "# The end."), lines_of(FILE, "services:", "# The end."));
}

#[test]
fn the_first_service_of_a_file_without_any_goes_under_services() {
    for file in
        ["# Interfaces only.\ninterfaces: [{ name: eth0 }]\n", "interfaces: [{ name: eth0 }]\nservices: []\n# after\n"]
    {
        let add = Change::AddService {
            service: fields(json!({ "fwmark": 3, "match": [{ "vip": "203.0.113.10", "protocol": "tcp" }] })),
        };
        let (_, text) = changed(file, &[add]);
        assert!(text.starts_with(file.lines().next().unwrap()), "{text}");
        assert!(text.contains("  - name: fwm-3\n    fwmark: 3\n"), "{text}");
    }
}

#[test]
fn a_file_that_cannot_be_spliced_is_written_whole() {
    let flow =
        "{ interfaces: [{ name: eth0 }], services: [{ name: a, vip: 203.0.113.10, port: 80, protocol: tcp }] }\n";
    let (_, text) = changed(flow, &[Change::Clear]);
    assert!(text.starts_with("# Written by lb-agent"), "{text}");
}
