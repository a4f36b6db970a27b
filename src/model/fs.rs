//! File helpers every layer shares: a capped read, a folder only kiln's user can enter, and a
//! write that readers never see half done.

use std::io::{Read, Write};
use std::path::Path;

use super::ByteSize;

/// Opens `path` for reading if it is a regular file (a link to one is followed), refusing a
/// FIFO, socket or device without blocking on it: it is opened non-blocking, then checked.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The regular file at `path`, refused when it holds more than `cap` bytes (only `cap + 1` are
/// ever read).
pub fn read_bytes_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "larger than {}",
            ByteSize(cap)
        )));
    }
    Ok(bytes)
}

/// [`read_bytes_capped`], as UTF-8 text.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    String::from_utf8(read_bytes_capped(path, cap)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Makes `dir` and its parents; the folders made are `0700`.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, renamed into place:
/// a reader sees the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Why `path` (a folder, or with `folder` false a file) is no place kiln may trust what it reads
/// from (native code, a cache): a link, not kiln's user's own, or writable (for a folder:
/// usable at all) by other users. `None` when it is kiln's own.
pub fn not_kilns_own(path: &Path, folder: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => return Some(format!("cannot be checked: {e}")),
    };
    let uid = nix::unistd::geteuid().as_raw();
    let open_to_others = if folder { 0o077 } else { 0o022 };
    if meta.file_type().is_symlink() {
        Some("is a link".into())
    } else if folder != meta.is_dir() {
        Some(format!(
            "is not a {}",
            if folder { "folder" } else { "file" }
        ))
    } else if meta.uid() != uid {
        Some(format!("belongs to uid {}, not kiln's ({uid})", meta.uid()))
    } else if meta.mode() & open_to_others != 0 {
        Some(format!(
            "is open to other users (mode {:o}); make it {}",
            meta.mode() & 0o777,
            if folder { "0700" } else { "0600" }
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_read_refuses_what_is_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "12345").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), "12345");
        let err = read_capped(&path, 4).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn only_regular_files_are_read_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_capped(&fifo, 10).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(read_capped(dir.path(), 10).is_err());
        assert!(read_capped(Path::new("/dev/zero"), 10).is_err());
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("address");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
