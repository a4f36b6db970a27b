//! Context selection: the smallest useful set of a repository's files for a request, most useful
//! first, each with why it is there, cut at a byte budget.
//!
//! The seeds the caller names come first; then files by a blend of two rankings: BM25 of the
//! prompt's terms against paths and contents ([`lexical`]), and nearness in the file graph
//! ([`graph`]: imports resolved as each language does, and names used where another file defines
//! them, read by tree-sitter in a child process under limits, [`parse`]) to the seeds or, with
//! none, to the best matches; then the tests of what was chosen, by naming convention and by
//! import. The repository is input, never code: nothing in it runs, links are not followed,
//! sizes, counts and parse time are capped ([`index`], [`parse`]).

pub mod graph;
pub mod index;
pub mod lexical;
pub mod parse;

use std::path::Path;

use graph::{Graph, Link};

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

/// A repository's tree read for selection: its index, what each parsed source says, and the
/// file graph made of that.
pub struct Analysis {
    pub index: Index,
    pub graph: Graph,
}

/// Files parsed per child process, and the most text one batch carries.
const BATCH_FILES: usize = 500;
const BATCH_BYTES: usize = 8 << 20;

impl Analysis {
    /// Reads the tree at `base` (default: `HEAD`) of the git repository at `repo`. With
    /// `parser` (the kiln binary, run as `kiln __parse` under limits), sources are parsed into
    /// the file graph; a batch whose child fails is ranked by words only, noted. Without, the
    /// graph is empty.
    pub fn of_repository(
        repo: &Path,
        base: Option<&str>,
        parser: Option<&Parser<'_>>,
    ) -> Result<Analysis, ContextError> {
        let repo = Repository::open(repo).map_err(|e| ContextError::Repository {
            path: repo.display().to_string(),
            message: e.message().to_string(),
        })?;
        let rev = base.unwrap_or("HEAD");
        let tree = repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_tree())
            .map_err(|_| ContextError::UnknownBase(rev.to_string()))?;
        let mut index = Index::of_tree(&repo, tree.id())?;
        let mut parsed: Vec<Option<parse::Parsed>> = vec![None; index.files.len()];
        let kept = parser
            .and_then(|p| p.cache)
            .map(|dir| ParseCache::new(dir, tree.id()));
        if let Some(found) = kept.as_ref().and_then(ParseCache::load) {
            for (i, file) in index.files.iter().enumerate() {
                parsed[i] = found.get(&file.path).cloned();
            }
        } else if let Some(Parser { exe, .. }) = parser {
            let mut whole = true;
            let sources: Vec<usize> = (0..index.files.len())
                .filter(|&i| {
                    let file = &index.files[i];
                    parse::Lang::of(&file.path).is_some()
                        && file.bytes as usize <= index::MAX_FILE_BYTES
                })
                .collect();
            let mut batch: Vec<(usize, parse::Source)> = Vec::new();
            let mut bytes = 0;
            for (n, &i) in sources.iter().enumerate() {
                let file = &index.files[i];
                let blob = repo.find_blob(file.id)?;
                let text = String::from_utf8_lossy(blob.content()).into_owned();
                bytes += text.len();
                batch.push((
                    i,
                    parse::Source {
                        path: file.path.clone(),
                        lang: parse::Lang::of(&file.path).expect("filtered to parseable files"),
                        text,
                    },
                ));
                if batch.len() == BATCH_FILES || bytes >= BATCH_BYTES || n + 1 == sources.len() {
                    let (positions, sources): (Vec<usize>, Vec<parse::Source>) =
                        std::mem::take(&mut batch).into_iter().unzip();
                    bytes = 0;
                    match parse::in_child(exe, &sources) {
                        Some(results) => {
                            for (i, result) in positions.into_iter().zip(results) {
                                parsed[i] = Some(result);
                            }
                        }
                        None => {
                            whole = false;
                            index.notes.push(Note {
                                path: format!("({} files from {})", sources.len(), sources[0].path),
                                reason: "the parser failed on them (a crash, or a limit): ranked by words only",
                            })
                        }
                    }
                }
            }
            // Only a whole parse is kept: a failure is tried again next time.
            if let (true, Some(kept)) = (whole, &kept) {
                kept.store(&index, &parsed);
            }
        }
        let graph = Graph::build(&index, &parsed, &index.go_modules);
        Ok(Analysis { index, graph })
    }

    /// An analysis of `index` with no graph: words only.
    pub fn lexical(index: Index) -> Analysis {
        let graph = Graph::build(&index, &vec![None; index.files.len()], &[]);
        Analysis { index, graph }
    }
}

/// How a file in no language kiln parses (docs, data, config) counts against source: a change
/// is mostly to code. Chosen by `kiln bench context` (README).
const NOT_SOURCE: f64 = 0.3;

/// How sources are parsed: by the kiln binary run as `kiln __parse` (under limits), and, with
/// `cache`, what a tree's sources say is kept there so another query of that tree skips parsing.
pub struct Parser<'a> {
    pub exe: &'a Path,
    /// A folder of kiln's own (made 0700; not used when another user could write it).
    pub cache: Option<&'a Path>,
}

/// What the sources of one tree say, kept as JSON under the cache folder, named by the tree and
/// kiln's version (a newer kiln may read sources differently).
struct ParseCache {
    dir: std::path::PathBuf,
    file: std::path::PathBuf,
}

/// The largest cache file read.
const MAX_CACHE_FILE: u64 = 256 << 20;

impl ParseCache {
    fn new(dir: &Path, tree: git2::Oid) -> ParseCache {
        let name = format!("{tree}-{}.json", env!("CARGO_PKG_VERSION"));
        ParseCache {
            dir: dir.to_path_buf(),
            file: dir.join(name),
        }
    }

    /// The kept results by path, when the folder and file are kiln's own and read whole.
    fn load(&self) -> Option<std::collections::HashMap<String, parse::Parsed>> {
        use crate::model::fs::{not_kilns_own, read_bytes_capped};
        if let Some(why) = not_kilns_own(&self.dir, true) {
            if self.dir.exists() {
                tracing::warn!("context cache {} not used: it {why}", self.dir.display());
            }
            return None;
        }
        if not_kilns_own(&self.file, false).is_some() {
            return None;
        }
        let bytes = read_bytes_capped(&self.file, MAX_CACHE_FILE).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps `parsed` (never in a folder that is not kiln's own); a failure to keep it only
    /// costs the next query the parse.
    fn store(&self, index: &Index, parsed: &[Option<parse::Parsed>]) {
        if self.dir.exists() && crate::model::fs::not_kilns_own(&self.dir, true).is_some() {
            return;
        }
        let kept: std::collections::HashMap<&str, &parse::Parsed> = index
            .files
            .iter()
            .zip(parsed)
            .filter_map(|(f, p)| Some((f.path.as_str(), p.as_ref()?)))
            .collect();
        let written = crate::model::fs::create_private_dir(&self.dir).and_then(|()| {
            let json = serde_json::to_vec(&kept).map_err(std::io::Error::other)?;
            crate::model::fs::write_atomic(&self.file, &json)
        });
        if let Err(e) = written {
            tracing::warn!("cannot keep the context cache {}: {e}", self.file.display());
        }
    }
}

/// How many of the best lexical matches start the walk when no seed is given.
const START_MATCHES: usize = 5;

/// Chooses files for `request`: seeds first, then files by a blend of the prompt's words
/// (BM25) and their nearness in the file graph to the seeds (or, with none, to the best
/// matches), each followed by its tests, until the budget is spent (a file that does not fit is
/// passed over for smaller ones after it).
pub fn select(analysis: &Analysis, request: &Request<'_>) -> Result<Selection, ContextError> {
    let index = &analysis.index;
    let by_path = |path: &str| index.files.iter().position(|f| f.path == path);
    let mut seeds = Vec::new();
    for seed in request.seeds {
        seeds.push(by_path(seed).ok_or_else(|| ContextError::UnknownSeed(seed.clone()))?);
    }
    let query = lexical::query_terms(request.prompt);
    let scored = lexical::rank(index, &query);
    let best = scored.first().map_or(1.0, |s| s.score);
    let mut words = vec![0.0; index.files.len()];
    let mut matched: Vec<Vec<String>> = vec![Vec::new(); index.files.len()];
    for s in scored.iter().take(CANDIDATES) {
        words[s.file] = s.score / best;
        matched[s.file] = s.matched.clone();
    }
    let start: Vec<(usize, f64)> = if seeds.is_empty() {
        scored
            .iter()
            .take(START_MATCHES)
            .map(|s| (s.file, s.score / best))
            .collect()
    } else {
        seeds.iter().map(|&i| (i, 1.0)).collect()
    };
    let near = analysis.graph.rank(&start);
    let nearest = near
        .iter()
        .enumerate()
        .filter(|(i, _)| !seeds.contains(i))
        .map(|(_, r)| *r)
        .fold(0.0, f64::max);
    // With seeds the walk starts from what the caller knows, and the prompt's words sort its
    // neighbours; without, it starts from the best word matches and the graph widens them.
    let words_weight = if seeds.is_empty() { 0.3 } else { 0.7 };
    let mut ranked: Vec<(usize, f64)> = (0..index.files.len())
        .filter(|i| !seeds.contains(i))
        .map(|i| {
            let graph = if nearest > 0.0 {
                near[i] / nearest
            } else {
                0.0
            };
            let prior = match parse::Lang::of(&index.files[i].path) {
                Some(_) => 1.0,
                None => NOT_SOURCE,
            };
            (
                i,
                prior * (words_weight * words[i] + (1.0 - words_weight) * graph),
            )
        })
        .filter(|(_, score)| *score > 0.0)
        .collect();
    ranked.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| index.files[a.0].path.cmp(&index.files[b.0].path))
    });
    let top = ranked.first().map_or(1.0, |r| r.1);
    let budget = request.budget.bytes();
    let mut selection = Selection {
        files: Vec::new(),
        budget,
        used: 0,
        notes: Vec::new(),
    };
    let mut chosen: Vec<usize> = Vec::new();
    let mut order: Vec<(usize, f64, Vec<String>)> = seeds
        .iter()
        .map(|&i| (i, 1.0, vec!["seed".to_string()]))
        .collect();
    for (i, score) in ranked {
        let mut why = Vec::new();
        if !matched[i].is_empty() {
            let terms: Vec<String> = matched[i].iter().map(|t| format!("`{t}`")).collect();
            why.push(format!("names {} from the prompt", terms.join(", ")));
        }
        order.push((i, score / top, why));
    }
    let tests = tests_by_subject(index);
    for (file, score, mut why) in order {
        let path = index.files[file].path.clone();
        let present = selection.files.iter().any(|s| s.path == path);
        let fits = selection.used + index.files[file].bytes <= selection.budget;
        // What does not fit is passed over before any work is spent on why it would be there.
        if present || fits {
            if let Some(reason) = linked(analysis, &chosen, &seeds, file) {
                why.push(reason);
            }
            if why.is_empty() {
                why.push("near the seeds in the file graph".into());
            }
        }
        if take(index, &mut selection, file, score, why) {
            chosen.push(file);
        } else if !present {
            continue;
        }
        if is_test(&path) {
            continue;
        }
        for &test in tests.get(stem_of(&path)).into_iter().flatten() {
            if test != file
                && take(
                    index,
                    &mut selection,
                    test,
                    score * 0.9,
                    vec![format!("test of {path}")],
                )
            {
                chosen.push(test);
            }
        }
    }
    // Most useful first; seeds (score 1) stay ahead of any file of the same score.
    selection.files.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(selection)
}

/// How `file` is tied to a file chosen before it (or a seed), in words, if it is.
fn linked(analysis: &Analysis, chosen: &[usize], seeds: &[usize], file: usize) -> Option<String> {
    let files = &analysis.index.files;
    let out = &analysis.graph.out;
    for &other in seeds.iter().chain(chosen) {
        if other == file {
            continue;
        }
        let from = &files[other].path;
        for (to, link) in &out[other] {
            if *to == file {
                return Some(match link {
                    Link::Imports => format!("imported by {from}"),
                    Link::Uses(name) => format!("defines `{name}` used by {from}"),
                });
            }
        }
        for (to, link) in &out[file] {
            if *to == other {
                return Some(match link {
                    Link::Imports => format!("imports {from}"),
                    Link::Uses(name) => format!("uses `{name}` from {from}"),
                });
            }
        }
    }
    None
}

/// Adds file `file` to `selection` for `why`, or adds `why` to it when it is there already;
/// a file over what is left of the budget is passed over, noted if it is a seed. True when it
/// was added now.
fn take(
    index: &Index,
    selection: &mut Selection,
    file: usize,
    score: f64,
    why: Vec<String>,
) -> bool {
    let file = &index.files[file];
    if let Some(chosen) = selection.files.iter_mut().find(|s| s.path == file.path) {
        for reason in why {
            if !chosen.why.contains(&reason) {
                chosen.why.push(reason);
            }
        }
        return false;
    }
    if selection.used + file.bytes > selection.budget {
        if why.iter().any(|w| w == "seed") {
            selection.notes.push(Note {
                path: file.path.clone(),
                reason: "a seed larger than what is left of the budget",
            });
        }
        return false;
    }
    selection.used += file.bytes;
    selection.files.push(Selected {
        path: file.path.clone(),
        bytes: file.bytes,
        score,
        why,
    });
    true
}

/// The test files of `index` by what they are named for, by the common conventions:
/// `test_x.py`, `x_test.py`, `x_test.go`, `x.test.ts`, `x.spec.js`, `tests/x.rs`,
/// `__tests__/x.js`... are tests of the files named `x`.
fn tests_by_subject(index: &Index) -> std::collections::HashMap<&str, Vec<usize>> {
    let mut tests: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, file) in index.files.iter().enumerate() {
        if is_test(&file.path) && !test_subject(&file.path).is_empty() {
            tests.entry(test_subject(&file.path)).or_default().push(i);
        }
    }
    tests
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
pub fn is_test(path: &str) -> bool {
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
                    id: git2::Oid::ZERO_SHA1,
                    bytes: content.len() as u64,
                    length: terms.values().sum(),
                    terms,
                }
            })
            .collect();
        Index {
            files,
            notes: Vec::new(),
            go_modules: Vec::new(),
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
            &Analysis::lexical(index),
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
    fn a_failing_parser_leaves_words_to_rank_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        std::fs::write(dir.path().join("refund.py"), "def refund(): pass\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("refund.py")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@localhost").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "x", &tree, &[])
            .unwrap();
        let analysis = Analysis::of_repository(
            dir.path(),
            None,
            Some(&Parser {
                exe: Path::new("/bin/false"),
                cache: None,
            }),
        )
        .unwrap();
        assert_eq!(analysis.index.notes.len(), 1);
        assert!(analysis.index.notes[0].reason.contains("the parser failed"));
        let request = Request {
            prompt: "refund",
            seeds: &[],
            budget: ByteSize(1000),
        };
        let selection = select(&analysis, &request).unwrap();
        assert_eq!(selection.files[0].path, "refund.py");
    }

    #[test]
    fn an_unknown_seed_is_a_clear_error() {
        let index = index(&[("a.py", "x")]);
        let seeds = ["b.py".to_string()];
        let err = select(
            &Analysis::lexical(index),
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
