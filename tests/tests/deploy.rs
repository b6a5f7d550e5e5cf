//! The Prometheus files of `deploy/`: promtool accepts the scrape configuration and
//! the alert rules, each alert fires on the series it is about (`lb-alerts.test.yml`),
//! and the scrape configuration scrapes the agent's default address. No root needed;
//! promtool comes from Debian's `prometheus` package, which `cargo xtask setup`
//! installs.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, ensure};
use lb_tests::deploy::{self, ALERT_RULES, ALERT_TESTS, SCRAPE_CONFIG};

/// `promtool ARGS...` in the directory of the Prometheus files; its output, or an
/// error with it when promtool says no.
fn promtool(args: &[&str]) -> Result<String> {
    let dir = deploy::path(SCRAPE_CONFIG).parent().context("deploy/prometheus")?.to_owned();
    let output = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .context("running promtool (Debian's prometheus package: `cargo xtask setup` installs it)")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "promtool {} in {} failed:\n{text}", args.join(" "), dir.display());
    Ok(text)
}

fn file_name(file: &str) -> &str {
    Path::new(file).file_name().and_then(|name| name.to_str()).expect("a file name")
}

#[test]
fn promtool_accepts_the_alert_rules() -> Result<()> {
    let out = promtool(&["check", "rules", file_name(ALERT_RULES)])?;
    let rules = deploy::alert_queries()?.len();
    assert!(out.contains(&format!("SUCCESS: {rules} rules found")), "{out}");
    Ok(())
}

#[test]
fn promtool_accepts_the_scrape_configuration_and_its_rule_files() -> Result<()> {
    let out = promtool(&["check", "config", file_name(SCRAPE_CONFIG)])?;
    assert!(out.contains("SUCCESS: 1 rule files found"), "it loads lb-alerts.yml beside it: {out}");
    Ok(())
}

#[test]
fn each_alert_fires_on_the_series_it_is_about() -> Result<()> {
    let out = promtool(&["test", "rules", file_name(ALERT_TESTS)])?;
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a case of its own.
    let tests = std::fs::read_to_string(deploy::path(ALERT_TESTS))?;
    for alert in deploy::alert_queries()? {
        let name = alert.place.rsplit(": ").next().unwrap_or_default();
        assert!(tests.contains(&format!("alertname: {name}\n")), "{ALERT_TESTS} does not test {name}");
    }
    Ok(())
}

#[test]
fn the_scrape_configuration_scrapes_the_agents_default_metrics_listen() -> Result<()> {
    let config = lb_agent::config::Config::parse("interfaces:\n  - name: eth0\n", Path::new("lb.yaml"))?;
    let prometheus = deploy::yaml(SCRAPE_CONFIG)?;
    let job = prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|job| job["job_name"] == "lb-agent")
        .context("no lb-agent job")?;
    let targets: Vec<&str> = job["static_configs"][0]["targets"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|target| target.as_str())
        .collect();
    assert_eq!(targets, [config.metrics_listen.to_string()]);
    assert_eq!(prometheus["rule_files"][0], file_name(ALERT_RULES));
    Ok(())
}
