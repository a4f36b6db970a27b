//! A job's files in a shared store, so that any server answers for any job: when a job ends (and
//! after a decision), the server that ran it keeps its artifacts folder in the store; a server
//! asked about a job whose files it does not have, or has an older version of, writes them into
//! its own state folder first. Only regular files are kept, at most [`MAX_KEPT`] per job; the
//! store's copy is read as hostile as any other input (a path that would leave the job's folder
//! is refused).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::Server;
use crate::error::Error;
use crate::model::fs::create_private_dir;
use crate::store::JobFile;

/// The most of one job's artifacts kept in the store; a file that would pass it is left out
/// (and named in the server's log).
const MAX_KEPT: u64 = 256 << 20;
/// In a job's folder: the version of the store's files it holds.
const VERSION_FILE: &str = ".kiln-kept-version";

/// Keeps job `id`'s artifacts in the shared store (nothing to do with a store of one server).
pub(super) async fn keep(server: &Arc<Server>, id: &str) -> Result<(), Error> {
    if !server.shared {
        return Ok(());
    }
    let dir = server.artifacts().join(id);
    let files = tokio::task::spawn_blocking(move || collect(&dir))
        .await
        .map_err(Error::Join)??;
    let version = server.db(|s| match s.shared() {
        Some(pg) => pg.put_files(id, &files),
        None => Ok(0),
    })?;
    write_version(&server.artifacts().join(id), version)
}

/// Makes sure this server's folder of job `id` holds the store's latest files.
pub(super) async fn fetch(server: &Arc<Server>, id: &str) -> Result<(), Error> {
    if !server.shared {
        return Ok(());
    }
    let dir = server.artifacts().join(id);
    let have = std::fs::read_to_string(dir.join(VERSION_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let latest = server.db(|s| match s.shared() {
        Some(pg) => pg.files_version(id),
        None => Ok(0),
    })?;
    if latest <= have {
        return Ok(());
    }
    let (version, files) = server.db(|s| match s.shared() {
        Some(pg) => pg.files(id),
        None => Ok((0, Vec::new())),
    })?;
    tokio::task::spawn_blocking(move || {
        for file in &files {
            write_file(&dir, file)?;
        }
        write_version(&dir, version)
    })
    .await
    .map_err(Error::Join)?
}

/// Every regular file under `dir` (links are not followed), up to [`MAX_KEPT`] in all.
fn collect(dir: &Path) -> Result<Vec<JobFile>, Error> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("cannot read {}", folder.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("cannot read {}", folder.display())))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .map_err(Error::io(format!("cannot read {}", path.display())))?;
            if meta.is_dir() {
                folders.push(path);
                continue;
            }
            let Some(relative) = path.strip_prefix(dir).ok().and_then(Path::to_str) else {
                continue;
            };
            if !meta.is_file() || relative == VERSION_FILE {
                continue;
            }
            if total + meta.len() > MAX_KEPT {
                tracing::warn!(
                    file = relative,
                    "not kept in the shared store: the job's files pass {MAX_KEPT} bytes"
                );
                continue;
            }
            total += meta.len();
            let content = std::fs::read(&path)
                .map_err(Error::io(format!("cannot read {}", path.display())))?;
            files.push(JobFile {
                path: relative.to_string(),
                content,
            });
        }
    }
    Ok(files)
}

/// Writes one kept file under `dir`; a path that is not plainly inside it is refused.
fn write_file(dir: &Path, file: &JobFile) -> Result<(), Error> {
    let relative = PathBuf::from(&file.path);
    let inside = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !inside || relative.as_os_str().is_empty() {
        return Err(Error::Internal(format!(
            "the shared store holds a file `{}` outside its job's folder; it is not written",
            file.path
        )));
    }
    let path = dir.join(&relative);
    if let Some(parent) = path.parent() {
        create_private_dir(parent)
            .map_err(Error::io(format!("cannot make {}", parent.display())))?;
    }
    // Never through a link a job's own files could have left where this one goes.
    let _ = std::fs::remove_file(&path);
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    std::io::Write::write_all(&mut out, &file.content)
        .map_err(Error::io(format!("cannot write {}", path.display())))
}

fn write_version(dir: &Path, version: i64) -> Result<(), Error> {
    create_private_dir(dir).map_err(Error::io(format!("cannot make {}", dir.display())))?;
    crate::model::fs::write_atomic(&dir.join(VERSION_FILE), version.to_string().as_bytes())
        .map_err(Error::io("cannot write the kept files' version"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_kept_come_back_as_they_were_and_a_climbing_path_is_refused() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("attempt-1")).unwrap();
        std::fs::write(from.path().join("report.json"), b"{}").unwrap();
        std::fs::write(from.path().join("attempt-1/test.log"), b"ok\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", from.path().join("link")).unwrap();
        let mut files = collect(from.path()).unwrap();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["attempt-1/test.log", "report.json"],
            "a link is not kept"
        );

        let to = tempfile::tempdir().unwrap();
        for file in &files {
            write_file(to.path(), file).unwrap();
        }
        assert_eq!(
            std::fs::read(to.path().join("attempt-1/test.log")).unwrap(),
            b"ok\n"
        );
        let climbing = JobFile {
            path: "../escaped".into(),
            content: b"x".to_vec(),
        };
        assert!(write_file(to.path(), &climbing).is_err());
        assert!(!to.path().parent().unwrap().join("escaped").exists());
    }
}
