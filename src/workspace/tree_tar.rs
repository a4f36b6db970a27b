//! Trees to tar and back. A tree goes into a container as a tar stream made from git's object
//! database; what comes back is a tar stream made by the Docker engine from a directory the
//! container controlled, so it is parsed as hostile: no path leaves the tree, nothing under any
//! `.git` is taken, links are stored as links (their targets are text, never followed), devices
//! and fifos are dropped, and every count is capped. Nothing is ever written to the host's disk.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;

use git2::{IndexEntry, IndexTime, ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use serde::Serialize;

use super::WorkspaceError;
use crate::secrets::Redactor;

/// Owner of everything in the workspace: the sandbox user.
const SANDBOX_UID: u64 = 1000;
/// The most entries kiln reads back from a container's workspace.
const MAX_ENTRIES: usize = 200_000;

const MODE_FILE: u32 = 0o100644;
const MODE_EXEC: u32 = 0o100755;
const MODE_LINK: u32 = 0o120000;

/// What kiln left out when it read a tree back, each with the path and why.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Ingested {
    pub files: usize,
    pub skipped: Vec<Skipped>,
    /// False when kiln could not read the whole tree (a broken archive, too many entries).
    pub whole: bool,
    /// Files (or link targets, or paths) in which a configured secret was found and hidden.
    pub redacted: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: &'static str,
}

/// A tar of `tree` under `workspace/`, owned by the sandbox user, with `job.json` beside it
/// owned by root and read-only. Submodule entries (gitlinks) become empty folders.
pub fn tar_of_tree(
    repo: &Repository,
    tree: Oid,
    input_name: &str,
    input: &[u8],
) -> Result<Vec<u8>, WorkspaceError> {
    let mut builder = tar::Builder::new(Vec::new());
    let io = |e: std::io::Error| WorkspaceError::Tar {
        what: "building the workspace tar",
        source: e,
    };
    append_dir(&mut builder, "workspace").map_err(io)?;
    // The mount point of a reviewer's output volume, inside its read-only workspace.
    append_dir(&mut builder, "out").map_err(io)?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o444);
    header.set_size(input.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, input_name, input)
        .map_err(io)?;

    let tree = repo.find_tree(tree)?;
    let mut failure = None;
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        use std::os::unix::ffi::OsStrExt;
        let mut raw = format!("workspace/{dir}").into_bytes();
        raw.extend_from_slice(entry.name_bytes());
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&raw));
        let result = match entry.kind() {
            Some(ObjectType::Tree) => append_dir(&mut builder, path),
            Some(ObjectType::Blob) => repo
                .find_blob(entry.id())
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|blob| {
                    append_blob(&mut builder, path, entry.filemode() as u32, blob.content())
                }),
            Some(ObjectType::Commit) => append_dir(&mut builder, path),
            _ => Ok(()),
        };
        match result {
            Ok(()) => TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(e);
                TreeWalkResult::Abort
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(io(e));
    }
    builder.into_inner().map_err(io)
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(SANDBOX_UID);
    header.set_gid(SANDBOX_UID);
    header.set_mtime(0);
    header
}

/// Whether the relative link at `path` (inside the workspace) to `target` climbs above the
/// workspace's root, read as text (nothing is followed). An absolute target does not climb.
fn link_escapes(path: &[u8], target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut depth = path.split(|b| *b == b'/').filter(|c| !c.is_empty()).count() as i64 - 1;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn append_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    path: impl AsRef<std::path::Path>,
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755);
    h.set_size(0);
    builder.append_data(&mut h, path, std::io::empty())
}

fn append_blob(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &std::path::Path,
    mode: u32,
    content: &[u8],
) -> std::io::Result<()> {
    if mode == MODE_LINK {
        use std::os::unix::ffi::OsStrExt;
        // The engine refuses a whole archive holding a relative link that climbs out of it; such
        // a link (a repository's own) is left out of what the container gets.
        let inside = path
            .as_os_str()
            .as_bytes()
            .strip_prefix(b"workspace/")
            .is_some_and(|p| !link_escapes(p, content));
        if !inside {
            tracing::warn!(
                path = %path.display(),
                "a link pointing above the workspace is left out of the container's copy"
            );
            return Ok(());
        }
        let mut h = header(tar::EntryType::Symlink, 0o777);
        h.set_size(0);
        return builder.append_link(&mut h, path, std::ffi::OsStr::from_bytes(content));
    }
    let mut h = header(
        tar::EntryType::Regular,
        if mode == MODE_EXEC { 0o755 } else { 0o644 },
    );
    h.set_size(content.len() as u64);
    builder.append_data(&mut h, path, content)
}

/// Reads the tar of `/kiln/workspace` a container left and writes it as a tree into `repo`.
///
/// Every configured secret in a path or content is replaced by `redactor` before git sees it.
pub fn tree_from_tar(
    repo: &Repository,
    tar_bytes: &[u8],
    redactor: &Redactor,
) -> Result<(Oid, Ingested), WorkspaceError> {
    let mut index = git2::Index::new()?;
    let mut report = Ingested {
        whole: true,
        ..Ingested::default()
    };
    let mut seen: HashMap<Vec<u8>, (Oid, u32)> = HashMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive.entries().map_err(|e| WorkspaceError::Tar {
        what: "reading the workspace tar",
        source: e,
    })?;
    for (count, entry) in entries.enumerate() {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                report.skipped.push(Skipped {
                    path: format!("(entry {count})"),
                    reason: "unreadable tar entry",
                });
                tracing::warn!("workspace tar ends early: {e}");
                break;
            }
        };
        if count >= MAX_ENTRIES {
            report.skipped.push(Skipped {
                path: "(rest)".into(),
                reason: "more than 200000 entries",
            });
            break;
        }
        let mut raw = entry.path_bytes().into_owned();
        if let Cow::Owned(hidden) = redactor.bytes(&raw) {
            raw = hidden;
            report.redacted += 1;
        }
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(path) = workspace_path(&raw) else {
            if raw != b"workspace/" && raw != b"workspace" {
                report.skipped.push(Skipped {
                    path: shown,
                    reason: "path outside the workspace",
                });
            }
            continue;
        };
        if path
            .split(|b| *b == b'/')
            .any(|c| c.eq_ignore_ascii_case(b".git"))
        {
            report.skipped.push(Skipped {
                path: shown,
                reason: "inside a .git folder",
            });
            continue;
        }
        let kind = entry.header().entry_type();
        let (content, mode) = match kind {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The header's size is the container's word; the archive's length bounds it.
                let mut content =
                    Vec::with_capacity(entry.size().min(tar_bytes.len() as u64) as usize);
                if entry.read_to_end(&mut content).is_err() {
                    report.skipped.push(Skipped {
                        path: shown,
                        reason: "unreadable content",
                    });
                    continue;
                }
                let exec = entry.header().mode().is_ok_and(|m| m & 0o100 != 0);
                (content, if exec { MODE_EXEC } else { MODE_FILE })
            }
            tar::EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) if link_escapes(&path, &target) => {
                    report.skipped.push(Skipped {
                        path: shown,
                        reason: "symlink pointing above the workspace",
                    });
                    continue;
                }
                Some(target) if !target.is_empty() => (target.into_owned(), MODE_LINK),
                _ => {
                    report.skipped.push(Skipped {
                        path: shown,
                        reason: "symlink without a target",
                    });
                    continue;
                }
            },
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().and_then(|t| workspace_path(&t));
                match target.and_then(|t| seen.get(&t).copied()) {
                    Some((oid, mode)) => {
                        add_entry(&mut index, &path, oid, mode)?;
                        seen.insert(path, (oid, mode));
                        report.files += 1;
                    }
                    None => report.skipped.push(Skipped {
                        path: shown,
                        reason: "hard link to nothing kiln kept",
                    }),
                }
                continue;
            }
            _ => {
                report.skipped.push(Skipped {
                    path: shown,
                    reason: "not a file, folder or symlink",
                });
                continue;
            }
        };
        let content = match redactor.bytes(&content) {
            Cow::Owned(hidden) => {
                report.redacted += 1;
                hidden
            }
            Cow::Borrowed(_) => content,
        };
        let oid = repo.blob(&content)?;
        if add_entry(&mut index, &path, oid, mode).is_err() {
            report.skipped.push(Skipped {
                path: shown,
                reason: "path git cannot store",
            });
            continue;
        }
        seen.insert(path, (oid, mode));
        report.files += 1;
    }
    Ok((index.write_tree_to(repo)?, report))
}

/// The path inside the workspace of a tar entry named `workspace/...`, or `None` when the
/// name is anything else: absolute, `..`, `.`, empty components, or the root itself.
fn workspace_path(raw: &[u8]) -> Option<Vec<u8>> {
    let rest = raw.strip_prefix(b"workspace/")?;
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    let ok = !rest.is_empty()
        && rest
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0));
    ok.then(|| rest.to_vec())
}

pub(super) fn add_entry(
    index: &mut git2::Index,
    path: &[u8],
    id: Oid,
    mode: u32,
) -> Result<(), git2::Error> {
    let entry = IndexEntry {
        ctime: IndexTime::new(0, 0),
        mtime: IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode,
        uid: 0,
        gid: 0,
        file_size: 0,
        id,
        flags: path.len().min(0xfff) as u16,
        flags_extended: 0,
        path: path.to_vec(),
    };
    index.add(&entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, std::str::from_utf8(data).unwrap())
                        .unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    // Bypass the tar crate's own path checks to write hostile names.
                    let name = h.as_old_mut();
                    name.name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn hostile_entries_are_skipped_and_links_stay_text() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let tar = tar_of(&[
            ("workspace/", tar::EntryType::Directory, b""),
            ("workspace/ok.txt", tar::EntryType::Regular, b"fine\n"),
            (
                "workspace/.git/hooks/post-commit",
                tar::EntryType::Regular,
                b"#!/bin/sh\ntouch /pwned\n",
            ),
            (
                "workspace/sub/.GIT/config",
                tar::EntryType::Regular,
                b"[core]\nfsmonitor = x\n",
            ),
            ("workspace/../escape", tar::EntryType::Regular, b"x"),
            ("/etc/passwd", tar::EntryType::Regular, b"x"),
            ("workspace/link", tar::EntryType::Symlink, b"/etc/shadow"),
            ("workspace/fifo", tar::EntryType::Fifo, b""),
            ("workspace/hard", tar::EntryType::Link, b"workspace/ok.txt"),
        ]);
        let (oid, report) = tree_from_tar(&repo, &tar, &Redactor::default()).unwrap();
        let tree = repo.find_tree(oid).unwrap();
        let names: Vec<_> = tree.iter().map(|e| e.name().unwrap().to_string()).collect();
        assert_eq!(names, ["hard", "link", "ok.txt"]);
        let link = tree.get_name("link").unwrap();
        assert_eq!(link.filemode(), MODE_LINK as i32);
        assert_eq!(repo.find_blob(link.id()).unwrap().content(), b"/etc/shadow");
        let reasons: Vec<_> = report
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason))
            .collect();
        assert!(
            reasons.contains(&("workspace/.git/hooks/post-commit", "inside a .git folder")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("workspace/sub/.GIT/config", "inside a .git folder")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("workspace/../escape", "path outside the workspace")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("workspace/fifo", "not a file, folder or symlink")),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_tree_survives_the_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let tar = tar_of(&[
            ("workspace/a/b.txt", tar::EntryType::Regular, b"b"),
            ("workspace/l", tar::EntryType::Symlink, b"a/b.txt"),
        ]);
        let (first, _) = tree_from_tar(&repo, &tar, &Redactor::default()).unwrap();
        let out = tar_of_tree(&repo, first, "job.json", b"{}").unwrap();
        let (second, report) = tree_from_tar(&repo, &out, &Redactor::default()).unwrap();
        assert_eq!(first, second);
        assert!(
            report
                .skipped
                .iter()
                .all(|s| s.path == "job.json" || s.path == "out"),
            "{:?}",
            report.skipped
        );
    }

    #[test]
    fn links_climbing_above_the_workspace_are_told_apart() {
        assert!(link_escapes(b"leak", b"../../../../../../x"));
        assert!(link_escapes(b"a/leak", b"../../x"));
        assert!(link_escapes(b"leak", b".."));
        assert!(!link_escapes(b"a/ok", b"../b.txt"));
        assert!(!link_escapes(b"a/b/ok", b"./../../c"));
        assert!(!link_escapes(b"abs", b"/etc/passwd"));
        assert!(!link_escapes(b"a/ok", b"x/../../y"));
    }

    use proptest::prelude::*;

    /// A tar a container could have made: any paths (climbing, absolute, `.git`, odd bytes), any
    /// entry types, any contents and link targets.
    fn hostile_tar() -> impl Strategy<Value = Vec<u8>> {
        let kind = prop_oneof![
            Just(tar::EntryType::Regular),
            Just(tar::EntryType::Directory),
            Just(tar::EntryType::Symlink),
            Just(tar::EntryType::Link),
            Just(tar::EntryType::Fifo),
            Just(tar::EntryType::Char),
        ];
        let path = prop_oneof![
            "workspace/[a-z.]{1,8}(/[a-zA-Z0-9._-]{1,8}){0,3}",
            "workspace/(\\.\\./)*[a-z]{1,4}",
            "(workspace/)?\\.git(/[a-z]{1,4})?",
            "/[a-z]{1,8}",
            ".{1,40}",
        ];
        let entry = (
            path,
            kind,
            proptest::collection::vec(any::<u8>(), 0..64),
            "[./a-z]{0,40}",
        );
        proptest::collection::vec(entry, 0..24).prop_map(|entries| {
            let mut b = tar::Builder::new(Vec::new());
            for (path, kind, data, target) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_mode(0o644);
                // A path the tar crate refuses to write (`..`, absolute) goes into the header's
                // name field as raw bytes: a container's engine could send it.
                if h.set_path(&path).is_err() {
                    let raw = path.as_bytes();
                    let name = &mut h.as_old_mut().name;
                    let len = raw.len().min(name.len());
                    name[..len].copy_from_slice(&raw[..len]);
                }
                let _ = match kind {
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        h.set_size(0);
                        h.set_link_name(&target)
                            .and_then(|()| b.append(&h, std::io::empty()))
                    }
                    _ => {
                        h.set_size(data.len() as u64);
                        h.set_cksum();
                        b.append(&h, data.as_slice())
                    }
                };
            }
            b.into_inner().unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the archive, the tree kiln takes holds only paths inside the workspace, no
        /// `.git`, no link climbing out; truncated or garbled archives are a failed read, never
        /// a panic.
        #[test]
        fn any_archive_gives_a_tree_inside_the_workspace_or_a_clear_error(
            tar in hostile_tar(),
            cut in any::<prop::sample::Index>(),
            garble in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let repo = Repository::init_bare(dir.path()).unwrap();
            let mut bytes = tar.clone();
            if garble && !bytes.is_empty() {
                let at = cut.index(bytes.len());
                bytes.truncate(at);
            }
            let Ok((tree, _)) = tree_from_tar(&repo, &bytes, &Redactor::default()) else {
                return Ok(());
            };
            let tree = repo.find_tree(tree).unwrap();
            let mut bad = Vec::new();
            tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
                let path = format!("{dir}{}", entry.name().unwrap_or("?"));
                if path.split('/').any(|c| c.eq_ignore_ascii_case(".git") || c == "..") {
                    bad.push(path.clone());
                }
                if entry.filemode() == MODE_LINK as i32 {
                    let blob = repo.find_blob(entry.id()).unwrap();
                    if link_escapes(path.as_bytes(), blob.content()) {
                        bad.push(path);
                    }
                }
                TreeWalkResult::Ok
            })
            .unwrap();
            prop_assert!(bad.is_empty(), "{bad:?}");
        }
    }
}
