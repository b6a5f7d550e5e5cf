//! The Prometheus files of `deploy/` as the tests read them: the alert rules' queries.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_yaml::Value as Yaml;

use crate::lab::workspace_root;

pub const SCRAPE_CONFIG: &str = "deploy/prometheus/prometheus.yml";
pub const ALERT_RULES: &str = "deploy/prometheus/lb-alerts.yml";
pub const ALERT_TESTS: &str = "deploy/prometheus/lb-alerts.test.yml";

/// A PromQL query and where it was found (for messages).
#[derive(Debug)]
pub struct Query {
    pub place: String,
    pub expr: String,
}

pub fn path(file: &str) -> PathBuf {
    workspace_root().join(file)
}

pub fn yaml(file: &str) -> Result<Yaml> {
    let text = std::fs::read_to_string(path(file)).with_context(|| format!("reading {file}"))?;
    serde_yaml::from_str(&text).with_context(|| format!("{file} is not YAML"))
}

/// Every alert rule's expression.
pub fn alert_queries() -> Result<Vec<Query>> {
    let rules = yaml(ALERT_RULES)?;
    let mut queries = Vec::new();
    for group in rules["groups"].as_sequence().context("no groups")? {
        for rule in group["rules"].as_sequence().context("a group without rules")? {
            let name = rule["alert"].as_str().or_else(|| rule["record"].as_str()).context("a rule without a name")?;
            let expr = rule["expr"].as_str().with_context(|| format!("rule {name} has no expr"))?;
            queries.push(Query { place: format!("{ALERT_RULES}: {name}"), expr: expr.to_owned() });
        }
    }
    Ok(queries)
}
