//! A job's turn in the merge queue: wait for the target's queue, merge the change onto the
//! target's current tip, re-test the merged tree in a fresh container, and land it by
//! compare-and-swap. A target another writer moved meanwhile makes the turn start again on the
//! new tip (a few times at most); a conflict or a red merged tree ends the turn unlanded.

use std::path::Path;
use std::time::Duration;

use super::stage::{Ran, Stages};
use super::{Progress, Step, blocking, short};
use crate::config::Config;
use crate::error::Error;
use crate::model::Stage;
use crate::model::StageSpec;
use crate::publish::merge::{Landed, Merged, QueueLock, fetch_tip, land, merge_onto};
use crate::publish::{Destination, PublishError};
use git2::Oid;

/// How long a job waits for another job's turn on the same target.
const QUEUE_WAIT: Duration = Duration::from_secs(3600);
/// How many times a turn starts again on a tip another writer moved.
const MAX_ROUNDS: u32 = 5;

/// One turn in the queue.
pub(crate) struct MergeTurn<'a> {
    pub stages: Stages<'a>,
    /// The repository holding the change (kiln's private one, or an escalation's candidate).
    pub repo: &'a Path,
    pub change: Oid,
    /// What the merge commit says.
    pub message: String,
    pub target: &'a str,
    pub test: &'a StageSpec,
    /// `job.json` for the test container.
    pub input: &'a [u8],
    pub attempt: u32,
    pub dest: &'a Destination,
    pub config: &'a Config,
}

/// How a turn ended.
pub(crate) enum MergeOutcome {
    /// The target now holds `merged`, made on `tip`.
    Landed {
        tip: Oid,
        merged: Oid,
    },
    Conflict {
        tip: Oid,
        paths: Vec<String>,
    },
    /// The merged tree failed its tests.
    Red {
        tip: Oid,
        tested: Box<Ran>,
    },
}

impl MergeTurn<'_> {
    #[tracing::instrument(name = "merge", skip_all, fields(kiln.target = %self.target))]
    pub(crate) async fn run(&self, progress: &Progress) -> Result<MergeOutcome, Error> {
        let timer = progress.start(Step::MergeQueue {
            target: self.target.to_string(),
        });
        let _queue = QueueLock::acquire(self.dest, self.target, QUEUE_WAIT).await?;
        for _ in 0..MAX_ROUNDS {
            let (repo, dest, config) = (
                self.repo.to_path_buf(),
                self.dest.clone(),
                self.config.clone(),
            );
            let target = self.target.to_string();
            let tip = blocking(move || Ok(fetch_tip(&repo, &target, &dest, &config)?)).await?;
            let (repo, change, who, message) = (
                self.repo.to_path_buf(),
                self.change,
                self.config.commit.clone(),
                self.message.clone(),
            );
            let merged =
                blocking(move || Ok(merge_onto(&repo, change, tip, &who, &message)?)).await?;
            let (commit, tree) = match merged {
                Merged::Conflict { tip, paths } => {
                    timer.done(&format!("conflict on {}", paths.join(", ")));
                    return Ok(MergeOutcome::Conflict { tip, paths });
                }
                Merged::Clean { commit, tree, .. } => (commit, tree),
            };
            let tested = self
                .stages
                .test(
                    (Stage::MergeTest, self.attempt),
                    (self.repo, tree),
                    self.input,
                    self.test,
                    None,
                )
                .await?;
            if !tested.succeeded() {
                timer.done(&format!("merged tree failed its tests on {}", short(tip)));
                return Ok(MergeOutcome::Red {
                    tip,
                    tested: Box::new(tested),
                });
            }
            let (repo, dest, config, target) = (
                self.repo.to_path_buf(),
                self.dest.clone(),
                self.config.clone(),
                self.target.to_string(),
            );
            let landed =
                blocking(move || Ok(land(&repo, commit, tip, &target, &dest, &config)?)).await?;
            match landed {
                Landed::Updated => {
                    timer.done(&format!(
                        "{} → {} re-tested and landed",
                        short(tip),
                        short(commit)
                    ));
                    return Ok(MergeOutcome::Landed {
                        tip,
                        merged: commit,
                    });
                }
                Landed::Moved => {
                    progress.line(&format!(
                        "  {} moved while the merge was tested; merging again on its new tip",
                        self.target
                    ));
                }
            }
        }
        Err(PublishError::Destination {
            dest: self.dest.to_string(),
            message: format!(
                "`{}` kept moving: {MAX_ROUNDS} merges were overtaken",
                self.target
            ),
        }
        .into())
    }
}
