//! Absolute path globs (`*`, `?`, `[a-z]`, `[!x]`, `**`), expanded against the file system.

use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// Why a glob pattern is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// Patterns are matched from the root, so a relative one would depend on the working directory.
    #[error("glob {0:?} must be an absolute path")]
    Relative(String),
    /// A `[` without its `]`.
    #[error("glob {0:?} has an unclosed character class")]
    UnclosedClass(String),
    /// `**` must be a whole path component.
    #[error("glob {0:?}: `**` must be a whole path component")]
    PartialDoubleStar(String),
}

/// A parsed glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    Literal(Vec<u8>),
    Wild(Vec<Token>),
    AnyDirs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    AnyByte,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Pattern {
    /// Parses an absolute glob.
    pub fn new(glob: &str) -> Result<Self, GlobError> {
        if !glob.starts_with('/') {
            return Err(GlobError::Relative(glob.to_string()));
        }
        let mut components = Vec::new();
        for part in glob.split('/').filter(|p| !p.is_empty()) {
            if part == "**" {
                components.push(Component::AnyDirs);
            } else if part.contains("**") {
                return Err(GlobError::PartialDoubleStar(glob.to_string()));
            } else if part.contains(['*', '?', '[']) {
                components.push(Component::Wild(tokens(glob, part.as_bytes())?));
            } else {
                components.push(Component::Literal(part.as_bytes().to_vec()));
            }
        }
        Ok(Self { components })
    }

    /// Regular files (symbolic links followed) matching the pattern, sorted.
    /// Unreadable directories are skipped: a directory that is not there yet
    /// is the usual case for logs that will appear later.
    pub fn expand(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(Path::new("/"), &self.components, &mut found);
        found.sort();
        found.dedup();
        found
    }
}

fn tokens(glob: &str, part: &[u8]) -> Result<Vec<Token>, GlobError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < part.len() {
        match part[i] {
            b'*' => out.push(Token::AnyRun),
            b'?' => out.push(Token::AnyByte),
            b'[' => {
                let mut j = i + 1;
                let negated = matches!(part.get(j), Some(b'!' | b'^'));
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = part.get(j) else {
                        return Err(GlobError::UnclosedClass(glob.to_string()));
                    };
                    // A `]` right after `[` or `[!` is a member, as in shells.
                    if c == b']' && !first {
                        break;
                    }
                    first = false;
                    if part.get(j + 1) == Some(&b'-') && part.get(j + 2).is_some_and(|&e| e != b']')
                    {
                        ranges.push((c, part[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((c, c));
                        j += 1;
                    }
                }
                out.push(Token::Class { negated, ranges });
                i = j;
            }
            c => out.push(Token::Byte(c)),
        }
        i += 1;
    }
    Ok(out)
}

/// Matches one file name; as in shells, wildcards do not match a leading dot.
fn matches(tokens: &[Token], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && !matches!(tokens.first(), Some(Token::Byte(b'.'))) {
        return false;
    }
    let (mut t, mut n) = (0, 0);
    // Where to resume after the last `*`: the token after it, and the name position it took up to.
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match tokens.get(t) {
            Some(Token::AnyRun) => {
                resume = Some((t + 1, n));
                t += 1;
                continue;
            }
            Some(Token::AnyByte) => true,
            Some(Token::Byte(b)) => *b == name[n],
            Some(Token::Class { negated, ranges }) => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&name[n])) != *negated
            }
            None => false,
        };
        if step {
            t += 1;
            n += 1;
        } else if let Some((rt, rn)) = resume {
            t = rt;
            n = rn + 1;
            resume = Some((rt, rn + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::AnyRun)
}

fn walk(dir: &Path, rest: &[Component], found: &mut Vec<PathBuf>) {
    let Some((first, rest_after)) = rest.split_first() else {
        if std::fs::metadata(dir).is_ok_and(|m| m.is_file()) {
            found.push(dir.to_path_buf());
        }
        return;
    };
    match first {
        Component::Literal(name) => {
            let next = dir.join(std::ffi::OsStr::from_bytes(name));
            if rest_after.is_empty() || next.is_dir() {
                walk(&next, rest_after, found);
            }
        }
        Component::Wild(tokens) => {
            for entry in read_dir(dir) {
                if matches(tokens, entry.file_name().as_bytes()) {
                    walk(&entry.path(), rest_after, found);
                }
            }
        }
        Component::AnyDirs => {
            walk(dir, rest_after, found);
            for entry in read_dir(dir) {
                // Not following directory links keeps a link cycle from recursing forever.
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && entry.file_name().as_bytes().first() != Some(&b'.') {
                    walk(&entry.path(), rest, found);
                }
            }
        }
    }
}

fn read_dir(dir: &Path) -> Vec<std::fs::DirEntry> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wild(pattern: &str, name: &str) -> bool {
        let toks = tokens(pattern, pattern.as_bytes()).expect("parses");
        matches(&toks, name.as_bytes())
    }

    #[test]
    fn wildcards() {
        assert!(wild("*.log", "0.log"));
        assert!(!wild("*.log", ".log.log"));
        assert!(!wild("*.log", "0.log.1"));
        assert!(wild("*", "anything"));
        assert!(wild("a*b*c", "aXXbYYc"));
        assert!(!wild("a*b*c", "aXXbYY"));
        assert!(wild("?.log", "1.log"));
        assert!(!wild("?.log", "10.log"));
        assert!(wild("[0-9].log", "7.log"));
        assert!(!wild("[!0-9].log", "7.log"));
        assert!(wild("[]x]", "]"));
        assert!(wild("*.log*", "0.log.20240101"));
        assert!(!wild("*", ".hidden"));
        assert!(wild(".*", ".hidden"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(matches!(
            Pattern::new("x/*.log"),
            Err(GlobError::Relative(_))
        ));
        assert!(matches!(
            Pattern::new("/x/[ab"),
            Err(GlobError::UnclosedClass(_))
        ));
        assert!(matches!(
            Pattern::new("/x/a**/y"),
            Err(GlobError::PartialDoubleStar(_))
        ));
    }

    #[test]
    fn expands_against_files() {
        let root = tempfile::tempdir().expect("temp dir");
        let base = root.path();
        for file in [
            "pods/ns_a_1/c1/0.log",
            "pods/ns_a_1/c1/0.log.20240101",
            "pods/ns_b_2/c2/1.log",
            "pods/ns_b_2/deep/er/2.log",
            "other/x.txt",
        ] {
            let path = base.join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "x\n").expect("write");
        }
        let expand = |glob: &str| -> Vec<String> {
            Pattern::new(&format!("{}/{glob}", base.display()))
                .expect("parses")
                .expand()
                .into_iter()
                .map(|p| {
                    p.strip_prefix(base)
                        .expect("under base")
                        .display()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(
            expand("pods/*/*/*.log"),
            ["pods/ns_a_1/c1/0.log", "pods/ns_b_2/c2/1.log"]
        );
        assert_eq!(
            expand("pods/**/*.log"),
            [
                "pods/ns_a_1/c1/0.log",
                "pods/ns_b_2/c2/1.log",
                "pods/ns_b_2/deep/er/2.log"
            ]
        );
        assert_eq!(expand("other/x.txt"), ["other/x.txt"]);
        assert!(expand("missing/*.log").is_empty());
        assert!(expand("pods/*").is_empty(), "directories are not files");
    }
}
