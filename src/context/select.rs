//! Choosing files: the seeds, then a blend of the prompt's words and nearness in the file graph,
//! each file followed by its tests, cut at the budget, every pick with why.

use super::analysis::Analysis;
use super::graph::Link;
use super::history::RECENT_COMMITS;
use super::index::{Index, Note};
use super::naming::{is_test, stem_of, tests_by_subject};
use super::paths::{folder_nearness, folder_of};
use super::{ContextError, Request, Selected, Selection, lexical, parse};

/// How many of the best lexical matches are considered for the budget.
const CANDIDATES: usize = 200;

/// How a file in no language kiln parses (docs, data, config) counts against source: a change
/// is mostly to code. Chosen by `kiln bench context` (README).
const NOT_SOURCE: f64 = 0.3;

/// A file's tests by naming convention rank at this share of its own score. Chosen by `kiln
/// bench context`, like the weights below.
const TEST_SHARE: f64 = 0.5;

/// How much the prompt's words count against nearness in the graph, with no seed (the words
/// start the walk) and with seeds (the words sort the seeds' neighbours).
const WORDS_WEIGHT: f64 = 0.3;
const WORDS_WEIGHT_SEEDED: f64 = 0.7;

/// A file larger than [`SIZE_FREE`] ranks lower by its size to this power: of two files about
/// as likely to be needed, the budget holds more of the smaller ones.
const SIZE_POWER: f64 = 0.2;
const SIZE_FREE: u64 = 4096;

/// What the history says of a file being worked on counts this much beside the words and the
/// graph: half for how near its newest change is to the base (1 for the base commit itself,
/// 1/(1+n) for n commits back), half for how many of the newest commits changed it (up to
/// [`RECENT_MANY`]).
const RECENT_WEIGHT: f64 = 0.2;
const RECENT_MANY: u32 = 10;

/// With seeds, a file counts this much more the nearer its folder is to a seed's (see
/// [`folder_nearness`]): a change stays near where it starts (an analyzer and its test data, a
/// handler and its neighbours).
const FOLDER_WEIGHT: f64 = 0.2;

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
    let words_weight = if seeds.is_empty() {
        WORDS_WEIGHT
    } else {
        WORDS_WEIGHT_SEEDED
    };
    // The seeds' folders, each once (many seeds often share one), with a seed in it.
    let mut seed_folders: Vec<(&str, usize)> = Vec::new();
    for &seed in &seeds {
        let dir = folder_of(&index.files[seed].path);
        if !seed_folders.iter().any(|(d, _)| *d == dir) {
            seed_folders.push((dir, seed));
        }
    }
    // Each file's score, and what weighs most in it when that is not its words or the graph.
    let mut ranked: Vec<(usize, f64, Lead)> = (0..index.files.len())
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
            let size =
                (index.files[i].bytes.max(SIZE_FREE) as f64 / SIZE_FREE as f64).powf(-SIZE_POWER);
            let words = words_weight * words[i];
            let graph = (1.0 - words_weight) * graph;
            let history = RECENT_WEIGHT * recency(analysis.recent[i]);
            let path = &index.files[i].path;
            let (folder, nearest_seed) = seed_folders
                .iter()
                .map(|&(dir, s)| (FOLDER_WEIGHT * folder_nearness(folder_of(path), dir), s))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or((0.0, 0));
            let lead = if history > words.max(graph).max(folder) {
                Lead::History
            } else if folder > words.max(graph) {
                Lead::Folder(nearest_seed)
            } else {
                Lead::Other
            };
            (i, size * prior * (words + graph + history + folder), lead)
        })
        .filter(|(_, score, _)| *score > 0.0)
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
    let mut order: Vec<(usize, f64, Vec<String>, Lead)> = seeds
        .iter()
        .map(|&i| (i, 1.0, vec!["seed".to_string()], Lead::Other))
        .collect();
    for (i, score, lead) in ranked {
        let mut why = Vec::new();
        if !matched[i].is_empty() {
            let terms: Vec<String> = matched[i].iter().map(|t| format!("`{t}`")).collect();
            why.push(format!("names {} from the prompt", terms.join(", ")));
        }
        order.push((i, score / top, why, lead));
    }
    let tests = tests_by_subject(index);
    // Tests of chosen files wait here, most useful last, for their turn by score.
    let mut waiting: Vec<(usize, f64, Vec<String>, Lead)> = Vec::new();
    let mut order = order.into_iter().peekable();
    loop {
        let next_score = order.peek().map(|(_, score, _, _)| *score);
        let (file, score, mut why, lead) = match (waiting.last(), next_score) {
            (Some(test), Some(score)) if test.1 > score => waiting.pop().expect("just seen"),
            (Some(_), None) => waiting.pop().expect("just seen"),
            _ => match order.next() {
                Some(next) => next,
                None => break,
            },
        };
        let path = index.files[file].path.clone();
        let present = selection.files.iter().any(|s| s.path == path);
        let fits = selection.used + index.files[file].bytes <= selection.budget;
        // What does not fit is passed over before any work is spent on why it would be there.
        if present || fits {
            if let Some(reason) = lead_reason(analysis, file, lead) {
                why.push(reason);
            }
            if let Some(reason) = linked(analysis, &chosen, &seeds, file)
                && !why.contains(&reason)
            {
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
            if test != file {
                let score = score * TEST_SHARE;
                let at = waiting.partition_point(|w| w.1 < score);
                waiting.insert(
                    at,
                    (test, score, vec![format!("test of {path}")], Lead::Other),
                );
            }
        }
    }
    // Most useful first; seeds (score 1) stay ahead of any file of the same score.
    selection.files.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(selection)
}

/// What weighs most in a file's score when it is neither the prompt's words nor the file graph.
#[derive(Clone, Copy)]
enum Lead {
    History,
    /// Its folder's nearness to this seed's.
    Folder(usize),
    Other,
}

/// The reason `lead` gives for `file`, if it gives one.
fn lead_reason(analysis: &Analysis, file: usize, lead: Lead) -> Option<String> {
    match (lead, analysis.recent[file]) {
        (Lead::History, Some((_, count))) if count > 0 => Some(format!(
            "changed in {count} of the last {RECENT_COMMITS} commits"
        )),
        (Lead::History, Some((back, _))) => {
            Some(format!("last changed {back} commits before the base"))
        }
        (Lead::Folder(seed), _) => Some(format!(
            "near {} in the tree",
            analysis.index.files[seed].path
        )),
        _ => None,
    }
}

/// How recently and often the history changed a file, from 0 (not in the history walked) to 1.
fn recency(recent: Option<(u32, u32)>) -> f64 {
    let Some((back, count)) = recent else {
        return 0.0;
    };
    0.5 / f64::from(back + 1) + 0.5 * f64::from(count.min(RECENT_MANY)) / f64::from(RECENT_MANY)
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
                    Link::ImportsPackage(_) => format!("in a package imported by {from}"),
                    Link::SamePackage(_) => format!("in the package of {from}"),
                    Link::Uses(name) => format!("defines `{name}` used by {from}"),
                    Link::ChangedWith(n) => together(*n, from),
                });
            }
        }
        for (to, link) in &out[file] {
            if *to == other {
                return Some(match link {
                    Link::Imports => format!("imports {from}"),
                    Link::ImportsPackage(_) => format!("imports the package of {from}"),
                    Link::SamePackage(_) => format!("in the package of {from}"),
                    Link::Uses(name) => format!("uses `{name}` from {from}"),
                    Link::ChangedWith(n) => together(*n, from),
                });
            }
        }
    }
    None
}

fn together(n: u32, other: &str) -> String {
    let commits = if n == 1 { "commit" } else { "commits" };
    format!("changed with {other} in {n} recent {commits}")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ByteSize;

    #[test]
    fn seeds_then_matches_then_their_tests_within_the_budget() {
        let index = Index::of_texts(&[
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
    fn a_file_the_history_is_working_on_ranks_higher_and_says_so() {
        let index = Index::of_texts(&[
            ("src/a.py", "def refund(): pass"),
            ("src/b.py", "def refund(): pass"),
            ("src/c.py", "def other(): pass"),
            ("src/d.py", "def other(): pass"),
        ]);
        let mut analysis = Analysis::lexical(index);
        // b.py changed by the base commit and in 3 of the last 50; c.py 80 commits back.
        analysis.recent[1] = Some((0, 3));
        analysis.recent[2] = Some((80, 0));
        let selection = select(
            &analysis,
            &Request {
                prompt: "refund",
                seeds: &[],
                budget: ByteSize(1000),
            },
        )
        .unwrap();
        let chosen: Vec<&str> = selection.files.iter().map(|f| f.path.as_str()).collect();
        // Of two files the words cannot tell apart, the one being worked on comes first; a file
        // with no tie but an old change still ranks, and says why; d.py has nothing.
        assert_eq!(chosen, ["src/b.py", "src/a.py", "src/c.py"]);
        assert_eq!(
            selection.files[2].why,
            ["last changed 80 commits before the base"]
        );
        assert!(selection.files[0].why[0].starts_with("names `refund`"));
    }

    #[test]
    fn with_a_seed_files_near_it_in_the_tree_come_first_and_say_so() {
        let index = Index::of_texts(&[
            ("pass/lint/lint.go", "package lint"),
            ("pass/lint/testdata/a.go", "package a"),
            ("pass/other/other.go", "package other"),
            ("zz/far.go", "package far"),
        ]);
        let seeds = ["pass/lint/lint.go".to_string()];
        let selection = select(
            &Analysis::lexical(index),
            &Request {
                prompt: "fix it",
                seeds: &seeds,
                budget: ByteSize(1000),
            },
        )
        .unwrap();
        let chosen: Vec<&str> = selection.files.iter().map(|f| f.path.as_str()).collect();
        // Its test data (2 of 3 folders shared), then a sibling analyzer (1 of 2); a file in
        // another top folder has nothing to rank by.
        assert_eq!(
            chosen,
            [
                "pass/lint/lint.go",
                "pass/lint/testdata/a.go",
                "pass/other/other.go"
            ]
        );
        assert_eq!(
            selection.files[1].why,
            ["near pass/lint/lint.go in the tree"]
        );
    }

    #[test]
    fn an_unknown_seed_is_a_clear_error() {
        let index = Index::of_texts(&[("a.py", "x")]);
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
}
