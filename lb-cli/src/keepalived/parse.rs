//! keepalived.conf's syntax, as keepalived's `lib/parser.c` reads it: `#` and `!` start a
//! comment anywhere outside quotes; a `"`-quoted string is one word; `{` and `}` stand
//! apart wherever they are; a statement is the words of a line, and owns the block that
//! opens after it (on its line or the next); `include` splices in the files its glob
//! names, relative to the including file's directory.

use std::{fs, iter::Peekable, path::Path, rc::Rc, vec};

use anyhow::{Context, Result, bail};

use super::{Notes, Place, include};

/// One statement: `real_server 10.0.0.1 80 { ... }` has the keyword `real_server`, two
/// arguments and a block.
#[derive(Debug)]
pub struct Node {
    pub keyword: String,
    pub args: Vec<String>,
    pub block: Vec<Node>,
    pub place: Place,
}

impl Node {
    /// The `i`th word after the keyword.
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }
}

/// How deep includes may nest: deeper is a file that includes itself.
const MAX_INCLUDE_DEPTH: usize = 32;

/// `include` and its variants, which differ only in what keepalived reports when files
/// are missing.
const INCLUDES: [&str; 6] = ["include", "includer", "includem", "includew", "includeb", "includea"];

/// The statements of `path` and of every file it includes.
pub fn file(path: &Path, notes: &mut Notes) -> Result<Vec<Node>> {
    let mut reader = Reader { files: 0, notes };
    let mut tokens = reader.tokens(path, 0)?.into_iter().peekable();
    statements(&mut tokens, None)
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    LineEnd,
}

struct Spanned {
    token: Token,
    place: Place,
}

type Tokens = Peekable<vec::IntoIter<Spanned>>;

struct Reader<'a> {
    /// Files read so far: the next one's order.
    files: usize,
    notes: &'a mut Notes,
}

impl Reader<'_> {
    /// A file's tokens, with those of the files it includes in their place (keepalived
    /// splices lines, so a block may even open in one file and close in another).
    fn tokens(&mut self, path: &Path, depth: usize) -> Result<Vec<Spanned>> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: Rc<str> = path.display().to_string().into();
        let order = self.files;
        self.files += 1;
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let place = Place { file: file.clone(), order, line: i + 1 };
            if self.skipped(line, &place) {
                continue;
            }
            let words = words(line, &place)?;
            match words.split_first() {
                Some((Token::Word(keyword), rest)) if INCLUDES.contains(&keyword.as_str()) => {
                    let pattern: Vec<&str> = rest.iter().filter_map(word).collect();
                    tokens.extend(self.include(keyword, &pattern.join(" "), path, &place, depth)?);
                }
                _ => {
                    tokens.extend(words.into_iter().map(|token| Spanned { token, place: place.clone() }));
                    tokens.push(Spanned { token: Token::LineEnd, place });
                }
            }
        }
        Ok(tokens)
    }

    /// The tokens of the files `pattern` names, from the directory of `from`.
    fn include(
        &mut self,
        keyword: &str,
        pattern: &str,
        from: &Path,
        place: &Place,
        depth: usize,
    ) -> Result<Vec<Spanned>> {
        if depth >= MAX_INCLUDE_DEPTH {
            bail!("{place}: {keyword}: includes nest deeper than {MAX_INCLUDE_DEPTH}; does a file include itself?");
        }
        let files = include::expand(pattern, from.parent().unwrap_or(Path::new("")));
        if files.is_empty() {
            self.notes.note(place, keyword, format_args!("no file matches {pattern}"));
        }
        let mut tokens = Vec::new();
        for file in files {
            tokens.extend(self.tokens(&file, depth + 1)?);
        }
        Ok(tokens)
    }

    /// Lines of keepalived's preprocessor, which depend on the host (`@config-id`) or
    /// define text to substitute: left out, and said so.
    fn skipped(&mut self, line: &str, place: &Place) -> bool {
        let line = line.trim_start();
        let why = if line.starts_with('@') {
            "conditional configuration: lbctl cannot know which host's config id applies; the line is left out"
        } else if line.starts_with('$') && line.split_whitespace().next().is_some_and(|word| word.contains('=')) {
            "parameter definitions are not expanded; the line is left out (uses of it stay as written)"
        } else if line.starts_with("~SEQ") || line.starts_with("~LST") {
            "sequence and list lines are not expanded; the line is left out"
        } else {
            return false;
        };
        let keyword = line.split_whitespace().next().unwrap_or(line);
        self.notes.lost(place, keyword, why);
        true
    }
}

fn word(token: &Token) -> Option<&str> {
    match token {
        Token::Word(word) => Some(word),
        _ => None,
    }
}

/// A line's words and braces, comments left out.
fn words(line: &str, place: &Place) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' | '!' => break,
            '"' => {
                end_word(&mut word, &mut tokens);
                tokens.push(Token::Word(quoted(&mut chars, place)?));
            }
            '{' | '}' => {
                end_word(&mut word, &mut tokens);
                tokens.push(if c == '{' { Token::Open } else { Token::Close });
            }
            c if c.is_whitespace() => end_word(&mut word, &mut tokens),
            c => word.push(c),
        }
    }
    end_word(&mut word, &mut tokens);
    Ok(tokens)
}

fn end_word(word: &mut String, tokens: &mut Vec<Token>) {
    if !word.is_empty() {
        tokens.push(Token::Word(std::mem::take(word)));
    }
}

/// The rest of a `"`-quoted string, without its quotes.
fn quoted(chars: &mut std::str::Chars<'_>, place: &Place) -> Result<String> {
    let mut text = String::new();
    for c in chars.by_ref() {
        if c == '"' {
            return Ok(text);
        }
        text.push(c);
    }
    bail!("{place}: a quoted string is not closed on its line")
}

/// Statements up to the `}` that closes the block opened at `opened` (or to the end).
fn statements(tokens: &mut Tokens, opened: Option<&Place>) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    while let Some(Spanned { token, place }) = tokens.next() {
        match token {
            Token::LineEnd => {}
            Token::Close if opened.is_some() => return Ok(nodes),
            Token::Close => bail!("{place}: `}}` closes no block"),
            Token::Open => bail!("{place}: `{{` opens a block that follows no keyword"),
            Token::Word(keyword) => nodes.push(statement(keyword, place, tokens)?),
        }
    }
    match opened {
        Some(place) => bail!("{place}: the block opened here is not closed"),
        None => Ok(nodes),
    }
}

/// A keyword's arguments (the rest of its line) and its block, if one opens next.
fn statement(keyword: String, place: Place, tokens: &mut Tokens) -> Result<Node> {
    let mut args = Vec::new();
    while let Some(Spanned { token: Token::Word(arg), .. }) =
        tokens.next_if(|next| matches!(next.token, Token::Word(_)))
    {
        args.push(arg);
    }
    while tokens.next_if(|next| next.token == Token::LineEnd).is_some() {}
    let block = match tokens.next_if(|next| next.token == Token::Open) {
        Some(open) => statements(tokens, Some(&open.place))?,
        None => Vec::new(),
    };
    Ok(Node { keyword, args, block, place })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> (Result<Vec<Node>>, Vec<String>) {
        let path = std::env::temp_dir().join(format!("lbctl-parse-{}-{name}.conf", std::process::id()));
        fs::write(&path, text).unwrap();
        let mut notes = Notes::default();
        let nodes = file(&path, &mut notes);
        let _ = fs::remove_file(&path);
        (nodes, notes.into_lines())
    }

    /// Each statement as `keyword args {block}`, to compare whole trees at a glance.
    fn show(nodes: &[Node]) -> Vec<String> {
        let show = |node: &Node| match node.block.as_slice() {
            [] => format!("{} {}", node.keyword, node.args.join(",")),
            block => format!("{} {} {{{}}}", node.keyword, node.args.join(","), show(block).join("; ")),
        };
        nodes.iter().map(show).collect()
    }

    #[test]
    fn statements_blocks_quotes_and_comments_as_keepalived_reads_them() {
        let text = "! a comment\n\
                    virtual_server 10.0.0.1 80{   # a brace against the port\n\
                    \x20 lb_algo rr ! a comment after a statement\n\
                    \x20 real_server 10.0.0.2 80\n\
                    \x20 {\n\
                    \x20   MISC_CHECK { misc_path \"/bin/check #1 !x\" }\n\
                    \x20 }\n\
                    }\n";
        let (nodes, notes) = parse("tree", text);
        let nodes = nodes.unwrap();
        assert_eq!(
            show(&nodes),
            [
                "virtual_server 10.0.0.1,80 {lb_algo rr; real_server 10.0.0.2,80 {MISC_CHECK  {misc_path /bin/check #1 !x}}}"
            ]
        );
        assert_eq!(nodes[0].block[1].place.line, 4, "a statement's place is its keyword's line");
        assert!(notes.is_empty());
    }

    #[test]
    fn unbalanced_braces_and_quotes_are_errors_naming_their_line() {
        let cases = [
            ("close", "a\n}\n", ":2: `}` closes no block"),
            ("open", "a {\nb\n", ":1: the block opened here is not closed"),
            ("quote", "a\nb \"c\n", ":2: a quoted string is not closed on its line"),
        ];
        for (name, text, expected) in cases {
            let error = parse(name, text).0.unwrap_err().to_string();
            assert!(error.ends_with(&format!("-{name}.conf{expected}")), "{error}");
        }
    }
}
