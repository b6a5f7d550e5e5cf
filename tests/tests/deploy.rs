//! The Prometheus and Grafana files of `deploy/`: promtool accepts the scrape
//! configuration and the alert rules, each alert fires on the series it is about
//! (`lb-alerts.test.yml`), the scrape configuration scrapes the agent's default
//! address, and the dashboard is importable, its queries PromQL. (That every metric
//! they name is one the agent exports is checked against a real scrape, in the lab:
//! `tests/lab.rs`.) No root needed; promtool comes from Debian's `prometheus` package,
//! which `cargo xtask setup` installs. And the systemd unit: `systemd-analyze verify`
//! accepts it, and it keeps what a restart needs (the state saved for the pinned maps).

use std::{collections::BTreeSet, path::Path, process::Command};

use anyhow::{Context, Result, ensure};
use lb_tests::deploy::{self, ALERT_RULES, ALERT_TESTS, DASHBOARD, SCRAPE_CONFIG};

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

#[test]
fn the_dashboard_takes_its_datasource_and_selections_from_variables() -> Result<()> {
    let dashboard = deploy::dashboard()?;
    let variable = |name: &str| deploy::variables(&dashboard).find(|v| v["name"] == name).cloned();
    let datasource = variable("datasource").context("no datasource variable")?;
    assert_eq!((&datasource["type"], &datasource["query"]), (&"datasource".into(), &"prometheus".into()));
    for name in ["instance", "service", "real"] {
        let variable = variable(name).with_context(|| format!("no {name} variable"))?;
        assert_eq!(variable["type"], "query", "{name}");
        assert_eq!(variable["datasource"]["uid"], "${datasource}", "{name}");
        let shown = variable["definition"].as_str();
        assert_eq!(shown, deploy::variable_query(&variable), "{name}: what Grafana shows is what runs");
    }
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string(), "importable: a uid and a title");
    let mut ids = BTreeSet::new();
    for panel in deploy::panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].as_u64().context("a panel without an id")?), "{title}: its id is taken");
        assert!(panel["gridPos"]["w"].is_u64(), "{title}: no place on the grid");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().context("a panel without queries")?;
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    Ok(())
}

/// The dashboard's queries, its variables put in as Grafana does, given to promtool as
/// recording rules: it parses each one.
#[test]
fn the_dashboards_queries_are_promql() -> Result<()> {
    let dashboard = deploy::dashboard()?;
    let selections: Vec<String> = deploy::variables(&dashboard)
        .filter(|v| v["type"] == "query")
        .filter_map(|v| v["name"].as_str().map(|name| format!("${name}")))
        .collect();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries = [deploy::panel_queries(&dashboard)?, deploy::variable_queries(&dashboard)?].concat();
    for (i, query) in queries.iter().enumerate() {
        let mut expr = query.expr.replace("$__rate_interval", "5m");
        for selection in &selections {
            expr = expr.replace(selection, ".*");
        }
        assert!(!expr.contains('$'), "{}: a variable the dashboard does not define: {}", query.place, query.expr);
        rules += &format!("      - record: dashboard:query_{i}\n        expr: {}\n", serde_json::to_string(&expr)?);
    }
    let dir = tempdir()?;
    std::fs::write(dir.join("dashboard-queries.yml"), &rules)?;
    let out = Command::new("promtool").args(["check", "rules"]).arg(dir.join("dashboard-queries.yml")).output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool refuses a query of {DASHBOARD}:\n{text}\n{rules}");
    assert!(text.contains(&format!("SUCCESS: {} rules found", queries.len())), "{text}");
    Ok(())
}

/// The unit as `cargo xtask install` places it, verified by systemd with the binaries'
/// paths pointed at ones that exist here.
#[test]
fn systemd_accepts_the_unit_and_it_keeps_the_state_of_the_pins_across_stops() -> Result<()> {
    let unit = std::fs::read_to_string(deploy::path("deploy/lb-agent.service"))?;
    for kept in ["RuntimeDirectoryPreserve=yes", "Type=notify", "ExecReload=/bin/kill -HUP $MAINPID"] {
        assert!(unit.lines().any(|line| line == kept), "the unit has {kept}");
    }
    assert!(!unit.contains("ExecStop"), "stopping must leave the data path forwarding: no ExecStop");
    verify_unit("lb-agent.service", &unit.replace("/usr/local/sbin/lb-agent", "/bin/true"))
}

/// The BGP watcher of `deploy/bird/`, the same way.
#[test]
fn systemd_accepts_the_announcing_watcher() -> Result<()> {
    let unit = std::fs::read_to_string(deploy::path("deploy/bird/lb-announce-watch.service"))?;
    assert!(unit.contains("ExecStopPost=/usr/local/sbin/lb-announce down"), "a stopped watcher withdraws");
    verify_unit("lb-announce-watch.service", &unit.replace("/usr/local/sbin/lb-announce", "/bin/true"))
}

/// `systemd-analyze verify` of `unit`, written to a file `name`: silent and successful.
fn verify_unit(name: &str, unit: &str) -> Result<()> {
    let dir = tempdir()?;
    let path = dir.join(name);
    std::fs::write(&path, unit)?;
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.context("running systemd-analyze (Debian's systemd package)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify of {name}:\n{text}");
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    // One of its own per call: the tests of this file run at once, and each removes its
    // directory when done.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lb-deploy-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
