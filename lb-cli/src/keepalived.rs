//! `lbctl import keepalived FILE`: the virtual servers of a keepalived.conf as our YAML.
//!
//! The file is read as keepalived reads it (`parse`: tokens, blocks, `include`), its
//! virtual servers gathered in keepalived's own terms (`read`), mapped onto our services
//! with keepalived's defaults (`convert`) and written out (`yaml`). Whatever has no
//! equivalent here is said, one line each, as `FILE:LINE: keyword: not carried over: why`.

mod check;
mod convert;
mod include;
mod parse;
mod read;
mod yaml;

use std::{fmt, path::Path, rc::Rc};

use anyhow::Result;

/// What an import gives: the configuration, and what the operator must know about it.
pub struct Import {
    pub yaml: String,
    /// `FILE:LINE: keyword: ...`, in the order of the files and lines they speak of.
    pub warnings: Vec<String>,
}

/// Reads `path` (and the files it includes) and writes its virtual servers as our
/// configuration. A file keepalived could not parse either (an unclosed block, an
/// unterminated quote) is an error naming its file and line.
pub fn import(path: &Path) -> Result<Import> {
    let mut notes = Notes::default();
    let nodes = parse::file(path, &mut notes)?;
    let keepalived = read::keepalived(&nodes, &mut notes);
    let config = convert::config(&keepalived, path, &mut notes);
    let yaml = yaml::render(&config, path)?;
    Ok(Import { yaml, warnings: notes.into_lines() })
}

/// Where a keyword stands: a file, as the operator would open it, and a line.
#[derive(Clone, Debug)]
pub struct Place {
    file: Rc<str>,
    /// The file's position in the order the files were read (for sorting notes).
    order: usize,
    /// 1-based; 0 speaks of the file as a whole.
    line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}", self.file),
            line => write!(f, "{}:{line}", self.file),
        }
    }
}

/// The lines for standard error.
#[derive(Default)]
pub struct Notes {
    lines: Vec<(Place, String)>,
}

impl Notes {
    /// Something of keepalived's that our configuration does not have, and why.
    fn lost(&mut self, place: &Place, keyword: &str, why: impl fmt::Display) {
        self.note(place, keyword, format_args!("not carried over: {why}"));
    }

    /// Something the operator must know about what was written.
    fn note(&mut self, place: &Place, keyword: &str, text: impl fmt::Display) {
        self.lines.push((place.clone(), format!("{place}: {keyword}: {text}")));
    }

    /// In the order of files and lines; a virtual server group's services share their
    /// virtual server's notes, which are said once.
    fn into_lines(mut self) -> Vec<String> {
        self.lines.sort_by_key(|(place, _)| (place.order, place.line));
        let mut lines: Vec<String> = Vec::new();
        for (_, line) in self.lines {
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines
    }
}
