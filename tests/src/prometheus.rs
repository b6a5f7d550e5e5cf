//! A reader of the Prometheus text exposition format, enough to check what the agent
//! serves: samples by name and labels. Comments and `# EOF` are skipped.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
pub struct Samples(Vec<(String, Labels, f64)>);

impl Samples {
    pub fn parse(text: &str) -> Result<Self> {
        let mut samples = Vec::new();
        for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
            samples.push(sample(line).with_context(|| format!("reading metrics line {line:?}"))?);
        }
        Ok(Self(samples))
    }

    /// The value of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: Labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.0.iter().find(|(n, l, _)| n == name && *l == wanted).map(|(_, _, value)| *value)
    }

    /// Like [`Samples::get`], but a missing sample is an error naming it.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.get(name, labels).with_context(|| format!("no sample {name}{labels:?} in the metrics"))
    }

    /// The names of every sample (a counter's with its `_total`).
    pub fn names(&self) -> BTreeSet<&str> {
        self.0.iter().map(|(name, _, _)| name.as_str()).collect()
    }

    /// Every sample of `name`.
    pub fn all(&self, name: &str) -> impl Iterator<Item = (&Labels, f64)> {
        self.0.iter().filter(move |(n, _, _)| n == name).map(|(_, labels, value)| (labels, *value))
    }
}

fn sample(line: &str) -> Result<(String, Labels, f64)> {
    let (series, value) = line.rsplit_once(' ').context("no value")?;
    let value: f64 = value.parse().context("value is not a number")?;
    let Some((name, rest)) = series.split_once('{') else {
        return Ok((series.to_owned(), Labels::new(), value));
    };
    let body = rest.strip_suffix('}').context("unclosed label set")?;
    let mut labels = Labels::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").context("label without a quoted value")?;
        let mut text = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => text.push('\n'),
                    Some((_, c)) => text.push(c),
                    None => bail!("dangling escape"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => text.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), text);
        rest = &after[end + 1..];
    }
    Ok((name.to_owned(), labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_and_without_labels() {
        let text = "# HELP x y\n# TYPE a counter\na_total{service=\"web\",real=\"1.2.3.4\"} 12\nb 3.5\nc{q=\"a\\\"b\"} 1\n# EOF\n";
        let samples = Samples::parse(text).unwrap();
        assert_eq!(samples.get("a_total", &[("service", "web"), ("real", "1.2.3.4")]), Some(12.0));
        assert_eq!(samples.get("a_total", &[("service", "web")]), None);
        assert_eq!(samples.get("b", &[]), Some(3.5));
        assert_eq!(samples.get("c", &[("q", "a\"b")]), Some(1.0));
        assert!(Samples::parse("broken{ 1").is_err());
    }
}
