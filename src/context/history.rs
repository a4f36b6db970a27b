//! What changed together: pairs of files the repository's recent history changed in one commit.
//! A change to one file often needs one to another that no import shows (a handler and its
//! route table, a type and its serializer); the commits before the base say which.
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

/// Files changed together: each pair of paths (in index order) with the number of commits that
/// changed both, in index order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CoChange {
    pub pairs: Vec<(String, String, u32)>,
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
        let sig = git2::Signature::now("t", "t@localhost").unwrap();
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
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
    }
}
