//! From a field's path (`services[1].reals[0].weight`) to its line in the YAML source,
//! so that a rule broken after parsing is reported where the operator wrote it.

use yaml_rust2::{
    parser::{Event, Parser},
    scanner::Marker,
};

/// Where a container is in its walk: a mapping waiting for a key or for the value of
/// `key`, or a sequence at its next index.
enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, next: usize },
}

/// The line of `field`, or of the nearest enclosing field written in the file when it
/// is not (a missing field is reported where it belongs).
pub fn line_of_nearest(source: &str, field: &str) -> Option<usize> {
    let mut path = field;
    loop {
        if let Some(line) = line_of(source, path) {
            return Some(line);
        }
        path = &path[..path.rfind(['.', '['])?];
    }
}

/// The 1-based line of `field`: where its key is written, or where a sequence item starts.
pub fn line_of(source: &str, field: &str) -> Option<usize> {
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let (event, mark) = parser.next_token().ok()?;
        match event {
            Event::StreamEnd => return None,
            Event::Scalar(value, ..) => {
                if let Some(line) = node(&mut stack, field, mark, Some(value)) {
                    return Some(line);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = match node(&mut stack, field, mark, None) {
                    Some(line) => return Some(line),
                    None => value_path(&stack),
                };
                stack.push(match event {
                    Event::MappingStart(..) => Frame::Mapping { path, key: None },
                    _ => Frame::Sequence { path, next: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                value_done(&mut stack);
            }
            _ => {}
        }
    }
}

/// A node starts at `mark`: a scalar (`scalar` is its text) or a container. In a mapping
/// awaiting a key it is that key; otherwise it is a value. Returns the line if the node
/// is the field sought.
fn node(stack: &mut [Frame], field: &str, mark: Marker, scalar: Option<String>) -> Option<usize> {
    let found = match stack.last_mut() {
        Some(Frame::Mapping { path, key: awaited @ None }) => {
            let key = scalar?;
            let here = join(path, &key);
            *awaited = Some(key);
            return (here == field).then_some(mark.line());
        }
        Some(Frame::Sequence { path, next }) => format!("{path}[{next}]") == field,
        Some(Frame::Mapping { key: Some(_), .. }) | None => false,
    };
    if scalar.is_some() {
        value_done(stack);
    }
    found.then_some(mark.line())
}

/// The path of the value a new container is about to hold.
fn value_path(stack: &[Frame]) -> String {
    match stack.last() {
        Some(Frame::Mapping { path, key: Some(key) }) => join(path, key),
        Some(Frame::Sequence { path, next }) => format!("{path}[{next}]"),
        _ => String::new(),
    }
}

/// The value in the enclosing container is complete: await the next key or index.
fn value_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Mapping { key, .. }) => *key = None,
        Some(Frame::Sequence { next, .. }) => *next += 1,
        None => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}
