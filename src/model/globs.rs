//! Globs as a job writes them (`context_files`, `touches`, `[test] protect`), compiled once when
//! the job is read; they match paths from the repository's root.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::Invalid;

/// The patterns as written, and the set they compile to.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Globs {
    /// Compiles `patterns`; the error names the first one that is not a glob.
    pub fn new(patterns: Vec<String>) -> Result<Globs, Invalid> {
        let mut set = GlobSetBuilder::new();
        for g in &patterns {
            set.add(Glob::new(g).map_err(|e| Invalid(format!("glob `{g}` is invalid: {e}")))?);
        }
        let set = set.build().map_err(|e| Invalid(e.to_string()))?;
        Ok(Globs { patterns, set })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (relative to the repository's root) matches any pattern.
    pub fn is_match(&self, path: impl AsRef<std::path::Path>) -> bool {
        self.set.is_match(path)
    }
}

impl PartialEq for Globs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl TryFrom<Vec<String>> for Globs {
    type Error = Invalid;
    fn try_from(patterns: Vec<String>) -> Result<Self, Invalid> {
        Globs::new(patterns)
    }
}

impl From<Globs> for Vec<String> {
    fn from(globs: Globs) -> Vec<String> {
        globs.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_once_and_names_a_bad_pattern() {
        let globs = Globs::new(vec!["src/**/*.rs".into()]).unwrap();
        assert!(globs.is_match("src/a/b.rs"));
        assert!(!globs.is_match("tests/b.rs"));
        let err = Globs::new(vec!["ok".into(), "src/[".into()]).unwrap_err();
        assert!(err.to_string().contains("src/["), "{err}");
    }
}
