//! Reading a loose git object as a stream. libgit2 streams a loose object by mapping its whole
//! file into memory, which counts against kiln's resident memory once read; a file a container
//! wrote can be as large as the workspace, so kiln inflates the object file itself, a buffer
//! at a time. The format is git's: zlib of `<kind> <size>\0<content>`.

use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::bufread::ZlibDecoder;
use git2::Oid;

/// The longest header git writes (`blob ` and twenty digits, then NUL), with room to spare.
const MAX_HEADER: usize = 32;

/// The content of the loose blob `id` in the bare repository at `repo` and its size, as a
/// stream; `None` when the object is not loose (packed objects are libgit2's to read).
pub fn open_blob(repo: &Path, id: Oid) -> io::Result<Option<(impl Read + use<>, u64)>> {
    let hex = id.to_string();
    let path = repo.join("objects").join(&hex[..2]).join(&hex[2..]);
    let file = match crate::model::fs::open_regular(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut content = ZlibDecoder::new(BufReader::with_capacity(64 << 10, file));
    let mut header = Vec::with_capacity(MAX_HEADER);
    let mut byte = [0u8; 1];
    loop {
        content.read_exact(&mut byte)?;
        if byte[0] == 0 {
            break;
        }
        if header.len() == MAX_HEADER {
            return Err(bad(&hex, "no end to its header"));
        }
        header.push(byte[0]);
    }
    let size = std::str::from_utf8(&header)
        .ok()
        .and_then(|h| h.strip_prefix("blob "))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| bad(&hex, "not a blob"))?;
    Ok(Some((content.take(size), size)))
}

fn bad(hex: &str, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("loose object {hex}: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loose_blob_reads_back_as_git_wrote_it_and_a_packed_one_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let content: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let id = repo.blob(&content).unwrap();
        let (mut stream, size) = open_blob(dir.path(), id).unwrap().unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).unwrap();
        assert_eq!((size, back), (content.len() as u64, content));
        let absent = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        assert!(open_blob(dir.path(), absent).unwrap().is_none());
    }
}
