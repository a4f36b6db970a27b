//! Publishing: the only way work leaves kiln. git2 writes to the destination repository (a path
//! on this machine, or a URL pushed to with credentials the operator config holds on the host,
//! never mounted or passed into any container), and only refs kiln allows: the job's work branch
//! under the prefix, and, through the merge queue after a green re-test, a merge target the
//! operator lists. Every write passes [`guard`] first, whatever a job or a request named.

pub mod merge;

use std::path::{Path, PathBuf};

use git2::{Cred, CredentialType, Oid, PushOptions, RemoteCallbacks, Repository};

use crate::config::{Config, PublishConfig};
use crate::job::BranchName;
use crate::model::text::is_scp_like;

/// Where published work goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A repository on this machine (made bare if absent).
    Local(PathBuf),
    /// A remote repository: `https://`, `ssh://` or `user@host:path`.
    Url(String),
}

impl Destination {
    pub fn parse(text: &str) -> Destination {
        if let Some(path) = text.strip_prefix("file://") {
            Destination::Local(PathBuf::from(path))
        } else if text.contains("://") || is_scp_like(text) {
            Destination::Url(text.to_string())
        } else {
            Destination::Local(PathBuf::from(text))
        }
    }

    /// A stable name for the merge queue's lock: the canonical path, or the URL.
    pub fn key(&self) -> String {
        match self {
            Destination::Local(path) => std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string(),
            Destination::Url(url) => url.clone(),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Local(path) => write!(f, "{}", path.display()),
            // The URL's user info may hold a token: show it without.
            Destination::Url(url) => f.write_str(&without_userinfo(url)),
        }
    }
}

fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => {
                let host = authority.rsplit('@').next().unwrap_or(authority);
                format!("{scheme}://{host}/{path}")
            }
            None => format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest)),
        },
        None => url.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kiln refuses to write `{refname}`: {why}")]
    Refused { refname: String, why: String },
    #[error("{dest}: branch `{branch}` exists already; kiln never overwrites a branch")]
    Exists { dest: String, branch: String },
    #[error("{dest}: {message}")]
    Destination { dest: String, message: String },
    #[error("{dest} refused the update of {refname}: {message}")]
    Rejected {
        dest: String,
        refname: String,
        message: String,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl PublishError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PublishError {
        let context = context.into();
        move |source| PublishError::Io { context, source }
    }

    /// True when the job or request is at fault (exit 2), false for the machine or remote (exit 3).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            PublishError::Refused { .. } | PublishError::Exists { .. }
        )
    }
}

/// The last check before any ref is written: a full `refs/heads/` name git accepts, with no
/// `..`, that is either under the work-branch prefix and not protected, or a merge target the
/// operator lists and the merge queue is landing.
pub fn guard(refname: &str, config: &Config, merging: bool) -> Result<(), PublishError> {
    let refused = |why: &str| PublishError::Refused {
        refname: refname.into(),
        why: why.into(),
    };
    let Some(name) = refname.strip_prefix("refs/heads/") else {
        return Err(refused("only branches (refs/heads/...) are ever written"));
    };
    if refname.contains("..") || !git2::Reference::is_valid_name(refname) {
        return Err(refused("not a valid branch name"));
    }
    if merging {
        if config.publish.merge_targets.iter().any(|t| t == name) {
            return Ok(());
        }
        return Err(refused(
            "not a merge target the operator config lists ([publish] merge_targets)",
        ));
    }
    BranchName::parse(name, &config.branch_prefix, &config.protected_branches)
        .map(|_| ())
        .map_err(|e| refused(&e.to_string()))
}

/// Credential callbacks for `dest`: the operator's token or ssh key, tried a bounded number of
/// times (libgit2 asks again after each refusal).
fn callbacks(publish: &PublishConfig) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    let mut asked = 0;
    callbacks.credentials(move |_url, user_from_url, allowed| {
        asked += 1;
        if asked > 3 {
            return Err(git2::Error::from_str(
                "the remote refused kiln's credentials ([publish] in the operator config)",
            ));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &publish.ssh_key
        {
            return Cred::ssh_key(user_from_url.unwrap_or("git"), None, key, None);
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && let Some(token) = token(publish).map_err(|e| git2::Error::from_str(&e))?
        {
            let user = publish.username.as_deref().or(user_from_url).unwrap_or("kiln");
            return Cred::userpass_plaintext(user, &token);
        }
        Err(git2::Error::from_str(
            "the remote asks for credentials and the operator config gives none ([publish] token_env, token_file or ssh_key)",
        ))
    });
    callbacks
}

/// The https token, when `[publish]` names one; read from the host when kiln pushes.
fn token(publish: &PublishConfig) -> Result<Option<String>, String> {
    if let Some(var) = &publish.token_env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("[publish] token_env names `{var}`, which is not set"));
    }
    if let Some(file) = &publish.token_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("[publish] token_file {}: {e}", file.display()))?;
        return Ok(text.lines().next().map(|l| l.trim().to_string()));
    }
    Ok(None)
}

/// The branches `dest` has, by full ref name, with their commits.
pub fn remote_heads(
    dest: &Destination,
    config: &Config,
) -> Result<Vec<(String, Oid)>, PublishError> {
    match dest {
        Destination::Local(path) => {
            if !path.exists() {
                return Ok(Vec::new());
            }
            let repo = open_local(path)?;
            let mut heads = Vec::new();
            for reference in repo.references_glob("refs/heads/*")?.flatten() {
                if let (Ok(name), Some(oid)) = (reference.name(), reference.target()) {
                    heads.push((name.to_string(), oid));
                }
            }
            Ok(heads)
        }
        Destination::Url(url) => {
            let scratch = tempfile::tempdir()
                .map_err(PublishError::io("cannot make a scratch repository"))?;
            let repo = Repository::init_bare(scratch.path())?;
            let mut remote = repo.remote_anonymous(url)?;
            let connection = remote
                .connect_auth(
                    git2::Direction::Push,
                    Some(callbacks(&config.publish)),
                    None,
                )
                .map_err(|e| PublishError::Destination {
                    dest: dest.to_string(),
                    message: e.message().to_string(),
                })?;
            let heads = connection
                .list()?
                .iter()
                .filter(|h| h.name().starts_with("refs/heads/"))
                .map(|h| (h.name().to_string(), h.oid()))
                .collect();
            Ok(heads)
        }
    }
}

fn open_local(path: &Path) -> Result<Repository, PublishError> {
    Repository::open(path).map_err(|e| PublishError::Destination {
        dest: path.display().to_string(),
        message: format!("not a git repository ({})", e.message()),
    })
}

/// Checks, before anything runs, that `dest` can take `branch`: reachable (with the operator's
/// credentials), a repository or a path to make one, and without that branch.
pub fn check_destination(
    dest: &Destination,
    branch: &BranchName,
    config: &Config,
) -> Result<(), PublishError> {
    guard(&branch.refname(), config, false)?;
    let heads = remote_heads(dest, config)?;
    if heads.iter().any(|(name, _)| *name == branch.refname()) {
        return Err(PublishError::Exists {
            dest: dest.to_string(),
            branch: branch.to_string(),
        });
    }
    Ok(())
}

/// Writes `commit` (held by the repository at `source`) to `dest` as the new branch `branch`.
/// Refuses when `dest` has the branch already.
#[tracing::instrument(name = "publish", skip_all, fields(kiln.branch = %branch))]
pub fn publish_branch(
    source: &Path,
    commit: Oid,
    branch: &BranchName,
    dest: &Destination,
    config: &Config,
) -> Result<(), PublishError> {
    check_destination(dest, branch, config)?;
    if let Destination::Local(path) = dest
        && !path.exists()
    {
        Repository::init_bare(path).map_err(|e| PublishError::Destination {
            dest: dest.to_string(),
            message: e.message().to_string(),
        })?;
    }
    push(source, commit, &branch.refname(), None, dest, config, false)
}

/// Pushes `commit` from the repository at `source` to `refname` at `dest`. With `expected`, the
/// update is a compare-and-swap: it happens only if `refname` still holds `expected` (for a
/// local destination, under the ref's lock; for a remote, as a fast-forward from it, which the
/// remote checks against what it holds). Without, `refname` must not exist.
pub(crate) fn push(
    source: &Path,
    commit: Oid,
    refname: &str,
    expected: Option<Oid>,
    dest: &Destination,
    config: &Config,
    merging: bool,
) -> Result<(), PublishError> {
    guard(refname, config, merging)?;
    let rejected = |message: String| PublishError::Rejected {
        dest: dest.to_string(),
        refname: refname.into(),
        message,
    };
    match dest {
        Destination::Local(path) => {
            let target = open_local(path)?;
            copy_objects(source, commit, &target)?;
            let message = format!("kiln: {commit}");
            let written = match expected {
                Some(old) => target.reference_matching(refname, commit, true, old, &message),
                None => target.reference(refname, commit, false, &message),
            };
            written
                .map(|_| ())
                .map_err(|e| rejected(e.message().to_string()))
        }
        Destination::Url(url) => {
            let repo = Repository::open_bare(source)?;
            // A temporary ref names the commit to push; it lives only in kiln's private repository.
            let staging = format!("refs/kiln/push/{commit}");
            repo.reference(&staging, commit, true, "kiln: push")?;
            let refusal = std::cell::RefCell::new(None);
            let pushed = {
                let mut remote = repo.remote_anonymous(url)?;
                let mut callbacks = callbacks(&config.publish);
                callbacks.push_update_reference(|name, status| {
                    if let Some(status) = status {
                        *refusal.borrow_mut() = Some(format!("{name}: {status}"));
                    }
                    Ok(())
                });
                let mut opts = PushOptions::new();
                opts.remote_callbacks(callbacks);
                // Never a forced refspec: the remote takes only a new ref or a fast-forward.
                remote.push(&[&format!("{staging}:{refname}")], Some(&mut opts))
            };
            let _ = repo.find_reference(&staging).and_then(|mut r| r.delete());
            pushed.map_err(|e| rejected(e.message().to_string()))?;
            match refusal.into_inner() {
                Some(message) => Err(rejected(message)),
                None => Ok(()),
            }
        }
    }
}

/// Blobs larger than this are copied one by one as a stream, not packed: libgit2 packs an object
/// by reading it whole.
const WHOLE_BLOB: usize = 1 << 20;

/// Copies `commit` and everything it reaches that `target` lacks from the repository at
/// `source` into `target` (no ref is made on the way): one pack written straight into its object
/// database, and each large blob streamed, so memory stays bounded whatever the trees hold.
fn copy_objects(source: &Path, commit: Oid, target: &Repository) -> Result<(), PublishError> {
    let source = Repository::open(source)?;
    let (from, to) = (source.odb()?, target.odb()?);
    let mut walk = source.revwalk()?;
    walk.push(commit)?;
    // What the target already has need not travel.
    for reference in target.references()?.flatten() {
        if let Some(oid) = reference.target()
            && source.find_commit(oid).is_ok()
        {
            walk.hide(oid)?;
        }
    }
    let mut pack = source.packbuilder()?;
    let mut seen = std::collections::HashSet::new();
    let mut trees = Vec::new();
    for oid in walk {
        let oid = oid?;
        if to.exists(oid) {
            continue;
        }
        pack.insert_object(oid, None)?;
        trees.push(source.find_commit(oid)?.tree_id());
    }
    // A tree the target has brings everything under it: it is not entered.
    while let Some(tree) = trees.pop() {
        if !seen.insert(tree) || to.exists(tree) {
            continue;
        }
        pack.insert_object(tree, None)?;
        for entry in source.find_tree(tree)?.iter() {
            let id = entry.id();
            match entry.kind() {
                Some(git2::ObjectType::Tree) => trees.push(id),
                Some(git2::ObjectType::Blob) if seen.insert(id) && !to.exists(id) => {
                    if from.read_header(id)?.0 > WHOLE_BLOB {
                        copy_blob(source.path(), &from, &to, id)?;
                    } else {
                        pack.insert_object(id, None)?;
                    }
                }
                // Submodule commits live in other repositories.
                _ => {}
            }
        }
    }
    if pack.object_count() > 0 {
        // Straight into the destination's pack folder through git's indexer: the pack is never
        // held in memory whole.
        pack.write(&target.path().join("objects").join("pack"), 0)?;
        to.refresh()?;
    }
    Ok(())
}

/// One blob of the repository at `repo` (its odb `from`) into `to`: as a stream where it is
/// loose (as kiln writes a container's files), else read whole. git hashes what it is given, so
/// a copy that differs is caught.
fn copy_blob(
    repo: &Path,
    from: &git2::Odb<'_>,
    to: &git2::Odb<'_>,
    id: Oid,
) -> Result<(), PublishError> {
    let failed = PublishError::io("copying a file into the destination");
    let written = match crate::workspace::loose::open_blob(repo, id) {
        Ok(Some((mut stream, size))) => {
            let mut writer = to.writer(size as usize, git2::ObjectType::Blob)?;
            std::io::copy(&mut stream, &mut writer).map_err(failed)?;
            writer.finalize()?
        }
        Ok(None) => {
            let object = from.read(id)?;
            to.write(object.kind(), object.data())?
        }
        Err(e) => return Err(failed(e)),
    };
    if written != id {
        return Err(PublishError::Git(git2::Error::from_str(&format!(
            "object {id} was copied as {written}"
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_ref_but_the_work_branch_and_listed_targets() {
        let config = Config::default();
        for refname in [
            "refs/heads/main",
            "main",
            "refs/heads/factory/../main",
            "refs/heads/factory/x/../../main",
            "refs/tags/factory/x",
            "refs/heads/release",
            "refs/heads/factory/",
            "HEAD",
        ] {
            assert!(guard(refname, &config, false).is_err(), "{refname}");
        }
        assert!(guard("refs/heads/factory/fix", &config, false).is_ok());
        // The merge queue may write main (listed by default), never anything else.
        assert!(guard("refs/heads/main", &config, true).is_ok());
        assert!(guard("refs/heads/production", &config, true).is_err());
        assert!(guard("refs/heads/factory/../main", &config, true).is_err());
    }

    #[test]
    fn destinations_are_told_apart_and_shown_without_tokens() {
        assert_eq!(
            Destination::parse("file:///srv/repo.git"),
            Destination::Local("/srv/repo.git".into())
        );
        assert_eq!(
            Destination::parse("out.git"),
            Destination::Local("out.git".into())
        );
        let url = Destination::parse("https://kiln:ghp_secret@git.example.com/org/repo.git");
        assert!(matches!(url, Destination::Url(_)));
        assert_eq!(url.to_string(), "https://git.example.com/org/repo.git");
        assert!(matches!(
            Destination::parse("git@github.com:org/repo.git"),
            Destination::Url(_)
        ));
    }
}
