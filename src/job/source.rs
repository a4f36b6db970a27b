//! Where a job's repository comes from: a local git repository or a plain folder. Remote URLs
//! are refused here, before anything is cloned.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::text::is_scp_like;

/// Where the repository comes from.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum RepoSource {
    /// A git repository on this machine.
    Git(PathBuf),
    /// A plain folder with no `.git`: kiln snapshots it into a first commit.
    Folder(PathBuf),
}

impl RepoSource {
    pub fn path(&self) -> &Path {
        match self {
            RepoSource::Git(p) | RepoSource::Folder(p) => p,
        }
    }
}

/// `path` against the job's folder; with none, `path` must be absolute.
pub(super) fn resolve(dir: Option<&Path>, path: &Path) -> Result<PathBuf, String> {
    match dir {
        Some(dir) => Ok(dir.join(path)),
        None if path.is_absolute() => Ok(path.into()),
        None => Err(format!(
            "`{}` is relative; a submitted job names paths on the server absolutely",
            path.display()
        )),
    }
}

pub(super) fn repo_source(repo: &str, dir: Option<&Path>) -> Result<RepoSource, String> {
    let path = if let Some(rest) = repo.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if repo.contains("://") || is_scp_like(repo) {
        return Err(format!(
            "`{repo}` is a remote URL; kiln clones only local paths and file:// URLs for now, because \
             remote clones need host-side credentials. Clone it on the host and give that path"
        ));
    } else {
        resolve(dir, Path::new(repo))?
    };
    let meta = std::fs::metadata(&path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    if !meta.is_dir() {
        return Err(format!("`{}` is not a directory", path.display()));
    }
    let is_git =
        path.join(".git").exists() || path.join("HEAD").is_file() && path.join("objects").is_dir();
    Ok(if is_git {
        RepoSource::Git(path)
    } else {
        RepoSource::Folder(path)
    })
}
