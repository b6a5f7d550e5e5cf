//! Writing a changed configuration back to its file, so a restart or a reload runs
//! what lbctl changed. The parts a change did not touch keep their text (comments,
//! order, style): each top-level key, and each service, whose meaning is unchanged is
//! copied as written; the rest is written anew. The text is read back before it is
//! used, and must mean exactly the new configuration; when splicing cannot promise
//! that, the whole file is written anew. The file is replaced atomically.

use std::{
    fs::{self, File},
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_yaml::{Mapping, Value};

use super::{Config, VirtualService};

/// The text of `new` for the file that held `source`: spliced where it can be, else
/// written whole; either way read back, and refused unless it means `new`.
pub fn text(source: &str, new: &Config) -> Result<String> {
    let spliced = splice(source, new).filter(|text| means(text, new));
    let text = spliced.or_else(|| fresh(new).filter(|text| means(text, new)));
    text.context("the configuration cannot be written as YAML that reads back the same")
}

/// A new configuration file written beside the old one and flushed to disk, not yet in
/// its place: [`Staged::commit`] renames it over the old one (a reader sees the old
/// file or the new one, never half of one); dropped, it is removed.
pub struct Staged {
    temporary: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Stages `text` for the file at `path` (through a symbolic link, the file it
    /// names), with the old file's mode and owner.
    pub fn new(path: &Path, text: &str) -> Result<Self> {
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let directory = path.parent().context("the configuration file has no directory")?;
        let name = path.file_name().context("the configuration file has no name")?.to_string_lossy();
        let temporary = directory.join(format!(".{name}.{}.new", std::process::id()));
        let staged = Self { temporary, path };
        let mut file = File::create(&staged.temporary)?;
        file.write_all(text.as_bytes())?;
        if let Ok(old) = fs::metadata(&staged.path) {
            file.set_permissions(old.permissions())?;
            std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))?;
        }
        file.sync_all().with_context(|| format!("writing {}", staged.temporary.display()))?;
        Ok(staged)
    }

    pub fn commit(self) -> Result<()> {
        fs::rename(&self.temporary, &self.path).with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(directory) = self.path.parent() {
            File::open(directory)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temporary);
    }
}

fn means(text: &str, config: &Config) -> bool {
    serde_yaml::from_str::<Config>(text).is_ok_and(|read| read == *config)
}

fn fresh(config: &Config) -> Option<String> {
    let body = serde_yaml::to_string(config).ok()?;
    Some(format!("# Written by lb-agent (lbctl's changes); the previous file could not be kept as it was.\n{body}"))
}

const SERVICES: &str = "services";

/// The key of the lines before the first key.
const PREAMBLE: &str = "";

/// A run of lines of the file: the comments and blank lines before a key or an item
/// belong to it, so they come and go with it.
struct Section<'a> {
    /// The top-level key, or the item's index among the services.
    key: String,
    lines: Vec<&'a str>,
}

fn splice(source: &str, new: &Config) -> Option<String> {
    let old: Config = serde_yaml::from_str(source).ok()?;
    let (old_fields, new_fields) = (fields(&old)?, fields(new)?);
    let mut out = String::new();
    let sections = sections(source.lines().collect(), 0, top_level_key)?;
    for section in &sections {
        // A key left at its default serializes as nothing, before and after alike.
        let (before, after) = (old_fields.get(&section.key), new_fields.get(&section.key));
        match after {
            _ if before == after => push_lines(&mut out, &section.lines),
            None => {}
            Some(_) if section.key == SERVICES => out += &services(&section.lines, &old.services, &new.services)?,
            Some(value) => {
                push_lines(&mut out, preamble(&section.lines));
                out += &entry(&section.key, value)?;
            }
        }
    }
    for (key, value) in &new_fields {
        let key = key.as_str()?;
        if !sections.iter().any(|section| section.key == key) {
            out += &entry(key, value)?;
        }
    }
    Some(out)
}

/// The top-level keys of `config` as it serializes, in the order of its fields (those
/// left at their defaults are not there).
fn fields(config: &Config) -> Option<Mapping> {
    match serde_yaml::to_value(config).ok()? {
        Value::Mapping(fields) => Some(fields),
        _ => None,
    }
}

/// The `services:` section, its items copied where their service is unchanged and
/// written anew where not; the comments before a changed service stay with it.
fn services(lines: &[&str], old: &[VirtualService], new: &[VirtualService]) -> Option<String> {
    let header = lines.iter().position(|line| top_level_key(line).is_some())?;
    let mut out = String::new();
    push_lines(&mut out, &lines[..header]);
    if old.is_empty() {
        // `services: []`, or the key alone: the first services of a file.
        out += &entry(SERVICES, &serde_yaml::to_value(new).ok()?)?;
        push_lines(&mut out, &lines[header + 1..]);
        return Some(out);
    }
    let indent = lines[header + 1..].iter().find(|line| is_content(line))?.find("- ")?;
    let mut items = sections(lines[header + 1..].to_vec(), indent, |line| item_start(line, indent))?;
    push_lines(&mut out, &lines[header..=header]);
    if items.first().is_some_and(|first| first.key == PREAMBLE) {
        push_lines(&mut out, &items.remove(0).lines);
    }
    // A block sequence of services, one item each: anything else is not spliced.
    if items.len() != old.len() {
        return None;
    }
    for service in new {
        match old.iter().position(|old| old.name == service.name) {
            Some(i) if old[i] == *service => push_lines(&mut out, &items[i].lines),
            Some(i) => {
                push_lines(&mut out, preamble(&items[i].lines));
                out += &indented(service, indent)?;
            }
            None => out += &indented(service, indent)?,
        }
    }
    Some(out)
}

/// The comment lines an item starts with.
fn preamble<'a, 'b>(lines: &'b [&'a str]) -> &'b [&'a str] {
    let content = lines.iter().position(|line| is_content(line)).unwrap_or(lines.len());
    &lines[..content]
}

/// One item of a sequence at `indent`.
fn indented<T: serde::Serialize>(item: &T, indent: usize) -> Option<String> {
    let text = serde_yaml::to_string(&[item]).ok()?;
    let pad = " ".repeat(indent);
    Some(text.lines().map(|line| format!("{pad}{line}\n")).collect())
}

/// A key written anew; services as the file's items are, indented under the key.
fn entry(key: &str, value: &Value) -> Option<String> {
    if let (SERVICES, Value::Sequence(items)) = (key, value) {
        let items: Option<String> = items.iter().map(|service| indented(service, 2)).collect();
        return Some(format!("{SERVICES}:\n{}", items?));
    }
    let mut single = Mapping::new();
    single.insert(key.into(), value.clone());
    serde_yaml::to_string(&single).ok()
}

/// Splits `lines` where `starts` finds a key: each section runs to the next, less the
/// comments and blank lines (at `indent` or less) that end it, which open the next.
/// Lines before the first key are a section of their own, [`PREAMBLE`].
fn sections<'a>(
    lines: Vec<&'a str>,
    indent: usize,
    starts: impl Fn(&str) -> Option<String>,
) -> Option<Vec<Section<'a>>> {
    let mut sections = vec![Section { key: PREAMBLE.into(), lines: Vec::new() }];
    let mut pending: Vec<&str> = Vec::new();
    for line in lines {
        if let Some(key) = starts(line) {
            let mut opened = std::mem::take(&mut pending);
            opened.push(line);
            sections.push(Section { key, lines: opened });
        } else if !is_content(line) && leading_spaces(line) <= indent {
            pending.push(line);
        } else {
            let current = sections.last_mut()?;
            current.lines.append(&mut pending);
            current.lines.push(line);
        }
    }
    sections.last_mut()?.lines.append(&mut pending);
    if sections[0].lines.is_empty() {
        sections.remove(0);
    }
    Some(sections)
}

/// `key` of a line `key:` or `key: value` at the start of a line.
fn top_level_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once(':')?;
    let word = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    word.then(|| key.to_owned())
}

fn item_start(line: &str, indent: usize) -> Option<String> {
    (leading_spaces(line) == indent && line[indent..].starts_with("- ")).then(|| "item".to_owned())
}

fn is_content(line: &str) -> bool {
    let trimmed = line.trim_start();
    !trimmed.is_empty() && !trimmed.starts_with('#')
}

fn leading_spaces(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn push_lines(out: &mut String, lines: &[&str]) {
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests;
