//! git2: the job's private repository on the host. Clone (or snapshot a plain folder), resolve
//! the base, move trees into and out of containers as tar, diff, commit on the work branch and
//! export that one branch. All path handling lives here.
//!
//! The repository is bare and never mounted into a container, so nothing a container writes
//! can become git config, hooks or attributes that the host obeys; libgit2 runs no hooks, no
//! filter drivers and no fsmonitor, and kiln reads no file a container wrote from the disk.

mod diff;
pub mod loose;
mod tree_tar;

use std::path::{Path, PathBuf};

use git2::{FetchOptions, Oid, Repository, Signature};

pub use diff::{BlobChange, diff_revisions, parse_patch};
pub use tree_tar::{Ingested, Skipped};

use crate::config::CommitIdentity;
use crate::job::{BranchName, RepoSource};
use crate::model::ByteSize;
use crate::model::{Diff, Globs, JobId};
use crate::secrets::Redactor;

/// Workspace folders are named `kiln-ws-<job id>-*` in the temp folder, with the owner's pid inside.
const WORKSPACE_PREFIX: &str = "kiln-ws-";
const OWNER_FILE: &str = "owner.pid";
/// Where the source repository's branches and tags land in the private repository.
const SOURCE_NS: &str = "refs/kiln/source";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot read repository {path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("base `{0}` is not a branch, tag or commit of the repository")]
    UnknownBase(String),
    #[error("the repository is a plain folder, so it has no `base` to choose; remove `base`")]
    BaseOnFolder,
    #[error("the folder {path} is larger than the workspace limit {limit}")]
    FolderTooLarge { path: PathBuf, limit: ByteSize },
    #[error("output repository {path}: {message}")]
    Out { path: PathBuf, message: String },
    #[error("workspace: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tar for or from a container: kiln's own building, or the engine's stream.
    #[error("{what}: {source}")]
    Tar {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl WorkspaceError {
    /// True when the user's input is at fault (exit 2), false for the machine (exit 3).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            WorkspaceError::Io { .. } | WorkspaceError::Tar { .. } | WorkspaceError::Git(_)
        )
    }
}

/// The job's private repository in a temporary folder, removed when this is dropped.
pub struct Workspace {
    dir: tempfile::TempDir,
    /// The commit the job's change is made against, and its tree; the merge queue moves it to
    /// the target's tip when a change must be made again on top of it.
    base: std::sync::Mutex<(Oid, Oid)>,
}

impl Workspace {
    /// Makes the private repository from the job's source and resolves `base`. Blocking.
    pub fn open(
        job: &JobId,
        source: &RepoSource,
        base: Option<&str>,
        limit: ByteSize,
    ) -> Result<Self, WorkspaceError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{WORKSPACE_PREFIX}{job}-"))
            .tempdir()
            .map_err(io(&std::env::temp_dir()))?;
        let owner = dir.path().join(OWNER_FILE);
        std::fs::write(&owner, std::process::id().to_string()).map_err(io(&owner))?;
        // No template: the private repository needs none of git's sample hooks and files.
        let mut init = git2::RepositoryInitOptions::new();
        init.bare(true).external_template(false);
        let repo = Repository::init_opts(dir.path().join("repo.git"), &init)?;
        let base_commit = match source {
            RepoSource::Git(path) => {
                fetch_source(&repo, path)?;
                resolve_base(&repo, base)?
            }
            RepoSource::Folder(path) => {
                if base.is_some() {
                    return Err(WorkspaceError::BaseOnFolder);
                }
                snapshot_folder(&repo, path, limit)?
            }
        };
        let base_tree = repo.find_commit(base_commit)?.tree_id();
        Ok(Workspace {
            dir,
            base: std::sync::Mutex::new((base_commit, base_tree)),
        })
    }

    pub fn base_commit(&self) -> Oid {
        self.base.lock().expect("the base lock is never poisoned").0
    }

    pub fn base_tree(&self) -> Oid {
        self.base.lock().expect("the base lock is never poisoned").1
    }

    /// Makes `commit` (already in the private repository) the base of the attempts to come.
    pub fn rebase(&self, commit: Oid) -> Result<(), WorkspaceError> {
        let tree = self.repo()?.find_commit(commit)?.tree_id();
        *self.base.lock().expect("the base lock is never poisoned") = (commit, tree);
        Ok(())
    }

    /// The private bare repository's folder.
    pub fn repo_path(&self) -> PathBuf {
        self.dir.path().join("repo.git")
    }

    fn repo(&self) -> Result<Repository, git2::Error> {
        Repository::open_bare(self.dir.path().join("repo.git"))
    }

    /// Reads back the workspace tar a container left, as it streams in; see [`tree_tar`] for
    /// what is refused.
    pub fn ingest(
        &self,
        tar: impl std::io::Read,
        redactor: &Redactor,
    ) -> Result<(Oid, Ingested), WorkspaceError> {
        tree_tar::tree_from_tar(&self.repo()?, tar, redactor)
    }

    /// The typed diff and unified patch from `old` to `new`, at most `budget` bytes of patch
    /// (see [`diff::diff_trees`]).
    pub fn diff(
        &self,
        old: Oid,
        new: Oid,
        budget: ByteSize,
    ) -> Result<(Diff, String), WorkspaceError> {
        Ok(diff::diff_trees(&self.repo()?, old, new, budget)?)
    }

    pub fn blob_changes(&self, old: Oid, new: Oid) -> Result<Vec<BlobChange>, WorkspaceError> {
        Ok(diff::blob_changes(&self.repo()?, old, new)?)
    }

    /// Paths of the base tree matched by the job's `context_files` globs (links included, as paths).
    pub fn context_files(&self, globs: &Globs) -> Result<Vec<String>, WorkspaceError> {
        let repo = self.repo()?;
        let tree = repo.find_tree(self.base_tree())?;
        let mut found = Vec::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                let path = format!("{dir}{}", String::from_utf8_lossy(entry.name_bytes()));
                if globs.is_match(&path) {
                    found.push(path);
                }
            }
            git2::TreeWalkResult::Ok
        })?;
        Ok(found)
    }

    /// `tree` with every path matched by `protect` put back as it is in the base: changed files
    /// restored, deleted ones brought back, added ones removed. Returns the new tree and the
    /// paths that were put back, sorted.
    pub fn protected_tree(
        &self,
        tree: Oid,
        protect: &Globs,
    ) -> Result<(Oid, Vec<String>), WorkspaceError> {
        let repo = self.repo()?;
        let base = blobs(&repo, self.base_tree(), protect)?;
        let ours = blobs(&repo, tree, protect)?;
        let mut update = git2::build::TreeUpdateBuilder::new();
        let mut reverted = Vec::new();
        for (path, entry) in &ours {
            if base.get(path) != Some(entry) {
                reverted.push(path.clone());
                if !base.contains_key(path) {
                    update.remove(path);
                }
            }
        }
        for (path, (oid, mode)) in &base {
            if ours.get(path) != Some(&(*oid, *mode)) {
                if !ours.contains_key(path) {
                    reverted.push(path.clone());
                }
                update.upsert(path, *oid, file_mode(*mode));
            }
        }
        if reverted.is_empty() {
            return Ok((tree, reverted));
        }
        reverted.sort();
        let new = update.create_updated(&repo, &repo.find_tree(tree)?)?;
        Ok((new, reverted))
    }

    /// Commits `tree` on top of the base as the work branch, in the private repository only.
    pub fn commit(
        &self,
        tree: Oid,
        branch: &BranchName,
        who: &CommitIdentity,
        message: &str,
    ) -> Result<Oid, WorkspaceError> {
        let repo = self.repo()?;
        let signature = Signature::now(&who.name, &who.email)?;
        let parent = repo.find_commit(self.base_commit())?;
        let tree = repo.find_tree(tree)?;
        let oid = repo.commit(None, &signature, &signature, message, &tree, &[&parent])?;
        // The private repository is kiln's own: a later attempt (after a merge conflict) moves it.
        repo.reference(&branch.refname(), oid, true, &format!("kiln: {message}"))?;
        Ok(oid)
    }

    /// Commits `tree` on top of the base under `refs/kiln/candidate` (no branch) and copies that
    /// one ref into the repository `dest` (made bare): a tested change waiting for a human.
    pub fn keep_candidate(
        &self,
        tree: Oid,
        who: &CommitIdentity,
        message: &str,
        dest: &Path,
    ) -> Result<Oid, WorkspaceError> {
        const CANDIDATE: &str = "refs/kiln/candidate";
        let repo = self.repo()?;
        let signature = Signature::now(&who.name, &who.email)?;
        let parent = repo.find_commit(self.base_commit())?;
        let tree = repo.find_tree(tree)?;
        let oid = repo.commit(None, &signature, &signature, message, &tree, &[&parent])?;
        repo.reference(CANDIDATE, oid, true, "kiln: candidate")?;
        let dest = Repository::init_bare(dest)?;
        let source = self.dir.path().join("repo.git");
        let mut remote = dest.remote_anonymous(&source.to_string_lossy())?;
        remote.fetch(
            &[&format!("+{CANDIDATE}:{CANDIDATE}")],
            Some(&mut quiet_fetch()),
            None,
        )?;
        Ok(oid)
    }
}

/// Writes to `out` the tar a container's volume starts from: `tree` of the bare repository at
/// `repo` (the job's private one, or an escalation's candidate) under `workspace/`, an empty
/// `out/`, and the stage's input file (`job.json`, `review.json`).
/// Makes libgit2 ready on a thread of its own: its first use loads the system's CA store
/// through OpenSSL (about 90 ms here), which otherwise falls on the first workspace a job opens.
/// Call it as the process starts; a workspace opened meanwhile simply waits for it.
pub fn warm_up() {
    std::thread::spawn(|| drop(git2::Config::new()));
}

pub fn tar_of_tree_at<W: std::io::Write>(
    repo: &Path,
    tree: Oid,
    input_name: &str,
    input: &[u8],
    out: W,
) -> Result<W, WorkspaceError> {
    let repo = Repository::open_bare(repo)?;
    tree_tar::tar_of_tree(&repo, tree, input_name, input, out)
}

/// The commit `source_ref` names in the repository at `source`.
pub fn resolve_ref(source: &Path, source_ref: &str) -> Result<Oid, WorkspaceError> {
    let repo = Repository::open_bare(source)?;
    Ok(repo.find_reference(source_ref)?.peel_to_commit()?.id())
}

/// The blobs and links of `tree` whose path `globs` matches, by path.
fn blobs(
    repo: &Repository,
    tree: Oid,
    globs: &Globs,
) -> Result<std::collections::BTreeMap<String, (Oid, i32)>, git2::Error> {
    let mut found = std::collections::BTreeMap::new();
    repo.find_tree(tree)?
        .walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                let path = format!("{dir}{}", String::from_utf8_lossy(entry.name_bytes()));
                if globs.is_match(&path) {
                    found.insert(path, (entry.id(), entry.filemode()));
                }
            }
            git2::TreeWalkResult::Ok
        })?;
    Ok(found)
}

fn file_mode(mode: i32) -> git2::FileMode {
    match mode {
        0o100755 => git2::FileMode::BlobExecutable,
        0o120000 => git2::FileMode::Link,
        _ => git2::FileMode::Blob,
    }
}

fn quiet_fetch() -> FetchOptions<'static> {
    let mut opts = FetchOptions::new();
    opts.download_tags(git2::AutotagOption::None);
    opts
}

fn fetch_source(repo: &Repository, path: &Path) -> Result<(), WorkspaceError> {
    let source_err = |e: git2::Error| WorkspaceError::Source {
        path: path.into(),
        message: e.message().to_string(),
    };
    let url = path.canonicalize().map_err(|e| WorkspaceError::Source {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut remote = repo
        .remote_anonymous(&url.to_string_lossy())
        .map_err(source_err)?;
    let refspecs = [
        format!("+refs/heads/*:{SOURCE_NS}/heads/*"),
        format!("+refs/tags/*:{SOURCE_NS}/tags/*"),
        format!("+HEAD:{SOURCE_NS}/HEAD"),
    ];
    remote
        .fetch(&refspecs, Some(&mut quiet_fetch()), None)
        .map_err(source_err)
}

fn resolve_base(repo: &Repository, base: Option<&str>) -> Result<Oid, WorkspaceError> {
    let Some(base) = base else {
        let head = repo
            .find_reference(&format!("{SOURCE_NS}/HEAD"))
            .map_err(|_| WorkspaceError::UnknownBase("HEAD".into()))?;
        return Ok(head.peel_to_commit()?.id());
    };
    for candidate in [
        format!("{SOURCE_NS}/heads/{base}"),
        format!("{SOURCE_NS}/tags/{base}"),
    ] {
        if let Ok(reference) = repo.find_reference(&candidate) {
            return Ok(reference.peel_to_commit()?.id());
        }
    }
    let is_hex = (4..=40).contains(&base.len()) && base.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex
        && let Ok(object) = repo.revparse_single(base)
        && let Ok(commit) = object.peel_to_commit()
    {
        return Ok(commit.id());
    }
    Err(WorkspaceError::UnknownBase(base.into()))
}

/// An io error at `path`, for `map_err`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.into(),
        source,
    }
}

/// Commits a plain folder as it is (links kept as links, never followed) as the base commit.
fn snapshot_folder(repo: &Repository, root: &Path, limit: ByteSize) -> Result<Oid, WorkspaceError> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut index = git2::Index::new()?;
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let meta = path.symlink_metadata().map_err(io(&path))?;
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("read_dir yields children of root")
                .to_path_buf();
            if rel.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            let (oid, mode) = if meta.is_dir() {
                stack.push(entry.path());
                continue;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                (repo.blob(target.as_os_str().as_bytes())?, 0o120000)
            } else if meta.is_file() {
                total += meta.len();
                if total > limit.bytes() {
                    return Err(WorkspaceError::FolderTooLarge {
                        path: root.into(),
                        limit,
                    });
                }
                let exec = meta.permissions().mode() & 0o100 != 0;
                // A large file goes into git a chunk at a time; one that grew since it was
                // measured is taken as it was.
                let mut file = crate::model::fs::open_regular(&path)
                    .map_err(io(&path))?
                    .take(meta.len());
                let blob = tree_tar::write_blob(repo, &mut file, &Redactor::default())?;
                let Some((oid, _)) = blob else {
                    let cut = std::io::Error::other("could not be read to its end");
                    return Err(io(&path)(cut));
                };
                (oid, if exec { 0o100755 } else { 0o100644 })
            } else {
                continue;
            };
            tree_tar::add_entry(&mut index, rel.as_os_str().as_bytes(), oid, mode)?;
        }
    }
    let tree = repo.find_tree(index.write_tree_to(repo)?)?;
    let when = git2::Time::new(0, 0);
    let signature = Signature::new("kiln", "kiln@localhost", &when)?;
    let message = format!("kiln: snapshot of {}", root.display());
    Ok(repo.commit(None, &signature, &signature, &message, &tree, &[])?)
}

/// Whether process `pid` runs on this machine (a process we may not signal still runs).
pub fn process_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Removes workspace folders whose kiln process is gone (all of them with `all`).
pub fn gc_workspaces(all: bool) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(std::env::temp_dir())? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(WORKSPACE_PREFIX) || !entry.file_type()?.is_dir() {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if all || !owner.is_some_and(process_alive) {
            std::fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}
