//! `kiln approve`: a human lets an escalated job go on. Its tested commit is published on the
//! work branch and, when the job has a `[merge]` target, goes through the merge queue, which
//! re-tests it on the target's tip before landing it.

use std::path::Path;

use crate::artifacts::Artifacts;

use git2::Oid;

use super::merge::{MergeOutcome, MergeTurn};
use super::stage::Stages;
use super::{Context, MergeReport, Progress, blocking};
use crate::audit::{Event, Push};
use crate::error::Error;
use crate::escalation::{
    self, CANDIDATE_REF, CANDIDATE_REPO, Decision, EscalationError, Found, Verdict,
};
use crate::job::BranchName;
use crate::model::time::now;
use crate::model::{ExitCode, JobId};
use crate::publish::{Destination, check_destination, publish_branch};
use crate::sandbox::Sandbox;

/// What an approval did.
pub struct Approved {
    pub commit: String,
    pub branch: String,
    pub out: String,
    /// The merge queue's landing, when the job has a target and it landed.
    pub merged: Option<MergeReport>,
    /// Why the approved change did not land on its target, when it did not.
    pub not_merged: Option<String>,
    /// 0 when published (and merged, if asked); 12 when the merge queue could not land it.
    pub exit_code: ExitCode,
}

/// Approves the open escalation `id` under the artifacts root `root` (by `by`, with `note`),
/// publishes its tested commit and, when the job asks, merges it.
#[tracing::instrument(name = "approve", skip_all, fields(kiln.job_id = %id))]
pub async fn approve(
    root: &Path,
    id: &str,
    by: &str,
    note: Option<String>,
    ctx: &Context,
    progress: &Progress,
) -> Result<Approved, Error> {
    let config = &ctx.config;
    let mut found = {
        let (root, id) = (root.to_path_buf(), id.to_string());
        blocking(move || Ok(escalation::open(&root, &id)?)).await?
    };
    if let Some(d) = &found.decision {
        let what = format!("{} by {} at {}", found.state(), d.by, d.at);
        return Err(EscalationError::Decided(id.into(), what).into());
    }
    let e = found.escalation.clone();
    let candidate = e
        .candidate
        .clone()
        .ok_or_else(|| EscalationError::NothingToApprove(id.into()))?;
    let branch = BranchName::parse(
        &e.publish.branch,
        &config.branch_prefix,
        &config.protected_branches,
    )
    .map_err(|err| EscalationError::Invalid(format!("escalation {id}: {err}")))?;
    let job = JobId::parse(&e.id)
        .ok_or_else(|| EscalationError::Invalid(format!("escalation {id}: not a job id")))?;
    let source = found.dir.join(CANDIDATE_REPO);
    let held = {
        let source = source.clone();
        blocking(move || Ok(crate::workspace::resolve_ref(&source, CANDIDATE_REF)?)).await?
    };
    if held.to_string() != candidate.commit {
        return Err(EscalationError::Invalid(format!(
            "escalation {id}: {} holds {held}, not the tested commit {}; refusing to publish it",
            source.display(),
            candidate.commit
        ))
        .into());
    }
    let dest = Destination::parse(&e.publish.out);
    if let Some(merge) = &e.merge {
        // The record was written under the operator config of its day: what the re-test would
        // run with is checked against today's.
        let stale = |why: String| EscalationError::Invalid(format!("escalation {id}: {why}"));
        if !config.publish.merge_targets.contains(&merge.target) {
            return Err(stale(format!(
                "merge target `{}` is not in the operator config's [publish] merge_targets",
                merge.target
            ))
            .into());
        }
        crate::job::recheck_stage(
            config,
            &merge.test,
            &merge.limits,
            &merge.loosened,
            &ctx.secrets,
        )
        .map_err(|e| stale(e.to_string()))?;
    }
    let sandbox = match &e.merge {
        Some(merge) => {
            let sandbox = Sandbox::connect().await?;
            sandbox
                .require_confinement(&config.sandbox.runtimes())
                .await?;
            crate::images::require(&sandbox, &merge.test.image).await?;
            crate::images::require(&sandbox, crate::sandbox::volume_holder_image()).await?;
            Some(sandbox)
        }
        None => None,
    };
    {
        let (dest, branch, config) = (dest.clone(), branch.clone(), config.clone());
        blocking(move || Ok(check_destination(&dest, &branch, &config)?)).await?;
    }
    let record = |event: Event| ctx.record(&job, event);
    let decision = Decision {
        decision: Verdict::Approved,
        by: by.into(),
        at: now(),
        note: note.clone(),
    };
    found = decide(found, decision).await?;
    let approved = Event::EscalationApproved {
        by: by.trim().into(),
        note,
        commit: candidate.commit.clone(),
    };
    if let Err(e) = record(approved).await {
        undecide(found).await?;
        return Err(e.into());
    }
    let commit = Oid::from_str(&candidate.commit)
        .map_err(|err| EscalationError::Invalid(format!("escalation {id}: {err}")))?;
    let published = {
        let (source, branch, dest, config) =
            (source.clone(), branch.clone(), dest.clone(), config.clone());
        blocking(move || Ok(publish_branch(&source, commit, &branch, &dest, &config)?)).await
    };
    if let Err(e) = published {
        // The approval claimed the escalation first (so that no one else decides meanwhile);
        // nothing came of it, so it is taken back and may be made again.
        undecide(found).await?;
        record(Event::EscalationReopened { why: e.to_string() }).await?;
        return Err(e);
    }
    record(Event::Push(Push {
        dest: dest.to_string(),
        refname: branch.refname(),
        old: None,
        new: candidate.commit.clone(),
    }))
    .await?;
    let mut approved = Approved {
        commit: candidate.commit.clone(),
        branch: branch.to_string(),
        out: dest.to_string(),
        merged: None,
        not_merged: None,
        exit_code: ExitCode::Success,
    };
    let (Some(merge), Some(sandbox)) = (&e.merge, &sandbox) else {
        return Ok(approved);
    };
    let files = Artifacts::at(e.artifacts.clone().into(), ctx.redactor().clone());
    let input = tokio::fs::read(files.attempt_file(candidate.attempt, "job.json"))
        .await
        .unwrap_or_else(|_| b"{}".to_vec());
    let turn = MergeTurn {
        stages: Stages {
            sandbox,
            job: &job,
            limits: &merge.limits,
            loosened: &merge.loosened,
            artifacts: None,
            ctx,
            spend: None,
        },
        repo: &source,
        change: commit,
        message: format!(
            "kiln: merge {branch} into {} (approved by {by})",
            merge.target
        ),
        target: &merge.target,
        test: &merge.test,
        input: &input,
        attempt: candidate.attempt,
        dest: &dest,
        config,
    };
    let outcome = turn.run(progress).await;
    sandbox.swept().await;
    if let Err(err) = sandbox.reap_job(&job).await {
        tracing::warn!("cleaning up after the merge queue: {err}");
    }
    sandbox.release_spare_volumes().await;
    match outcome? {
        MergeOutcome::Landed { tip, merged } => {
            record(Event::Push(Push {
                dest: dest.to_string(),
                refname: format!("refs/heads/{}", merge.target),
                old: Some(tip.to_string()),
                new: merged.to_string(),
            }))
            .await?;
            approved.merged = Some(MergeReport {
                target: merge.target.clone(),
                onto: tip.to_string(),
                commit: merged.to_string(),
            });
        }
        MergeOutcome::Conflict { paths, .. } => {
            approved.not_merged = Some(format!(
                "it conflicts with {} on {}",
                merge.target,
                paths.join(", ")
            ));
            approved.exit_code = ExitCode::TestsFailed;
        }
        MergeOutcome::Red { .. } => {
            approved.not_merged = Some(format!("merged onto {} its tests fail", merge.target));
            approved.exit_code = ExitCode::TestsFailed;
        }
    }
    Ok(approved)
}

/// Rejects the open escalation `id` under the artifacts root `root`: nothing is published.
pub async fn reject(
    root: &Path,
    id: &str,
    by: &str,
    note: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let found = {
        let (root, id) = (root.to_path_buf(), id.to_string());
        blocking(move || Ok(escalation::open(&root, &id)?)).await?
    };
    let job = JobId::parse(&found.escalation.id)
        .ok_or_else(|| EscalationError::Invalid(format!("escalation {id}: not a job id")))?;
    let decision = Decision {
        decision: Verdict::Rejected,
        by: by.trim().into(),
        at: now(),
        note: Some(note.into()),
    };
    let found = decide(found, decision).await?;
    let rejected = Event::EscalationRejected {
        by: by.trim().into(),
        note: note.into(),
    };
    if let Err(e) = ctx.record(&job, rejected).await {
        undecide(found).await?;
        return Err(e.into());
    }
    Ok(())
}

/// Records `decision` (first decision wins), off the async threads.
async fn decide(mut found: Found, decision: Decision) -> Result<Found, Error> {
    blocking(move || {
        escalation::decide(&mut found, decision)?;
        Ok(found)
    })
    .await
}

/// Takes back a decision nothing came of, off the async threads.
async fn undecide(mut found: Found) -> Result<(), Error> {
    blocking(move || Ok(escalation::undecide(&mut found)?)).await
}
