//! The typed diff: what an attempt changed, file by file and line by line, computed by git2
//! between two trees. Content is shown lossily as UTF-8; binary files carry no lines.

use git2::{Delta, DiffFindOptions, DiffOptions, Oid, Patch, Repository};

use crate::model::{ByteSize, Diff, FileDiff, FileStatus, Hunk, Line, LineKind};

/// One path's blob before and after, for telling whether a later attempt undid an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobChange {
    pub path: String,
    pub old: Oid,
    pub new: Oid,
}

/// The size of the blob `id`, read from its header (never its content); 0 for what the
/// database lacks (a submodule's commit, the absent side of an addition).
fn blob_size(odb: &git2::Odb<'_>, id: Oid) -> u64 {
    if id.is_zero() {
        return 0;
    }
    odb.read_header(id).map_or(0, |(size, _)| size as u64)
}

/// The larger side of the change at `index`.
fn larger_side(odb: &git2::Odb<'_>, delta: &git2::DiffDelta<'_>) -> u64 {
    blob_size(odb, delta.old_file().id()).max(blob_size(odb, delta.new_file().id()))
}

fn git_diff<'r>(
    repo: &'r Repository,
    old: Oid,
    new: Oid,
    budget: u64,
) -> Result<git2::Diff<'r>, git2::Error> {
    let old = repo.find_tree(old)?;
    let new = repo.find_tree(new)?;
    let mut opts = DiffOptions::new();
    opts.context_lines(3).include_typechange(true);
    let mut diff = repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))?;
    // Finding renames reads both sides of every added and deleted file whole: not when one of
    // them is larger than the gate reads (it is listed without its lines anyway).
    let odb = repo.odb()?;
    if diff.deltas().all(|d| larger_side(&odb, &d) <= budget) {
        diff.find_similar(Some(DiffFindOptions::new().renames(true)))?;
    }
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

/// The typed diff from tree `old` to tree `new`, and the same as a unified patch, holding at
/// most `budget` bytes of patch: a file with a side larger than that, and every file after the
/// patch passed it, is listed with `omitted` set and no lines (its content is never read), so
/// memory stays bounded whatever the trees hold.
pub fn diff_trees(
    repo: &Repository,
    old: Oid,
    new: Oid,
    budget: ByteSize,
) -> Result<(Diff, String), git2::Error> {
    let budget = budget.bytes();
    typed(repo, &git_diff(repo, old, new, budget)?, budget)
}

/// The typed diff of a unified patch (as `git diff` writes it), whole: the patch was read
/// with a cap already.
pub fn parse_patch(patch: &[u8]) -> Result<Diff, git2::Error> {
    let diff = git2::Diff::from_buffer(patch)?;
    let mut out = Diff::default();
    for index in 0..diff.deltas().len() {
        if let Some(patch) = Patch::from_diff(&diff, index)? {
            out.files.push(file_diff(&patch)?);
        }
    }
    Ok(summed(out))
}

/// The typed diff between two revisions of a repository on this machine, at most `budget`
/// bytes of patch (see [`diff_trees`]).
pub fn diff_revisions(
    repo: &std::path::Path,
    base: &str,
    head: &str,
    budget: ByteSize,
) -> Result<Diff, git2::Error> {
    let repo = Repository::open(repo)?;
    let tree = |rev: &str| -> Result<Oid, git2::Error> {
        Ok(repo.revparse_single(rev)?.peel_to_tree()?.id())
    };
    Ok(diff_trees(&repo, tree(base)?, tree(head)?, budget)?.0)
}

fn typed(
    repo: &Repository,
    diff: &git2::Diff<'_>,
    budget: u64,
) -> Result<(Diff, String), git2::Error> {
    let odb = repo.odb()?;
    let mut out = Diff::default();
    let mut text = Vec::new();
    let too_large = format!("larger than the {} the gate reads", ByteSize(budget));
    let past = format!(
        "past the first {} of change the gate reads",
        ByteSize(budget)
    );
    for (index, delta) in diff.deltas().enumerate() {
        if larger_side(&odb, &delta) > budget {
            out.files.push(omitted(&delta, too_large.clone()));
            continue;
        }
        if text.len() as u64 >= budget {
            out.files.push(omitted(&delta, past.clone()));
            continue;
        }
        let Some(mut patch) = Patch::from_diff(diff, index)? else {
            continue;
        };
        let patch_text = patch.to_buf()?;
        if (text.len() + patch_text.len()) as u64 > budget {
            out.files.push(omitted(&delta, past.clone()));
            continue;
        }
        let file = file_diff(&patch)?;
        text.extend_from_slice(&patch_text);
        out.files.push(file);
    }
    Ok((summed(out), String::from_utf8_lossy(&text).into_owned()))
}

/// The stats of `diff` from its files.
fn summed(mut diff: Diff) -> Diff {
    diff.stats.files_changed = diff.files.len();
    diff.stats.additions = diff.files.iter().map(|f| f.additions).sum();
    diff.stats.deletions = diff.files.iter().map(|f| f.deletions).sum();
    diff
}

/// What the delta says of a file whose content is not read: paths, status, modes.
fn file_header(delta: &git2::DiffDelta<'_>) -> FileDiff {
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
    FileDiff {
        path,
        old_path,
        status,
        old_mode: mode_of(&old_file),
        new_mode: mode_of(&new_file),
        binary: delta.flags().is_binary(),
        additions: 0,
        deletions: 0,
        hunks: Vec::new(),
        omitted: None,
    }
}

fn omitted(delta: &git2::DiffDelta<'_>, why: String) -> FileDiff {
    FileDiff {
        omitted: Some(why),
        ..file_header(delta)
    }
}

/// One file of the typed diff, every line of `patch`.
fn file_diff(patch: &Patch<'_>) -> Result<FileDiff, git2::Error> {
    let mut file = file_header(&patch.delta());
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
    Ok(file)
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
        let (diff, patch) = diff_trees(&repo, old, new, ByteSize::mib(4)).unwrap();
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

    #[test]
    fn past_the_budget_files_are_listed_without_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let line = "x".repeat(99) + "\n";
        let big = line.repeat(700); // 70,000 bytes: larger than the budget by itself
        let medium = line.repeat(300); // 30,000 bytes each
        let old = tree(&repo, &[("keep.txt", "a\n", 0o100644)]);
        let new = tree(
            &repo,
            &[
                ("a-big.txt", &big, 0o100644),
                ("b-first.txt", &medium, 0o100644),
                ("c-second.txt", &medium, 0o100644),
                ("d-third.txt", &medium, 0o100644),
                ("keep.txt", "a\nb\n", 0o100644),
            ],
        );
        let (diff, patch) = diff_trees(&repo, old, new, ByteSize::kib(64)).unwrap();
        let find = |p: &str| diff.files.iter().find(|f| f.path == p).unwrap();
        let big = find("a-big.txt");
        assert!(big.hunks.is_empty() && big.additions == 0);
        assert_eq!(
            big.omitted.as_deref(),
            Some("larger than the 64KiB the gate reads")
        );
        // The big file took none of the budget: the next two fit, the third does not.
        for read in ["b-first.txt", "c-second.txt"] {
            assert_eq!(find(read).omitted, None);
            assert_eq!(find(read).additions, 300);
        }
        let third = find("d-third.txt");
        assert_eq!(
            third.omitted.as_deref(),
            Some("past the first 64KiB of change the gate reads")
        );
        assert!(third.hunks.is_empty());
        // What still fits after a file that did not is read.
        assert_eq!(find("keep.txt").additions, 1);
        assert!(patch.len() <= 64 << 10, "{}", patch.len());
        assert!(patch.contains("b-first.txt") && !patch.contains("d-third.txt"));
        assert_eq!(diff.stats.files_changed, 5);
        assert_eq!(diff.stats.additions, 601);
    }
}
