//! The Prometheus and Grafana files of `deploy/` as the tests read them: every query
//! they hold (alert rules, dashboard panels and variables), and the metric names those
//! queries use, to hold against what the agent really exports.

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::lab::workspace_root;

pub const SCRAPE_CONFIG: &str = "deploy/prometheus/prometheus.yml";
pub const ALERT_RULES: &str = "deploy/prometheus/lb-alerts.yml";
pub const ALERT_TESTS: &str = "deploy/prometheus/lb-alerts.test.yml";
pub const DASHBOARD: &str = "deploy/grafana/lb-dashboard.json";

/// Series Prometheus writes itself for every target (the alert rules use `up`).
pub const PROMETHEUS_OWN: &[&str] = &["up"];

/// A PromQL query and where it was found (for messages).
#[derive(Clone, Debug)]
pub struct Query {
    pub place: String,
    pub expr: String,
}

pub fn path(file: &str) -> PathBuf {
    workspace_root().join(file)
}

pub fn dashboard() -> Result<Json> {
    let text = std::fs::read_to_string(path(DASHBOARD)).with_context(|| format!("reading {DASHBOARD}"))?;
    serde_json::from_str(&text).with_context(|| format!("{DASHBOARD} is not JSON"))
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

/// Every panel's queries (rows' panels too), as written (with the dashboard's variables).
pub fn panel_queries(dashboard: &Json) -> Result<Vec<Query>> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().with_context(|| format!("panel {title:?}: a target without expr"))?;
            let place = format!("{DASHBOARD}: panel {title:?} query {}", target["refId"].as_str().unwrap_or("?"));
            queries.push(Query { place, expr: expr.to_owned() });
        }
    }
    Ok(queries)
}

/// The query variables' PromQL: the series selector of `label_values(SELECTOR, LABEL)`,
/// or the whole query.
pub fn variable_queries(dashboard: &Json) -> Result<Vec<Query>> {
    let mut queries = Vec::new();
    for variable in variables(dashboard).filter(|v| v["type"] == "query") {
        let name = variable["name"].as_str().unwrap_or("?");
        let query = variable_query(variable).with_context(|| format!("variable {name} has no query"))?;
        let expr = match query.strip_prefix("label_values(").and_then(|rest| rest.strip_suffix(')')) {
            Some(arguments) => arguments.rsplit_once(',').map_or(arguments, |(selector, _label)| selector),
            None => query,
        };
        queries.push(Query { place: format!("{DASHBOARD}: variable {name}"), expr: expr.trim().to_owned() });
    }
    Ok(queries)
}

/// Every panel, those inside rows included; rows themselves too.
pub fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(panels: &'a Json, into: &mut Vec<&'a Json>) {
        for panel in panels.as_array().into_iter().flatten() {
            into.push(panel);
            walk(&panel["panels"], into);
        }
    }
    let mut all = Vec::new();
    walk(&dashboard["panels"], &mut all);
    all
}

/// A query variable's query: a string, or (as newer Grafanas save it) an object's
/// `query`.
pub fn variable_query(variable: &Json) -> Option<&str> {
    variable["query"].as_str().or_else(|| variable["query"]["query"].as_str())
}

pub fn variables(dashboard: &Json) -> impl Iterator<Item = &Json> {
    dashboard["templating"]["list"].as_array().into_iter().flatten()
}

/// Aggregations, binary operators and modifiers: words of PromQL that are not metric
/// names when they stand without a parenthesis right after them.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];
/// Modifiers followed by a list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression selects: identifiers outside label matchers,
/// ranges, strings and label lists that are neither functions nor keywords.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i)?;
        } else if c == '{' {
            i = skip_to(&chars, i, '}')?;
        } else if c == '[' {
            i = skip_to(&chars, i, ']')?;
        } else if c.is_ascii_digit() || c == '$' {
            // A number, a duration (offset 5m), or a dashboard variable.
            i = word_end(&chars, i + 1);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = word_end(&chars, i);
            let word: String = chars[i..end].iter().collect();
            let next = chars[end..].iter().find(|c| !c.is_whitespace());
            i = end;
            if LABEL_LISTS.contains(&word.as_str()) {
                let open = chars[i..].iter().position(|&c| c == '(').context("a label list without (")?;
                i = skip_to(&chars, i + open, ')')?;
            } else if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

fn word_end(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
        i += 1;
    }
    i
}

/// The index after the string that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    bail!("an unterminated string in {:?}", chars.iter().collect::<String>())
}

/// The index after the `close` that ends what opens at `start`, strings skipped.
fn skip_to(chars: &[char], start: usize, close: char) -> Result<usize> {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i)?,
            c if c == close => return Ok(i + 1),
            _ => i += 1,
        }
    }
    bail!("no {close:?} closes {:?}", chars.iter().collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).unwrap().into_iter().collect()
    }

    #[test]
    fn metric_names_skip_functions_keywords_labels_ranges_and_variables() {
        assert_eq!(names("lb_real_up == 0"), ["lb_real_up"]);
        assert_eq!(names(r#"sum by (job, service) (lb_real_up{real="lb_fake"}) == 0"#), ["lb_real_up"]);
        assert_eq!(names("a / b > 0.9"), ["a", "b"]);
        assert_eq!(
            names("sum(rate(x_total[5m])) by (reason) unless sum(rate(x_total[1h] offset 5m)) <= 2 * y"),
            ["x_total", "y"]
        );
        assert_eq!(names(r#"8 * sum(rate(z{instance=~"$instance"}[$__rate_interval])) > 1e3"#), ["z"]);
        assert_eq!(names("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))"), ["h_bucket"]);
        assert_eq!(names("a * on (instance) group_left (version) b_info"), ["a", "b_info"]);
        assert_eq!(names(r#"up{job="lb-agent"} == 0"#), ["up"]);
        assert!(metric_names(r#"x{a="b}"#).is_err());
    }
}
