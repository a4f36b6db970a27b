//! The typed diff: what an attempt changed, file by file and line by line, computed by git2
//! between two trees. Content is shown lossily as UTF-8; binary files carry no lines.

use git2::{Delta, DiffFindOptions, DiffFormat, DiffOptions, Oid, Patch, Repository};

use crate::model::{Diff, FileDiff, FileStatus, Hunk, Line, LineKind};

/// One path's blob before and after, for telling whether a later attempt undid an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobChange {
    pub path: String,
    pub old: Oid,
    pub new: Oid,
}

fn git_diff<'r>(repo: &'r Repository, old: Oid, new: Oid) -> Result<git2::Diff<'r>, git2::Error> {
    let old = repo.find_tree(old)?;
    let new = repo.find_tree(new)?;
    let mut opts = DiffOptions::new();
    opts.context_lines(3).include_typechange(true);
    let mut diff = repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))?;
    diff.find_similar(Some(DiffFindOptions::new().renames(true)))?;
    Ok(diff)
}

fn path_of(file: &git2::DiffFile<'_>) -> String {
    file.path_bytes()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default()
}

fn mode_of(file: &git2::DiffFile<'_>) -> Option<String> {
    file.exists()
        .then(|| format!("{:o}", u32::from(file.mode())))
}

/// The typed diff from tree `old` to tree `new`, and the same as a unified patch.
pub fn diff_trees(repo: &Repository, old: Oid, new: Oid) -> Result<(Diff, String), git2::Error> {
    typed(&git_diff(repo, old, new)?)
}

/// The typed diff of a unified patch (as `git diff` writes it).
pub fn parse_patch(patch: &[u8]) -> Result<Diff, git2::Error> {
    Ok(typed(&git2::Diff::from_buffer(patch)?)?.0)
}

/// The typed diff between two revisions of a repository on this machine.
pub fn diff_revisions(repo: &std::path::Path, base: &str, head: &str) -> Result<Diff, git2::Error> {
    let repo = Repository::open(repo)?;
    let tree = |rev: &str| -> Result<Oid, git2::Error> {
        Ok(repo.revparse_single(rev)?.peel_to_tree()?.id())
    };
    Ok(diff_trees(&repo, tree(base)?, tree(head)?)?.0)
}

fn typed(diff: &git2::Diff<'_>) -> Result<(Diff, String), git2::Error> {
    let mut out = Diff::default();
    for index in 0..diff.deltas().len() {
        let Some(patch) = Patch::from_diff(diff, index)? else {
            continue;
        };
        let delta = patch.delta();
        let status = match delta.status() {
            Delta::Added => FileStatus::Added,
            Delta::Deleted => FileStatus::Deleted,
            Delta::Renamed => FileStatus::Renamed,
            Delta::Copied => FileStatus::Copied,
            Delta::Typechange => FileStatus::TypeChanged,
            _ => FileStatus::Modified,
        };
        let (old_file, new_file) = (delta.old_file(), delta.new_file());
        let path = if status == FileStatus::Deleted {
            path_of(&old_file)
        } else {
            path_of(&new_file)
        };
        let old_path =
            matches!(status, FileStatus::Renamed | FileStatus::Copied).then(|| path_of(&old_file));
        let mut file = FileDiff {
            path,
            old_path,
            status,
            old_mode: mode_of(&old_file),
            new_mode: mode_of(&new_file),
            binary: delta.flags().is_binary(),
            additions: 0,
            deletions: 0,
            hunks: Vec::new(),
        };
        for h in 0..patch.num_hunks() {
            let (hunk, line_count) = patch.hunk(h)?;
            let mut lines = Vec::with_capacity(line_count);
            for l in 0..line_count {
                let line = patch.line_in_hunk(h, l)?;
                let kind = match line.origin() {
                    '+' => LineKind::Added,
                    '-' => LineKind::Removed,
                    ' ' => LineKind::Context,
                    _ => continue,
                };
                match kind {
                    LineKind::Added => file.additions += 1,
                    LineKind::Removed => file.deletions += 1,
                    LineKind::Context => {}
                }
                let content = String::from_utf8_lossy(line.content());
                lines.push(Line {
                    kind,
                    old_line: line.old_lineno(),
                    new_line: line.new_lineno(),
                    content: content.strip_suffix('\n').unwrap_or(&content).to_string(),
                });
            }
            file.hunks.push(Hunk {
                header: String::from_utf8_lossy(hunk.header())
                    .trim_end()
                    .to_string(),
                old_start: hunk.old_start(),
                old_lines: hunk.old_lines(),
                new_start: hunk.new_start(),
                new_lines: hunk.new_lines(),
                lines,
            });
        }
        out.stats.additions += file.additions;
        out.stats.deletions += file.deletions;
        out.files.push(file);
    }
    out.stats.files_changed = out.files.len();
    let mut text = Vec::new();
    diff.print(DiffFormat::Patch, |_, _, line| {
        if matches!(line.origin(), '+' | '-' | ' ') {
            text.push(line.origin() as u8);
        }
        text.extend_from_slice(line.content());
        true
    })?;
    Ok((out, String::from_utf8_lossy(&text).into_owned()))
}

/// Per path, the blob before and after, from tree `old` to tree `new` (no rename pairing, so
/// a revert shows as the exact inverse of the change it undoes).
pub fn blob_changes(repo: &Repository, old: Oid, new: Oid) -> Result<Vec<BlobChange>, git2::Error> {
    let (old, new) = (repo.find_tree(old)?, repo.find_tree(new)?);
    let mut opts = DiffOptions::new();
    opts.include_typechange(true);
    let diff = repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))?;
    Ok(diff
        .deltas()
        .map(|d| BlobChange {
            path: if d.new_file().exists() {
                path_of(&d.new_file())
            } else {
                path_of(&d.old_file())
            },
            old: d.old_file().id(),
            new: d.new_file().id(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(repo: &Repository, files: &[(&str, &str, u32)]) -> Oid {
        let mut index = git2::Index::new().unwrap();
        for (path, content, mode) in files {
            let oid = repo.blob(content.as_bytes()).unwrap();
            crate::workspace::tree_tar::add_entry(&mut index, path.as_bytes(), oid, *mode).unwrap();
        }
        index.write_tree_to(repo).unwrap()
    }

    #[test]
    fn types_every_kind_of_change_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let long = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\n";
        let old = tree(
            &repo,
            &[
                ("keep.txt", "a\nb\nc\n", 0o100644),
                ("gone.txt", "x\n", 0o100644),
                ("move.txt", long, 0o100644),
                ("run.sh", "echo\n", 0o100644),
            ],
        );
        let new = tree(
            &repo,
            &[
                ("keep.txt", "a\nB\nc\n", 0o100644),
                ("new.bin", "\0\x01", 0o100644),
                ("moved.txt", long, 0o100644),
                ("run.sh", "echo\n", 0o100755),
            ],
        );
        let (diff, patch) = diff_trees(&repo, old, new).unwrap();
        let find = |p: &str| diff.files.iter().find(|f| f.path == p).unwrap();
        assert_eq!(find("gone.txt").status, FileStatus::Deleted);
        assert_eq!(find("new.bin").status, FileStatus::Added);
        assert!(find("new.bin").binary);
        assert_eq!(find("moved.txt").status, FileStatus::Renamed);
        assert_eq!(find("moved.txt").old_path.as_deref(), Some("move.txt"));
        let mode = find("run.sh");
        assert_eq!(
            (mode.old_mode.as_deref(), mode.new_mode.as_deref()),
            (Some("100644"), Some("100755"))
        );
        let keep = find("keep.txt");
        let added: Vec<_> = keep.hunks[0]
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::Added)
            .collect();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].content, "B");
        assert_eq!(added[0].new_line, Some(2));
        assert_eq!(diff.stats.files_changed, 5);
        assert!(patch.contains("+B\n") && patch.contains("-b\n"), "{patch}");
    }
}
