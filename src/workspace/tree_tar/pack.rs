//! A tree into a container: a tar of it under `workspace/`, owned by the sandbox user, made from
//! git's object database; a link that would climb out of the archive is left out.

use std::io::Write;

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use super::{MODE_EXEC, MODE_LINK, link_escapes};
use crate::workspace::WorkspaceError;

/// Owner of everything in the workspace: the sandbox user.
const SANDBOX_UID: u64 = 1000;

/// Files larger than this are streamed into the tar, not read whole, where they are loose objects
/// (which is how kiln writes a container's files).
const WHOLE_FILE: usize = 1 << 20;

/// Writes to `out` a tar of `tree` under `workspace/`, owned by the sandbox user, with the
/// stage's input file (`job.json`) beside it owned by root and read-only. Submodule entries
/// (gitlinks) become empty folders.
pub fn tar_of_tree<W: Write>(
    repo: &Repository,
    tree: Oid,
    input_name: &str,
    input: &[u8],
    out: W,
) -> Result<W, WorkspaceError> {
    let mut builder = tar::Builder::new(out);
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
    let odb = repo.odb()?;
    let mut failure = None;
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        use std::os::unix::ffi::OsStrExt;
        let mut raw = format!("workspace/{dir}").into_bytes();
        raw.extend_from_slice(entry.name_bytes());
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&raw));
        let result = match entry.kind() {
            Some(ObjectType::Tree) => append_dir(&mut builder, path),
            Some(ObjectType::Blob) => append_blob(&mut builder, repo, &odb, path, entry),
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

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    path: impl AsRef<std::path::Path>,
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755);
    h.set_size(0);
    builder.append_data(&mut h, path, std::io::empty())
}

fn append_blob<W: Write>(
    builder: &mut tar::Builder<W>,
    repo: &Repository,
    odb: &git2::Odb<'_>,
    path: &std::path::Path,
    entry: &git2::TreeEntry<'_>,
) -> std::io::Result<()> {
    let git = |e: git2::Error| std::io::Error::other(e.to_string());
    let mode = entry.filemode() as u32;
    let (size, _) = odb.read_header(entry.id()).map_err(git)?;
    if mode != MODE_LINK
        && size > WHOLE_FILE
        && let Some((stream, size)) = crate::workspace::loose::open_blob(repo.path(), entry.id())?
    {
        let mut h = file_header(mode);
        h.set_size(size);
        return builder.append_data(&mut h, path, stream);
    }
    let blob = repo.find_blob(entry.id()).map_err(git)?;
    let content = blob.content();
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
    let mut h = file_header(mode);
    h.set_size(content.len() as u64);
    builder.append_data(&mut h, path, content)
}

fn file_header(mode: u32) -> tar::Header {
    header(
        tar::EntryType::Regular,
        if mode == MODE_EXEC { 0o755 } else { 0o644 },
    )
}
