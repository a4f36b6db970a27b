//! `kiln bench context`: context selection measured on real history. For each repository, the
//! last commits that modify at least two source files (not only tests or docs): at each
//! commit's parent, the commit message is the prompt, and each selector's pick is scored by the
//! share of the commit's changed source files it holds (recall), the share of its pick that the
//! commit changed (precision) and the bytes it picked. kiln is measured with no seed and with
//! one changed file as seed; beside it, in the same run and budget, BM25 over paths and
//! contents, and the seed article's first attempt (the top source folder, in path order).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use git2::{Oid, Repository};

use crate::context::parse::Lang;
use crate::context::{Analysis, Parser, Request, is_test, lexical, select};
use crate::error::Error;
use crate::model::ByteSize;

/// One selector's figures over a repository's commits.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    pub recall: f64,
    pub precision: f64,
    pub bytes: f64,
    pub n: usize,
}

impl Scores {
    fn add(&mut self, picked: &[String], bytes: u64, target: &HashSet<String>) {
        let hit = picked.iter().filter(|p| target.contains(*p)).count() as f64;
        self.recall += hit / target.len().max(1) as f64;
        self.precision += if picked.is_empty() {
            0.0
        } else {
            hit / picked.len() as f64
        };
        self.bytes += bytes as f64;
        self.n += 1;
    }

    /// The means.
    pub fn mean(&self) -> (f64, f64, f64) {
        let n = self.n.max(1) as f64;
        (self.recall / n, self.precision / n, self.bytes / n)
    }
}

/// A repository's figures.
pub struct RepoFigures {
    pub repo: String,
    pub commits: usize,
    pub kiln: Scores,
    pub kiln_seeded: Scores,
    pub bm25: Scores,
    pub bm25_seeded: Scores,
    pub folder: Scores,
    /// Mean time to read a tree, parse it and walk its history with nothing cached (cold); to
    /// read it again with what the first read cached and answer a query (cached, what a second
    /// `kiln context` of that commit does beside starting); to answer one query on a tree read
    /// already (warm, in memory).
    pub cold: Duration,
    pub cached: Duration,
    pub warm: Duration,
    /// Files in the tree at the newest commit measured.
    pub files: usize,
    /// Mean time of one `git grep` of the prompt's first word over the same tree.
    pub grep: Duration,
}

/// A file that counts as source: a language kiln parses, not a test.
fn is_source(path: &str) -> bool {
    Lang::of(path).is_some() && !is_test(path)
}

/// The commits to measure: newest first, not merges, changing at least two source files that
/// existed at the parent.
fn commits(repo: &Repository, n: usize) -> Result<Vec<(Oid, Oid, Vec<String>)>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push_head()?;
    let mut found = Vec::new();
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        if commit.parent_count() != 1 {
            continue;
        }
        let parent = commit.parent(0)?;
        let diff = repo.diff_tree_to_tree(Some(&parent.tree()?), Some(&commit.tree()?), None)?;
        let changed: Vec<String> = diff
            .deltas()
            // Only files that were there before: no selector can pick a file yet to be written.
            .filter(|d| d.status() == git2::Delta::Modified)
            .filter_map(|d| {
                d.new_file()
                    .path()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .filter(|p| is_source(p))
            .collect();
        if changed.len() >= 2 {
            found.push((commit.id(), parent.id(), changed));
            if found.len() == n {
                break;
            }
        }
    }
    Ok(found)
}

/// Files in path order under the top-level folder holding the most source files, cut at the
/// budget: a first attempt with no selection at all.
fn top_folder(analysis: &Analysis, budget: u64) -> (Vec<String>, u64) {
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for f in &analysis.index.files {
        if is_source(&f.path) {
            let top = f.path.split_once('/').map_or("", |(d, _)| d);
            *counts.entry(top).or_default() += 1;
        }
    }
    let Some((top, _)) = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
    else {
        return (Vec::new(), 0);
    };
    let mut files: Vec<&crate::context::index::IndexedFile> = analysis
        .index
        .files
        .iter()
        .filter(|f| {
            // Files at the top when the top holds the most; else those under the folder.
            if top.is_empty() {
                !f.path.contains('/')
            } else {
                f.path.starts_with(&format!("{top}/"))
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    cut(files.into_iter().map(|f| (f.path.clone(), f.bytes)), budget)
}

/// BM25's pick: its ranking, cut at the budget.
fn bm25(analysis: &Analysis, prompt: &str, budget: u64) -> (Vec<String>, u64) {
    let query = lexical::query_terms(prompt);
    let files = &analysis.index.files;
    cut(
        lexical::rank(&analysis.index, &query)
            .into_iter()
            .map(|s| (files[s.file].path.clone(), files[s.file].bytes)),
        budget,
    )
}

fn cut(ranked: impl Iterator<Item = (String, u64)>, budget: u64) -> (Vec<String>, u64) {
    let (mut picked, mut used) = (Vec::new(), 0);
    for (path, bytes) in ranked {
        if used + bytes <= budget {
            used += bytes;
            picked.push(path);
        }
    }
    (picked, used)
}

/// Measures `commits` commits of the repository at `path`; `parser` is the kiln binary.
pub fn context(
    path: &Path,
    commits_wanted: usize,
    budget: ByteSize,
    parser: &Path,
) -> Result<RepoFigures, Error> {
    let repo = Repository::open(path)
        .map_err(|e| Error::Usage(format!("{}: {}", path.display(), e.message())))?;
    // A history kiln cannot walk is the repository given, not a bug of kiln's (exit 2).
    let git = |e: git2::Error| Error::Usage(format!("{}: {}", path.display(), e.message()));
    let picked = commits(&repo, commits_wanted).map_err(git)?;
    let mut figures = RepoFigures {
        repo: path.display().to_string(),
        commits: picked.len(),
        kiln: Scores::default(),
        kiln_seeded: Scores::default(),
        bm25: Scores::default(),
        bm25_seeded: Scores::default(),
        folder: Scores::default(),
        cold: Duration::ZERO,
        cached: Duration::ZERO,
        warm: Duration::ZERO,
        files: 0,
        grep: Duration::ZERO,
    };
    for (commit, parent, changed) in &picked {
        let message = repo.find_commit(*commit).map_err(git)?;
        let prompt = message.message().unwrap_or("").to_string();
        let base = parent.to_string();
        // A cache of this commit's own: the first read is cold, the second reads what it kept.
        // (Its own folder within, made private by the first read as kiln's cache is.)
        let cache = tempfile::tempdir().map_err(Error::io("cannot make a cache folder"))?;
        let folder = cache.path().join("context");
        let parser = Parser {
            exe: parser,
            cache: Some(&folder),
        };
        let started = Instant::now();
        let analysis = Analysis::of_repository(path, Some(&base), Some(&parser))?;
        figures.cold += started.elapsed();
        figures.files = figures.files.max(analysis.index.files.len());
        let target: HashSet<String> = changed.iter().cloned().collect();

        let request = Request {
            prompt: &prompt,
            seeds: &[],
            budget,
        };
        let started = Instant::now();
        let again = Analysis::of_repository(path, Some(&base), Some(&parser))?;
        select(&again, &request)?;
        figures.cached += started.elapsed();
        drop(again);
        let started = Instant::now();
        let selection = select(&analysis, &request)?;
        figures.warm += started.elapsed();
        let paths: Vec<String> = selection.files.iter().map(|f| f.path.clone()).collect();
        figures.kiln.add(&paths, selection.used, &target);

        // One changed file as seed (the first in path order), the others to find.
        let mut sorted = changed.clone();
        sorted.sort();
        let seed = sorted[0].clone();
        let rest: HashSet<String> = sorted[1..].iter().cloned().collect();
        let seeds = [seed.clone()];
        let seeded = Request {
            prompt: &prompt,
            seeds: &seeds,
            budget,
        };
        let selection = select(&analysis, &seeded)?;
        let paths: Vec<String> = selection
            .files
            .iter()
            .map(|f| f.path.clone())
            .filter(|p| *p != seed)
            .collect();
        figures.kiln_seeded.add(&paths, selection.used, &rest);

        let (paths, used) = bm25(&analysis, &prompt, budget.bytes());
        figures.bm25.add(&paths, used, &target);
        let (paths, used) = bm25(&analysis, &format!("{seed} {prompt}"), budget.bytes());
        let paths: Vec<String> = paths.into_iter().filter(|p| *p != seed).collect();
        figures.bm25_seeded.add(&paths, used, &rest);
        let (paths, used) = top_folder(&analysis, budget.bytes());
        figures.folder.add(&paths, used, &target);

        let word = lexical::query_terms(&prompt)
            .into_iter()
            .next()
            .unwrap_or_else(|| "x".into());
        let started = Instant::now();
        let _ = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(path.join(if path.join(".git").exists() {
                ".git"
            } else {
                ""
            }))
            .args(["grep", "-I", "-l", "-i", "-e", &word, &base])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        figures.grep += started.elapsed();
    }
    let n = picked.len().max(1) as u32;
    figures.cold /= n;
    figures.cached /= n;
    figures.warm /= n;
    figures.grep /= n;
    Ok(figures)
}
