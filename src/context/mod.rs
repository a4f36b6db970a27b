//! Context selection: the smallest useful set of a repository's files for a request, most useful
//! first, each with why it is there, cut at a byte budget.
//!
//! What ranks today is lexical: the seeds the caller names, then files by BM25 of the prompt's
//! terms against their paths and contents ([`lexical`]), then the tests of what was chosen, by
//! the naming conventions of the common languages. The repository is input, never code: nothing
//! in it runs, links are not followed, sizes and counts are capped ([`index`]).

pub mod index;
pub mod lexical;
pub mod parse;

use std::path::Path;

use git2::Repository;
use serde::Serialize;

use crate::model::ByteSize;
pub use index::{Index, Note};

/// How many of the best lexical matches are considered for the budget.
const CANDIDATES: usize = 200;

/// What a selection is asked for.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub prompt: &'a str,
    /// Paths of the tree the caller knows matter; they come first.
    pub seeds: &'a [String],
    pub budget: ByteSize,
}

/// One chosen file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Selected {
    pub path: String,
    pub bytes: u64,
    /// 1.0 for a seed; otherwise relative to the best match, in (0, 1].
    pub score: f64,
    pub why: Vec<String>,
}

/// The chosen files, most useful first, and what they add up to against the budget.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    pub files: Vec<Selected>,
    pub budget: u64,
    pub used: u64,
    /// What the index or the budget left out, and why.
    pub notes: Vec<Note>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read repository {path}: {message}")]
    Repository { path: String, message: String },
    #[error("`{0}` is not a branch, tag or commit of the repository")]
    UnknownBase(String),
    #[error("seed `{0}` is not a file of the tree at the base")]
    UnknownSeed(String),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl ContextError {
    /// True when the request is at fault (exit 2), false for the machine (exit 3).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ContextError::Git(_))
    }
}

/// The index of the tree at `base` (default: `HEAD`) of the git repository at `repo`.
pub fn index_at(repo: &Path, base: Option<&str>) -> Result<Index, ContextError> {
    let repo = Repository::open(repo).map_err(|e| ContextError::Repository {
        path: repo.display().to_string(),
        message: e.message().to_string(),
    })?;
    let rev = base.unwrap_or("HEAD");
    let tree = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_tree())
        .map_err(|_| ContextError::UnknownBase(rev.to_string()))?;
    Ok(Index::of_tree(&repo, tree.id())?)
}

/// Chooses files of `index` for `request`: seeds, then the best lexical matches, each followed
/// by its tests, until the budget is spent (a file that does not fit is passed over for smaller
/// ones after it).
pub fn select(index: &Index, request: &Request<'_>) -> Result<Selection, ContextError> {
    let by_path = |path: &str| index.files.iter().position(|f| f.path == path);
    let mut ranked: Vec<(usize, f64, String)> = Vec::new();
    for seed in request.seeds {
        let file = by_path(seed).ok_or_else(|| ContextError::UnknownSeed(seed.clone()))?;
        ranked.push((file, 1.0, "seed".into()));
    }
    let query = lexical::query_terms(request.prompt);
    let scored = lexical::rank(index, &query);
    let best = scored.first().map_or(1.0, |s| s.score);
    for s in scored.into_iter().take(CANDIDATES) {
        let terms: Vec<String> = s.matched.iter().map(|t| format!("`{t}`")).collect();
        let why = format!("names {} from the prompt", terms.join(", "));
        ranked.push((s.file, s.score / best, why));
    }
    let budget = request.budget.bytes();
    let mut selection = Selection {
        files: Vec::new(),
        budget,
        used: 0,
        notes: Vec::new(),
    };
    for (file, score, why) in ranked {
        take(index, &mut selection, file, score, why);
        let path = index.files[file].path.clone();
        for test in tests_of(index, &path) {
            take(
                index,
                &mut selection,
                test,
                score * 0.9,
                format!("test of {path}"),
            );
        }
    }
    // Most useful first; seeds (score 1) stay ahead of any match of the same score.
    selection.files.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(selection)
}

/// Adds file `file` to `selection` with `why`, or adds `why` to it when it is there already;
/// a file over what is left of the budget is passed over, noted.
fn take(index: &Index, selection: &mut Selection, file: usize, score: f64, why: String) {
    let file = &index.files[file];
    if let Some(chosen) = selection.files.iter_mut().find(|s| s.path == file.path) {
        if !chosen.why.contains(&why) {
            chosen.why.push(why);
        }
        return;
    }
    if selection.used + file.bytes > selection.budget {
        if why == "seed" {
            selection.notes.push(Note {
                path: file.path.clone(),
                reason: "a seed larger than what is left of the budget",
            });
        }
        return;
    }
    selection.used += file.bytes;
    selection.files.push(Selected {
        path: file.path.clone(),
        bytes: file.bytes,
        score,
        why: vec![why],
    });
}

/// The files of `index` that are tests of `path` by the common conventions: `test_x.py`,
/// `x_test.py`, `x_test.go`, `x.test.ts`, `x.spec.js`, `tests/x.rs`, `__tests__/x.js`...
fn tests_of(index: &Index, path: &str) -> Vec<usize> {
    let stem = stem_of(path);
    if stem.is_empty() || is_test(path) {
        return Vec::new();
    }
    index
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.path != path && is_test(&f.path) && test_subject(&f.path) == stem)
        .map(|(i, _)| i)
        .collect()
}

/// What a file is named for: its name without folders and extension (`src/pay.test.ts` gives
/// `pay.test`), or its folder's name for a file that stands for its folder (`mod.rs`,
/// `index.ts`, `__init__.py`, `lib.rs`, `main.go`).
fn stem_of(path: &str) -> &str {
    let mut parts = path.rsplit('/');
    let name = parts.next().unwrap_or(path);
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    match stem {
        "mod" | "index" | "__init__" | "lib" | "main" => parts.next().unwrap_or(stem),
        _ => stem,
    }
}

/// Whether `path` is a test by its name or its folder.
fn is_test(path: &str) -> bool {
    let stem = stem_of(path);
    let folders = path.split('/').rev().skip(1);
    stem.starts_with("test_")
        || ["_test", ".test", ".spec", "_spec"]
            .iter()
            .any(|mark| stem.ends_with(mark))
        || folders
            .into_iter()
            .any(|d| matches!(d, "test" | "tests" | "__tests__" | "spec"))
}

/// What a test file is named for: its stem without the test marks.
fn test_subject(path: &str) -> &str {
    let stem = stem_of(path);
    let stem = stem.strip_prefix("test_").unwrap_or(stem);
    ["_test", ".test", ".spec", "_spec"]
        .iter()
        .find_map(|mark| stem.strip_suffix(mark))
        .unwrap_or(stem)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::index::{IndexedFile, PATH_WEIGHT, terms_of};
    use super::*;

    fn index(files: &[(&str, &str)]) -> Index {
        let files = files
            .iter()
            .map(|(path, content)| {
                let mut terms = HashMap::new();
                for t in terms_of(path) {
                    *terms.entry(t).or_insert(0) += PATH_WEIGHT;
                }
                for t in terms_of(content) {
                    *terms.entry(t).or_insert(0) += 1;
                }
                IndexedFile {
                    path: path.to_string(),
                    bytes: content.len() as u64,
                    length: terms.values().sum(),
                    terms,
                }
            })
            .collect();
        Index {
            files,
            notes: Vec::new(),
        }
    }

    #[test]
    fn seeds_then_matches_then_their_tests_within_the_budget() {
        let index = index(&[
            ("src/pay.py", "def refund(intent): gateway.refund(intent)"),
            (
                "tests/test_pay.py",
                "from src.pay import refund\ndef test_refund(): ...",
            ),
            ("src/gateway.go", "func Refund() {} // the payment gateway"),
            ("src/gateway_test.go", "func TestRefund(t *testing.T) {}"),
            ("src/ui/button.ts", &"x".repeat(5000)),
            ("src/ui/button.test.ts", "test('button')"),
            ("docs/refund.md", &"refund ".repeat(2000)),
        ]);
        let seeds = ["src/ui/button.ts".to_string()];
        let selection = select(
            &index,
            &Request {
                prompt: "Refund through the gateway",
                seeds: &seeds,
                budget: ByteSize(5300),
            },
        )
        .unwrap();
        let chosen: Vec<(&str, &str)> = selection
            .files
            .iter()
            .map(|s| (s.path.as_str(), s.why[0].as_str()))
            .collect();
        assert_eq!(chosen[0], ("src/ui/button.ts", "seed"));
        assert!(
            chosen.contains(&("src/ui/button.test.ts", "test of src/ui/button.ts")),
            "{chosen:?}"
        );
        let go_test = selection
            .files
            .iter()
            .find(|f| f.path == "src/gateway_test.go")
            .unwrap();
        assert!(
            go_test.why.contains(&"test of src/gateway.go".to_string()),
            "{:?}",
            go_test.why
        );
        assert!(
            selection.files.windows(2).all(|w| w[0].score >= w[1].score),
            "most useful first: {chosen:?}"
        );
        // 14 KB of docs do not fit what is left; smaller matches after it still do.
        assert!(
            !chosen.iter().any(|(p, _)| *p == "docs/refund.md"),
            "{chosen:?}"
        );
        assert!(chosen.iter().any(|(p, _)| *p == "src/pay.py"), "{chosen:?}");
        assert!(selection.used <= 5300);
        assert_eq!(
            selection.used,
            selection.files.iter().map(|f| f.bytes).sum::<u64>()
        );
        let pay = selection
            .files
            .iter()
            .find(|f| f.path == "src/pay.py")
            .unwrap();
        assert!(pay.why[0].starts_with("names `refund`"), "{:?}", pay.why);
        assert!(
            selection
                .files
                .iter()
                .all(|f| f.score > 0.0 && f.score <= 1.0)
        );
    }

    #[test]
    fn an_unknown_seed_is_a_clear_error() {
        let index = index(&[("a.py", "x")]);
        let seeds = ["b.py".to_string()];
        let err = select(
            &index,
            &Request {
                prompt: "x",
                seeds: &seeds,
                budget: ByteSize(100),
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "seed `b.py` is not a file of the tree at the base"
        );
    }

    #[test]
    fn tests_are_told_by_their_names_and_folders() {
        for test in [
            "tests/test_pay.py",
            "pay_test.py",
            "pkg/pay_test.go",
            "src/pay.test.ts",
            "src/pay.spec.js",
            "__tests__/pay.js",
            "tests/pay.rs",
        ] {
            assert!(is_test(test), "{test}");
            assert_eq!(test_subject(test), "pay", "{test}");
        }
        // A file that stands for its folder is named for the folder.
        assert_eq!(stem_of("src/pay/mod.rs"), "pay");
        assert_eq!(stem_of("pay/__init__.py"), "pay");
        assert_eq!(test_subject("tests/common/mod.rs"), "common");
        assert!(!is_test("src/pay.py"));
        assert!(!is_test("src/contest.py"));
    }
}
