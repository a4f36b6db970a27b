//! A container's workspace back into a tree: the tar the engine made of a folder the container
//! controlled, read as hostile. No path leaves the tree, nothing under any `.git` is taken,
//! links are kept as text (one climbing above the workspace is dropped), devices and fifos are
//! dropped, every count is capped, every secret hidden.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};

use git2::{Oid, Repository};
use serde::Serialize;

use super::{MODE_EXEC, MODE_FILE, MODE_LINK, add_entry, link_escapes};
use crate::secrets::{Redactor, StreamRedactor};
use crate::workspace::WorkspaceError;

/// The most entries kiln reads back from a container's workspace.
const MAX_ENTRIES: usize = 200_000;
/// Files up to this size are read whole and written as one blob; a larger one streams through
/// git's blob writer a chunk at a time, so no file is ever held whole.
const WHOLE_FILE: u64 = 1 << 20;

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

/// Reads the tar of `/kiln/workspace` a container left, as it streams in, and writes it as a
/// tree into `repo`; memory stays bounded whatever the tar's size.
///
/// Every configured secret in a path or content is replaced by `redactor` before git sees it.
pub fn tree_from_tar(
    repo: &Repository,
    tar: impl Read,
    redactor: &Redactor,
) -> Result<(Oid, Ingested), WorkspaceError> {
    let mut index = git2::Index::new()?;
    let mut report = Ingested {
        whole: true,
        ..Ingested::default()
    };
    let mut seen: HashMap<Vec<u8>, (Oid, u32)> = HashMap::new();
    let mut archive = tar::Archive::new(tar);
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
        let (oid, mode) = match kind {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let exec = entry.header().mode().is_ok_and(|m| m & 0o100 != 0);
                let Some((oid, hidden)) = write_blob(repo, &mut entry, redactor)? else {
                    report.skipped.push(Skipped {
                        path: shown,
                        reason: "unreadable content",
                    });
                    continue;
                };
                report.redacted += usize::from(hidden);
                (oid, if exec { MODE_EXEC } else { MODE_FILE })
            }
            tar::EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) if link_escapes(&path, &target) => {
                    report.skipped.push(Skipped {
                        path: shown,
                        reason: "symlink pointing above the workspace",
                    });
                    continue;
                }
                Some(target) if !target.is_empty() => {
                    let target = match redactor.bytes(&target) {
                        Cow::Owned(hidden) => {
                            report.redacted += 1;
                            Cow::Owned(hidden)
                        }
                        same => same,
                    };
                    (repo.blob(&target)?, MODE_LINK)
                }
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

/// Writes one file's content into `repo` with every secret hidden: whole when it is small, a
/// chunk at a time through git's blob writer when not (a size announced beside it is not
/// trusted). Returns the blob and whether a secret was hidden, or `None` when the content cannot
/// be read (a cut archive).
pub(in crate::workspace) fn write_blob(
    repo: &Repository,
    content: &mut impl Read,
    redactor: &Redactor,
) -> Result<Option<(Oid, bool)>, WorkspaceError> {
    let mut head = Vec::new();
    if content.take(WHOLE_FILE + 1).read_to_end(&mut head).is_err() {
        return Ok(None);
    }
    if head.len() as u64 <= WHOLE_FILE {
        let hidden = redactor.bytes(&head);
        let oid = repo.blob(&hidden)?;
        return Ok(Some((oid, matches!(hidden, Cow::Owned(_)))));
    }
    let written = |source| WorkspaceError::Tar {
        what: "writing a file into git",
        source,
    };
    let mut blob = repo.blob_writer(None)?;
    let mut stream = StreamRedactor::new(redactor.clone());
    blob.write_all(&stream.push(&head)).map_err(written)?;
    drop(head);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match content.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(None),
        };
        blob.write_all(&stream.push(&chunk[..n])).map_err(written)?;
    }
    let (last, hidden) = stream.end();
    blob.write_all(&last).map_err(written)?;
    Ok(Some((blob.commit()?, hidden)))
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

#[cfg(test)]
mod tests {
    use git2::{TreeWalkMode, TreeWalkResult};

    use super::*;
    use crate::workspace::tree_tar::tar_of_tree;

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
        let (oid, report) = tree_from_tar(&repo, tar.as_slice(), &Redactor::default()).unwrap();
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
    fn a_large_file_streams_into_git_with_its_secrets_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let key = "sk-live-0123456789abcdef";
        let redactor = Redactor::new(&[("API_KEY".into(), key.into())]);
        // Secrets at the whole-file cut and across the blob writer's 64 KiB chunks.
        let mut big = vec![b'x'; 3 << 20];
        for at in [
            WHOLE_FILE as usize - 5,
            (WHOLE_FILE as usize) + (64 << 10) - 3,
        ] {
            big[at..at + key.len()].copy_from_slice(key.as_bytes());
        }
        let tar = tar_of(&[
            ("workspace/big.txt", tar::EntryType::Regular, &big),
            ("workspace/small.txt", tar::EntryType::Regular, b"no secret"),
        ]);
        let (oid, report) = tree_from_tar(&repo, tar.as_slice(), &redactor).unwrap();
        assert_eq!((report.files, report.redacted), (2, 1), "{report:?}");
        let tree = repo.find_tree(oid).unwrap();
        let blob = repo
            .find_blob(tree.get_name("big.txt").unwrap().id())
            .unwrap();
        let expected = redactor.bytes(&big);
        assert!(matches!(expected, Cow::Owned(_)));
        assert_eq!(blob.content(), expected.as_ref());
        assert!(
            !blob
                .content()
                .windows(key.len())
                .any(|w| w == key.as_bytes())
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
        let (first, _) = tree_from_tar(&repo, tar.as_slice(), &Redactor::default()).unwrap();
        let out = tar_of_tree(&repo, first, "job.json", b"{}", Vec::new()).unwrap();
        let (second, report) = tree_from_tar(&repo, out.as_slice(), &Redactor::default()).unwrap();
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
            let Ok((tree, _)) = tree_from_tar(&repo, bytes.as_slice(), &Redactor::default()) else {
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
