//! The merge queue: for each destination and target branch, one job at a time merges its change
//! onto the target's current tip, has the merged tree re-tested (the caller runs the tests in a
//! fresh container), and updates the target only if green, by compare-and-swap. A target that
//! moved meanwhile makes the step start again on the new tip; it is never overwritten.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use git2::{FetchOptions, Oid, Repository, Signature};
use sha2::{Digest, Sha256};

use super::{Destination, PublishError, callbacks, copy_objects, guard, push};
use crate::config::{CommitIdentity, Config};
use crate::model::fs::create_private_dir;

/// Where a target's tip is fetched to in the private repository.
const TIP_NS: &str = "refs/kiln/target";

/// The queue of one target at one destination, held until dropped. Other kiln processes wait.
pub struct QueueLock {
    _lock: nix::fcntl::Flock<File>,
}

impl QueueLock {
    /// Waits up to `wait` for the queue of `target` at `dest`: a lock file in kiln's cache
    /// folder, so every kiln process on this machine shares it.
    pub async fn acquire(
        dest: &Destination,
        target: &str,
        wait: Duration,
    ) -> Result<QueueLock, PublishError> {
        let dir = crate::config::cache_dir()
            .ok_or_else(|| PublishError::Destination {
                dest: dest.to_string(),
                message: "no cache folder for the merge queue's lock: set HOME or KILN_CACHE_DIR"
                    .into(),
            })?
            .join("merge-queue");
        create_private_dir(&dir).map_err(PublishError::io(format!(
            "merge queue lock folder {}",
            dir.display()
        )))?;
        let key = format!("{:x}", Sha256::digest(format!("{}\0{target}", dest.key())));
        let path = dir.join(format!("{key}.lock"));
        let io = |e| PublishError::io(format!("merge queue lock {}", path.display()))(e);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(QueueLock { _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PublishError::Destination {
                            dest: dest.to_string(),
                            message: format!(
                                "the merge queue of `{target}` stayed busy for {wait:?}"
                            ),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
            }
        }
    }
}

/// A change merged onto the target's tip, or why it could not be.
#[derive(Debug)]
pub enum Merged {
    /// `commit` (a merge commit, or the change itself when the target had not moved past its
    /// base) with `tree`, on top of `tip`.
    Clean { tip: Oid, commit: Oid, tree: Oid },
    /// These paths conflict with what the target has now.
    Conflict { tip: Oid, paths: Vec<String> },
}

/// The tip of `target` at `dest`, fetched into the private repository at `private`.
pub fn fetch_tip(
    private: &Path,
    target: &str,
    dest: &Destination,
    config: &Config,
) -> Result<Oid, PublishError> {
    guard(&format!("refs/heads/{target}"), config, true)?;
    let missing = || PublishError::Destination {
        dest: dest.to_string(),
        message: format!("has no branch `{target}` to merge into"),
    };
    let repo = Repository::open_bare(private)?;
    match dest {
        Destination::Local(path) => {
            let source = Repository::open(path).map_err(|_| missing())?;
            let tip = source
                .find_reference(&format!("refs/heads/{target}"))
                .map_err(|_| missing())?
                .peel_to_commit()?
                .id();
            copy_objects(path, tip, &repo)?;
            Ok(tip)
        }
        Destination::Url(url) => {
            let local = format!("{TIP_NS}/{target}");
            let mut remote = repo.remote_anonymous(url)?;
            let mut opts = FetchOptions::new();
            opts.remote_callbacks(callbacks(&config.publish));
            opts.download_tags(git2::AutotagOption::None);
            remote
                .fetch(
                    &[&format!("+refs/heads/{target}:{local}")],
                    Some(&mut opts),
                    None,
                )
                .map_err(|e| PublishError::Destination {
                    dest: dest.to_string(),
                    message: e.message().to_string(),
                })?;
            let tip = repo.find_reference(&local).map_err(|_| missing())?;
            Ok(tip.peel_to_commit()?.id())
        }
    }
}

/// Merges `change` onto `tip` in the private repository at `private`.
pub fn merge_onto(
    private: &Path,
    change: Oid,
    tip: Oid,
    who: &CommitIdentity,
    message: &str,
) -> Result<Merged, PublishError> {
    let repo = Repository::open_bare(private)?;
    let base = repo.merge_base(tip, change)?;
    if base == tip {
        let tree = repo.find_commit(change)?.tree_id();
        return Ok(Merged::Clean {
            tip,
            commit: change,
            tree,
        });
    }
    let ours = repo.find_commit(tip)?;
    let theirs = repo.find_commit(change)?;
    let mut index = repo.merge_commits(&ours, &theirs, None)?;
    if index.has_conflicts() {
        let mut paths: Vec<String> = index
            .conflicts()?
            .flatten()
            .filter_map(|c| c.our.or(c.their).or(c.ancestor))
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        paths.sort();
        paths.dedup();
        return Ok(Merged::Conflict { tip, paths });
    }
    let tree_id = index.write_tree_to(&repo)?;
    let tree = repo.find_tree(tree_id)?;
    let signature = Signature::now(&who.name, &who.email)?;
    let commit = repo.commit(
        None,
        &signature,
        &signature,
        message,
        &tree,
        &[&ours, &theirs],
    )?;
    Ok(Merged::Clean {
        tip,
        commit,
        tree: tree_id,
    })
}

/// How landing a merged commit went.
#[derive(Debug, PartialEq, Eq)]
pub enum Landed {
    /// The target now holds the merged commit.
    Updated,
    /// The target moved away from the tip the merge was made on; nothing was written.
    Moved,
}

/// Updates `target` at `dest` from `tip` to `commit`, only if it still holds `tip`.
pub fn land(
    private: &Path,
    commit: Oid,
    tip: Oid,
    target: &str,
    dest: &Destination,
    config: &Config,
) -> Result<Landed, PublishError> {
    let refname = format!("refs/heads/{target}");
    match push(private, commit, &refname, Some(tip), dest, config, true) {
        Ok(()) => Ok(Landed::Updated),
        Err(PublishError::Rejected { .. }) if fetch_tip(private, target, dest, config)? != tip => {
            Ok(Landed::Moved)
        }
        Err(e) => Err(e),
    }
}
