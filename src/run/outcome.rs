//! What becomes of a passing change: the reviewer's and the gate's verdicts decide whether it is
//! held for a human (its tested commit kept for `kiln approve`), published on the work branch,
//! or merged through the merge queue; and the escalation of a job that ends for a human.

use std::sync::Arc;

use git2::Oid;

use super::attempt::{Passed, Retry};
use super::input::{Feedback, MergeFeedback};
use super::merge::{MergeOutcome, MergeTurn};
use super::{Context, End, Progress, RunOptions, Runner, Step, blocking, short};
use crate::artifacts::Artifacts;
use crate::audit::{Event, Push};
use crate::error::Error;
use crate::escalation::{self, Candidate, Kind};
use crate::job::Job;
use crate::model::Status;
use crate::policy::Decision;
use crate::publish::{Destination, publish_branch};
use crate::report::{CommitReport, EscalationReport, MergeReport, Report};
use crate::review::{ReviewVerdict, VerdictKind};
use crate::workspace::Workspace;

/// What the attempt loop does after a passing attempt.
pub(super) enum AfterPass {
    /// The job ends.
    End(End),
    /// The next attempt builds on this one: the reviewer requested changes.
    Retry(Retry),
    /// The next attempt starts over on the workspace's new base: the merge queue could not land.
    Restart(Feedback),
}

impl Runner<'_> {
    /// Reviews, judges, and publishes or merges the passing attempt `n`, or says why not.
    pub(super) async fn after_pass(
        &mut self,
        ws: &Arc<Workspace>,
        n: u32,
        passed: Passed,
        opts: &RunOptions,
    ) -> Result<AfterPass, Error> {
        let job = self.job;
        let Passed {
            tree,
            diff,
            patch,
            tested,
            input,
            retry,
        } = passed;
        let verdict = match &job.review {
            Some(spec) => Some(self.review(ws, n, tree, &patch, &tested, spec).await?),
            None => None,
        };
        if let Some(v) = verdict.as_ref()
            && v.verdict == VerdictKind::RequestChanges
            && n < job.max_attempts
        {
            self.progress.line(&format!(
                "  the reviewer requested changes; attempt {} gets its comments",
                n + 1
            ));
            return Ok(AfterPass::Retry(Retry {
                next: retry.next.with_review(v.clone()),
                ..retry
            }));
        }
        let decision = match self.gate.clone() {
            Some(gate) => Some(self.judge(gate, diff, verdict.as_ref()).await?),
            None => None,
        };
        let secrets = self.attempts.last().map_or(0, |a| a.secrets_redacted);
        if let Some((status, why)) = held(decision, verdict.as_ref(), secrets) {
            let reason = format!("tests passed on attempt {n}; {why}");
            let mut end = End::new(status, reason);
            if Kind::of(status).is_some() {
                end.candidate = Some(self.keep_candidate(ws, tree, n).await?);
            }
            return Ok(AfterPass::End(end));
        }
        let Some(merge) = &job.merge else {
            let commit = self.publish(ws, tree, n, opts, None).await?;
            let reason = format!("tests passed on attempt {n}");
            return Ok(AfterPass::End(End {
                commit: Some(commit),
                ..End::new(Status::Succeeded, reason)
            }));
        };
        // The merge queue takes only what the bundle lets merge by itself; anything
        // else waits for a human, whose approval merges it.
        if let Some(why) = self.not_auto_mergeable() {
            let reason = format!(
                "tests passed on attempt {n}; merging into {} needs a human: {why}",
                merge.target
            );
            let mut end = End::new(Status::AwaitingReview, reason);
            end.candidate = Some(self.keep_candidate(ws, tree, n).await?);
            return Ok(AfterPass::End(end));
        }
        let change = self.commit(ws, tree, n).await?;
        still_held(opts).await?;
        let turn = MergeTurn {
            stages: self.stages(),
            repo: &ws.repo_path(),
            change,
            message: format!("kiln: merge {} into {}", job.branch, merge.target),
            target: &merge.target,
            test: &job.test,
            input: &input,
            attempt: n,
            dest: &self.destination(opts),
            config: &self.ctx.config,
        };
        let (tip, why) = match turn.run(&self.progress).await? {
            MergeOutcome::Landed { tip, merged } => {
                self.record(Event::Push(Push {
                    dest: self.destination(opts).to_string(),
                    refname: format!("refs/heads/{}", merge.target),
                    old: Some(tip.to_string()),
                    new: merged.to_string(),
                }))
                .await?;
                let landed = MergeReport {
                    target: merge.target.clone(),
                    onto: tip.to_string(),
                    commit: merged.to_string(),
                };
                let commit = self.publish(ws, tree, n, opts, Some(change)).await?;
                let commit = CommitReport {
                    merged: Some(landed),
                    ..commit
                };
                let reason = format!(
                    "tests passed on attempt {n}; merged into {} and re-tested",
                    merge.target
                );
                return Ok(AfterPass::End(End {
                    commit: Some(commit),
                    ..End::new(Status::Succeeded, reason)
                }));
            }
            MergeOutcome::Conflict { tip, paths } => {
                let why = MergeFeedback::conflict(&merge.target, tip, paths);
                (tip, why)
            }
            MergeOutcome::Red { tip, tested } => {
                let why = MergeFeedback::red(&merge.target, tip, &tested);
                (tip, why)
            }
        };
        if n < job.max_attempts {
            // The next attempt makes the change again on the target's new tip.
            self.progress.line(&format!(
                "  attempt {} starts again on {} at {}",
                n + 1,
                merge.target,
                short(tip)
            ));
            let rebased = ws.clone();
            blocking(move || Ok(rebased.rebase(tip)?)).await?;
            return Ok(AfterPass::Restart(retry.next.with_merge(why)));
        }
        let reason = format!(
            "tests passed on attempt {n}, but {}; no attempts are left",
            why.summary()
        );
        let mut end = End::new(Status::MergeEscalated, reason);
        end.candidate = Some(self.keep_candidate(ws, tree, n).await?);
        Ok(AfterPass::End(end))
    }

    /// Keeps the tested `tree` of attempt `n` in the escalation folder for `kiln approve`.
    async fn keep_candidate(
        &self,
        ws: &Arc<Workspace>,
        tree: Oid,
        n: u32,
    ) -> Result<Candidate, Error> {
        let dest = self.artifacts.escalation().join(escalation::CANDIDATE_REPO);
        let message = commit_message(self.job, n);
        let (ws, who) = (ws.clone(), self.ctx.config.commit.clone());
        let commit = blocking(move || Ok(ws.keep_candidate(tree, &who, &message, &dest)?)).await?;
        Ok(Candidate {
            commit: commit.to_string(),
            attempt: n,
        })
    }

    /// Commits the tested `tree` of attempt `n` in the private repository (on the work branch,
    /// there only).
    async fn commit(&self, ws: &Arc<Workspace>, tree: Oid, n: u32) -> Result<Oid, Error> {
        let message = commit_message(self.job, n);
        let (ws, branch, who) = (
            ws.clone(),
            self.job.branch.clone(),
            self.ctx.config.commit.clone(),
        );
        blocking(move || Ok(ws.commit(tree, &branch, &who, &message)?)).await
    }

    /// Publishes the work branch: `commit` when the merge queue already made it, else a new
    /// commit of `tree`.
    async fn publish(
        &self,
        ws: &Arc<Workspace>,
        tree: Oid,
        attempts: u32,
        opts: &RunOptions,
        commit: Option<Oid>,
    ) -> Result<CommitReport, Error> {
        let job = self.job;
        let timer = self.progress.start(Step::Publish);
        let oid = match commit {
            Some(oid) => oid,
            None => self.commit(ws, tree, attempts).await?,
        };
        let dest = self.destination(opts);
        still_held(opts).await?;
        let (source, branch, config, to) = (
            ws.repo_path(),
            job.branch.clone(),
            self.ctx.config.clone(),
            dest.clone(),
        );
        blocking(move || Ok(publish_branch(&source, oid, &branch, &to, &config)?)).await?;
        self.record(Event::Push(Push {
            dest: dest.to_string(),
            refname: job.branch.refname(),
            old: None,
            new: oid.to_string(),
        }))
        .await?;
        timer.done(&format!("{} on {} in {dest}", short(oid), job.branch));
        Ok(CommitReport {
            oid: oid.to_string(),
            branch: job.branch.to_string(),
            repository: dest.to_string(),
            merged: None,
        })
    }

    /// Why the gate does not let this change merge by itself, if it does not.
    fn not_auto_mergeable(&self) -> Option<String> {
        let Some(gate) = &self.gate_result else {
            return Some("no policy bundle judged it (--policies)".into());
        };
        let auto = &gate.auto_merge;
        if auto.eligible {
            return None;
        }
        if !auto.allowed_by_bundle {
            return Some("the bundle does not allow auto-merge".into());
        }
        let failed: Vec<&str> = auto.failed_conditions.iter().map(|c| c.as_str()).collect();
        Some(format!(
            "auto-merge conditions not met: {}",
            failed.join(", ")
        ))
    }
}

/// Writes the escalation folder of a job that ended for a human to decide, and announces it.
pub(super) async fn escalate(
    report: &Report,
    job: &Job,
    ctx: &Context,
    artifacts: &Artifacts,
    candidate: Option<Candidate>,
    out: &Destination,
    progress: &Progress,
) -> Result<EscalationReport, Error> {
    let escalation = {
        let (report, job, files, out) = (
            report.clone(),
            job.clone(),
            artifacts.clone(),
            out.to_string(),
        );
        blocking(move || Ok(escalation::write(&report, &job, candidate, &out, &files)?)).await?
    };
    let dir = artifacts.escalation();
    let summary = dir.join("summary.html");
    progress.line(&format!("  escalated: {}", summary.display()));
    let notice = escalation.notice(summary.display().to_string());
    let deliveries = crate::notify::deliver(&ctx.config.notify, &notice).await;
    let deliveries = artifacts
        .write_json_async(dir.join("deliveries.json"), deliveries)
        .await?;
    Ok(EscalationReport {
        dir: dir.display().to_string(),
        summary_html: summary.display().to_string(),
        notified: deliveries.iter().any(|d| d.ok),
        deliveries,
    })
}

/// Refuses to go on when this process no longer holds the job (`RunOptions::holds`).
async fn still_held(opts: &RunOptions) -> Result<(), Error> {
    let Some(holds) = opts.holds.clone() else {
        return Ok(());
    };
    blocking(move || holds().map_err(|why| Error::Server(format!("nothing was published: {why}"))))
        .await
}

/// Why a passing change is held back rather than published, if it is: the gate's decision and
/// the reviewer's verdict combined, deny first.
/// A change in which kiln found and redacted a configured secret (`secrets` files, links or
/// paths) is escalated whatever the reviewer and the gate say, unless the gate denies it.
fn held(
    decision: Option<Decision>,
    verdict: Option<&ReviewVerdict>,
    secrets: usize,
) -> Option<(Status, String)> {
    let gate = |d: Decision| format!("the policy gate decided {}", d.as_str());
    if decision == Some(Decision::Deny) {
        return Some((Status::PolicyDenied, gate(Decision::Deny)));
    }
    if secrets > 0 {
        return Some((
            Status::PolicyEscalated,
            format!(
                "the change held a configured secret ({secrets} file(s) or path(s), now [REDACTED:NAME]); a human decides"
            ),
        ));
    }
    if let Some(v) = verdict.filter(|v| v.verdict != VerdictKind::Approve) {
        let why = match (&v.invalid, v.verdict) {
            (Some(invalid), _) => format!("the reviewer's verdict counts as escalate: {invalid}"),
            (None, VerdictKind::RequestChanges) => {
                "the reviewer still requests changes after the last attempt".to_string()
            }
            (None, _) => "the reviewer escalated".to_string(),
        };
        return Some((Status::ReviewEscalated, why));
    }
    match decision? {
        Decision::Allow => None,
        Decision::Review => Some((Status::AwaitingReview, gate(Decision::Review))),
        Decision::Escalate => Some((Status::PolicyEscalated, gate(Decision::Escalate))),
        Decision::Deny => unreachable!("deny returned above"),
    }
}

/// The message of the commit kiln makes of a job's tested tree.
fn commit_message(job: &Job, attempts: u32) -> String {
    let first_line: String = job
        .prompt
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(72)
        .collect();
    format!(
        "kiln: job {}\n\n{first_line}\n\nKiln-Job: {}\nKiln-Attempts: {attempts}\n",
        job.id, job.id
    )
}
