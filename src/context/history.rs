//! What changed together: pairs of files the repository's recent history changed in one commit.
//! A change to one file often needs one to another that no import shows (a handler and its
//! route table, a type and its serializer); the commits before the base say which.
//!
//! It also says which files are being worked on: a file the last few commits changed is more
//! likely to change again than one untouched for years.
//!
//! History is input like the tree: the walk is capped in commits and time, and a commit that
//! changes many files (a rename, a reformat) says nothing of which belong together, so it is
//! left out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use git2::{DiffOptions, Oid, Repository, Sort};
use serde::{Deserialize, Serialize};

use super::index::Index;

/// The most commits walked back from the base.
pub const MAX_COMMITS: usize = 1000;
/// A commit changing more indexed files than this is not counted.
pub const MAX_FILES_PER_COMMIT: usize = 12;
/// The walk stops after this long, with what it has.
pub const MAX_WALK: Duration = Duration::from_secs(5);
/// How many of the newest commits count a file's recent changes.
pub const RECENT_COMMITS: u32 = 50;

/// Files changed together: each pair of paths (in index order) with the number of commits that
/// changed both, in index order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CoChange {
    pub pairs: Vec<(String, String, u32)>,
    /// Each file changed in the walk, in index order: how many commits back from the base its
    /// newest change is (0: the base commit itself), and how many of the newest
    /// [`RECENT_COMMITS`] changed it. A commit too wide for pairs still counts here, unless it
    /// changes more than four times [`MAX_FILES_PER_COMMIT`] paths (a reformat says nothing).
    pub recent: Vec<(String, u32, u32)>,
    /// Commits read, and whether a cap ended the walk before the history did.
    pub commits: usize,
    pub capped: bool,
}

impl CoChange {
    /// The pairs of `index`'s files changed together by the non-merge commits up to and
    /// including `commit` (files no longer in the tree are left out).
    pub fn of_history(
        repo: &Repository,
        commit: Oid,
        index: &Index,
    ) -> Result<CoChange, git2::Error> {
        let positions: HashMap<&str, usize> = index.positions();
        let mut pairs: HashMap<(usize, usize), u32> = HashMap::new();
        let mut recent: HashMap<usize, (u32, u32)> = HashMap::new();
        let started = Instant::now();
        let mut walk = repo.revwalk()?;
        walk.set_sorting(Sort::TIME)?;
        walk.push(commit)?;
        let mut found = CoChange::default();
        let mut options = DiffOptions::new();
        // Which paths changed is all that is asked: no blob is read.
        options.skip_binary_check(true);
        for oid in walk {
            if found.commits == MAX_COMMITS || started.elapsed() > MAX_WALK {
                found.capped = true;
                break;
            }
            let commit = repo.find_commit(oid?)?;
            if commit.parent_count() != 1 {
                continue;
            }
            let back = found.commits as u32;
            found.commits += 1;
            let parent = commit.parent(0)?.tree()?;
            let diff =
                repo.diff_tree_to_tree(Some(&parent), Some(&commit.tree()?), Some(&mut options))?;
            if diff.deltas().len() > MAX_FILES_PER_COMMIT * 4 {
                continue;
            }
            let mut changed: Vec<usize> = diff
                .deltas()
                .filter_map(|d| d.new_file().path()?.to_str())
                .filter_map(|p| positions.get(p).copied())
                .collect();
            changed.sort_unstable();
            changed.dedup();
            for &file in &changed {
                let (_, count) = recent.entry(file).or_insert((back, 0));
                if back < RECENT_COMMITS {
                    *count += 1;
                }
            }
            if changed.len() < 2 || changed.len() > MAX_FILES_PER_COMMIT {
                continue;
            }
            for (n, &a) in changed.iter().enumerate() {
                for &b in &changed[n + 1..] {
                    *pairs.entry((a, b)).or_insert(0) += 1;
                }
            }
        }
        let mut pairs: Vec<((usize, usize), u32)> = pairs.into_iter().collect();
        pairs.sort_unstable();
        found.pairs = pairs
            .into_iter()
            .map(|((a, b), n)| (index.files[a].path.clone(), index.files[b].path.clone(), n))
            .collect();
        let mut recent: Vec<(usize, (u32, u32))> = recent.into_iter().collect();
        recent.sort_unstable();
        found.recent = recent
            .into_iter()
            .map(|(file, (back, count))| (index.files[file].path.clone(), back, count))
            .collect();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn commit(repo: &Repository, files: &[(&str, &str)], message: &str) -> Oid {
        let root = repo.workdir().unwrap();
        let mut index = repo.index().unwrap();
        for (path, text) in files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
            index.add_path(Path::new(path)).unwrap();
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        // A second after its parent: the walk orders commits by time.
        let when = parents
            .first()
            .map_or(1_700_000_000, |p| p.time().seconds() + 1);
        let sig = git2::Signature::new("t", "t@localhost", &git2::Time::new(when, 0)).unwrap();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .unwrap()
    }

    #[test]
    fn pairs_count_commits_that_changed_both_and_skip_wide_ones() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        commit(&repo, &[("README", "x")], "root");
        let wide: Vec<(String, String)> = (0..=MAX_FILES_PER_COMMIT)
            .map(|i| (format!("f{i}.py"), "0".to_string()))
            .collect();
        let wide: Vec<(&str, &str)> = wide.iter().map(|(p, t)| (&**p, &**t)).collect();
        commit(&repo, &wide, "everything");
        commit(&repo, &[("f0.py", "1"), ("f1.py", "1")], "pair");
        let head = commit(
            &repo,
            &[("f0.py", "2"), ("f1.py", "2"), ("f2.py", "2")],
            "three",
        );
        let tree = repo.find_commit(head).unwrap().tree_id();
        let index = Index::of_tree(&repo, tree).unwrap();
        let found = CoChange::of_history(&repo, head, &index).unwrap();
        // The root commit has no parent to compare with; the wide one is read, not counted.
        assert_eq!(found.commits, 3);
        assert!(!found.capped);
        let pair = |a: &str, b: &str, n: u32| (a.to_string(), b.to_string(), n);
        assert_eq!(
            found.pairs,
            [
                pair("f0.py", "f1.py", 2),
                pair("f0.py", "f2.py", 1),
                pair("f1.py", "f2.py", 1)
            ]
        );
        // The newest commit is 0 back; a wide commit still says its files were worked on; the
        // root commit, with no parent to compare with, does not.
        let recent = |path: &str| {
            let found = found.recent.iter().find(|(p, _, _)| p == path);
            found.map(|(_, back, count)| (*back, *count))
        };
        assert_eq!(recent("f0.py"), Some((0, 3)));
        assert_eq!(recent("f2.py"), Some((0, 2)));
        assert_eq!(recent("f3.py"), Some((2, 1)));
        assert_eq!(recent("README"), None);
        assert_eq!(found.recent.len(), MAX_FILES_PER_COMMIT + 1);
    }
}
