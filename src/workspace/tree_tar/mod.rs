//! Trees to tar and back. A tree goes into a container as a tar stream made from git's object
//! database; what comes back is a tar stream made by the Docker engine from a directory the
//! container controlled, so it is parsed as hostile: no path leaves the tree, nothing under any
//! `.git` is taken, links are stored as links (their targets are text, never followed), devices
//! and fifos are dropped, and every count is capped. Nothing is ever written to the host's disk.

mod pack;
mod read;

use git2::{IndexEntry, IndexTime, Oid};

pub use pack::tar_of_tree;
pub(in crate::workspace) use read::write_blob;
pub use read::{Ingested, Skipped, tree_from_tar};

const MODE_FILE: u32 = 0o100644;
const MODE_EXEC: u32 = 0o100755;
const MODE_LINK: u32 = 0o120000;

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

pub(in crate::workspace) fn add_entry(
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
}
