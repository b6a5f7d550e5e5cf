//! The files an `include` names: keepalived hands its pattern to glob(3), so `*`, `?` and
//! `[...]` may stand in any component, and the files come in sorted order. (glob's
//! `{a,b}` brace expansion is not done here: such a pattern names only itself.)

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The regular files `pattern` names; a relative pattern is taken from `dir`, the
/// including file's directory, as keepalived changes into it while reading the file.
pub fn expand(pattern: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for component in dir.join(pattern).components() {
        let name = component.as_os_str().to_string_lossy();
        found = if name.contains(['*', '?', '[']) {
            found.iter().flat_map(|base| matching(base, &name)).collect()
        } else {
            found.into_iter().map(|base| base.join(component)).collect()
        };
    }
    found.retain(|path| path.is_file());
    found
}

/// The entries of `base` that `pattern` matches, sorted; as in a shell, a leading `.`
/// must be matched by one.
fn matching(base: &Path, pattern: &str) -> Vec<PathBuf> {
    let dir = if base.as_os_str().is_empty() { Path::new(".") } else { base };
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let pattern: Vec<char> = pattern.chars().collect();
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') || pattern.first() == Some(&'.'))
        .filter(|name| matches(&pattern, &name.chars().collect::<Vec<_>>()))
        .collect();
    names.sort();
    names.into_iter().map(|name| base.join(name)).collect()
}

/// glob(3)'s matching of one name: `*` any run of characters, `?` any one, `[...]` one
/// of a set (`a-z` a range; `[!...]` or `[^...]` one not in it).
fn matches(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|skip| matches(rest, &name[skip..])),
        Some(('?', rest)) => name.split_first().is_some_and(|(_, name)| matches(rest, name)),
        Some(('[', rest)) => {
            let Some((&c, name)) = name.split_first() else { return false };
            match in_set(rest, c) {
                Some((found, rest)) => found && matches(rest, name),
                None => c == '[' && matches(rest, name),
            }
        }
        Some((c, rest)) => name.split_first().is_some_and(|(first, name)| first == c && matches(rest, name)),
    }
}

/// For the pattern after a `[`: whether `c` is in the set, and the pattern after its
/// `]`; `None` when no `]` closes it, and the `[` is an ordinary character.
fn in_set(pattern: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, body) = match pattern.first() {
        Some('!' | '^') => (true, &pattern[1..]),
        _ => (false, pattern),
    };
    // A `]` right at the start is a member, not the end.
    let end = body.iter().skip(1).position(|&x| x == ']')? + 1;
    let set = &body[..end];
    let mut found = false;
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == '-' {
            found |= (set[i]..=set[i + 2]).contains(&c);
            i += 3;
        } else {
            found |= set[i] == c;
            i += 1;
        }
    }
    Some((found != negated, &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str, name: &str) -> bool {
        matches(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
    }

    #[test]
    fn wildcards_match_as_glob_does() {
        assert!(glob("*.conf", "web.conf"));
        assert!(glob("*.conf", ".conf"));
        assert!(!glob("*.conf", "web.conf.bak"));
        assert!(glob("vs-??.conf", "vs-01.conf"));
        assert!(!glob("vs-??.conf", "vs-1.conf"));
        assert!(glob("vs-[0-9].conf", "vs-7.conf"));
        assert!(!glob("vs-[!0-9].conf", "vs-7.conf"));
        assert!(glob("vs-[!0-9].conf", "vs-x.conf"));
        assert!(glob("[]x]", "]"));
        assert!(glob("a[b", "a[b"), "an unclosed `[` is itself");
    }

    #[test]
    fn files_come_sorted_and_hidden_ones_only_when_asked() {
        let dir = std::env::temp_dir().join(format!("lbctl-include-{}", std::process::id()));
        fs::create_dir_all(dir.join("conf.d")).unwrap();
        for name in ["b.conf", "a.conf", ".hidden.conf", "notes.txt"] {
            fs::write(dir.join("conf.d").join(name), "").unwrap();
        }
        fs::create_dir_all(dir.join("conf.d/dir.conf")).unwrap();
        let found = expand("conf.d/*.conf", &dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(found, vec![dir.join("conf.d/a.conf"), dir.join("conf.d/b.conf")]);
    }
}
