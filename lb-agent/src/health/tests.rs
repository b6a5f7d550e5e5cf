use std::path::Path;

use super::*;

const CONFIG: &str = "\
interfaces: [{ name: eth0 }]
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    check: { type: tcp }
    reals:
      - { address: 198.18.1.11, weight: 1 }
      - { address: 198.18.1.12, weight: 2 }
      - { address: 198.18.1.13, weight: 3 }
";

fn config(keys: &str) -> Config {
    let source = CONFIG.replace("    reals:\n", &format!("    {keys}\n    reals:\n"));
    Config::parse(&source, Path::new("lb.yaml")).unwrap()
}

fn down(addresses: &[&str]) -> Down {
    Down(addresses.iter().map(|address| ("web".to_owned(), address.parse().unwrap())).collect())
}

/// The served real servers' (last octet, weight).
fn served(config: &Config, failed: &[&str]) -> Vec<(u8, u32)> {
    let serving = serving(config, &down(failed));
    let octet = |address: IpAddr| match address {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(_) => unreachable!(),
    };
    serving.services[0].reals.iter().map(|real| (octet(real.address), real.weight)).collect()
}

#[test]
fn a_failed_real_server_is_removed_by_default() {
    let config = config("quorum: 1");
    assert_eq!(served(&config, &[]), [(11, 1), (12, 2), (13, 3)]);
    assert_eq!(served(&config, &["198.18.1.12"]), [(11, 1), (13, 3)]);
}

#[test]
fn a_failed_real_server_is_quiesced_when_asked() {
    let config = config("on_failure: quiesce");
    assert_eq!(served(&config, &["198.18.1.12"]), [(11, 1), (12, 0), (13, 3)]);
}

#[test]
fn the_sorry_server_serves_alone_below_the_quorum() {
    let config = config("sorry_server: 198.18.1.99");
    assert_eq!(served(&config, &["198.18.1.11", "198.18.1.12"]), [(13, 3)]);
    assert_eq!(served(&config, &["198.18.1.11", "198.18.1.12", "198.18.1.13"]), [(99, 1)]);
    // Quiesced, the real servers stay beside it at weight 0, their templates holding.
    let config = self::config("sorry_server: 198.18.1.99\n    on_failure: quiesce");
    assert_eq!(served(&config, &["198.18.1.11", "198.18.1.12", "198.18.1.13"]), [(11, 0), (12, 0), (13, 0), (99, 1)]);
    // keepalived's quorum is a sum of healthy weights: 1 + 2 < 4.
    let config = self::config("sorry_server: 198.18.1.99\n    quorum: 4");
    assert_eq!(served(&config, &["198.18.1.11", "198.18.1.12"]), [(99, 1)]);
    assert_eq!(served(&config, &["198.18.1.11"]), [(12, 2), (13, 3)]);
}

#[test]
fn without_a_sorry_server_the_quorum_changes_nothing() {
    let config = config("quorum: 6");
    assert_eq!(served(&config, &["198.18.1.11"]), [(12, 2), (13, 3)]);
}

#[test]
fn a_quorum_above_the_total_weight_is_lowered_to_it() {
    let config = config("sorry_server: 198.18.1.99\n    quorum: 100");
    assert_eq!(served(&config, &[]), [(11, 1), (12, 2), (13, 3)]);
    assert_eq!(served(&config, &["198.18.1.11"]), [(99, 1)]);
}

#[test]
fn fall_failures_in_a_row_take_a_real_server_down_and_rise_successes_bring_it_back() {
    let config = config("quorum: 1");
    let health = checker::Health::default();
    let owner: Owner = ("web".to_owned(), "198.18.1.12".parse().unwrap());
    let target = checker::targets(&config)[&owner].clone();
    let (rise, fall) = (target.check.rise, target.check.fall);
    health.start(&owner);
    let check = |healthy: bool| {
        let outcome = if healthy { Ok(()) } else { Err(anyhow::anyhow!("refused")) };
        health.record(&owner, &target, std::time::Duration::from_millis(1), outcome);
        health.down(&config).contains("web", owner.1)
    };
    // A success between failures starts the count again.
    let failed: Vec<bool> = (0..fall - 1).map(|_| check(false)).collect();
    assert!(!failed.contains(&true) && !check(true), "{fall} failures are needed in a row");
    let down: Vec<bool> = (0..fall).map(|_| check(false)).collect();
    assert_eq!(down.last(), Some(&true), "down after {fall} in a row: {down:?}");
    assert!(check(false) && (0..rise - 1).all(|_| check(true)), "still down before {rise} successes");
    assert!(!check(true), "up after {rise} successes");
    let mut failures = 0;
    health.for_each(|_, state| failures = state.failures);
    assert_eq!(failures, u64::from(2 * fall));
}

#[test]
fn every_checked_real_server_is_a_target_at_its_check_port() {
    let config = config("quorum: 1");
    assert_eq!(checker::targets(&config).len(), 3);
    let unchecked = Config::parse(&CONFIG.replace("    check: { type: tcp }\n", ""), Path::new("lb.yaml")).unwrap();
    assert!(checker::targets(&unchecked).is_empty());
    let target = &checker::targets(&config)[&("web".to_owned(), "198.18.1.13".parse().unwrap())];
    assert_eq!(target.at, "198.18.1.13:80".parse().unwrap());
}
