//! `kiln approve`: a human lets an escalated job go on. Its tested commit is published on the
//! work branch and, when the job has a `[merge]` target, goes through the merge queue, which
//! re-tests it on the target's tip before landing it.

use std::path::Path;

use git2::Oid;

use super::merge::{MergeOutcome, MergeTurn};
use super::stage::Stages;
use super::{MergeReport, Progress, blocking};
use crate::ExitCode;
use crate::config::Config;
use crate::error::Error;
use crate::escalation::{self, CANDIDATE_REF, CANDIDATE_REPO, Decision, EscalationError, Verdict};
use crate::model::JobId;
use crate::job::BranchName;
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
pub async fn approve(
    root: &Path,
    id: &str,
    by: &str,
    note: Option<String>,
    config: &Config,
    progress: &Progress,
) -> Result<Approved, Error> {
    let mut found = escalation::open(root, id)?;
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
    let held = crate::workspace::resolve_ref(&source, CANDIDATE_REF)?;
    if held.to_string() != candidate.commit {
        return Err(EscalationError::Invalid(format!(
            "escalation {id}: {} holds {held}, not the tested commit {}; refusing to publish it",
            source.display(),
            candidate.commit
        ))
        .into());
    }
    let dest = Destination::parse(&e.publish.out);
    let sandbox = match &e.merge {
        Some(merge) => {
            let sandbox = Sandbox::connect().await?;
            sandbox.require_image(&merge.test.image).await?;
            sandbox
                .require_image(crate::sandbox::volume_holder_image())
                .await?;
            Some(sandbox)
        }
        None => None,
    };
    {
        let (dest, branch, config) = (dest.clone(), branch.clone(), config.clone());
        blocking(move || Ok(check_destination(&dest, &branch, &config)?)).await?;
    }
    let audit = config.audit()?;
    let record = |kind: &str, data: serde_json::Value| -> Result<(), Error> {
        if let Some(audit) = &audit {
            audit.append(kind, Some(id), data)?;
        }
        Ok(())
    };
    escalation::decide(
        &mut found,
        Decision {
            decision: Verdict::Approved,
            by: by.into(),
            at: escalation::now(),
            note: note.clone(),
        },
    )?;
    if let Err(e) = record(
        "escalation.approved",
        serde_json::json!({"by": by.trim(), "note": note, "commit": candidate.commit}),
    ) {
        escalation::undecide(&mut found)?;
        return Err(e);
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
        escalation::undecide(&mut found)?;
        record(
            "escalation.reopened",
            serde_json::json!({"why": e.to_string()}),
        )?;
        return Err(e);
    }
    record(
        "push",
        serde_json::json!({"dest": dest.to_string(), "ref": branch.refname(), "old": null, "new": candidate.commit}),
    )?;
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
    let input = std::fs::read(
        Path::new(&e.artifacts)
            .join(format!("attempt-{}", candidate.attempt))
            .join("job.json"),
    )
    .unwrap_or_else(|_| b"{}".to_vec());
    let turn = MergeTurn {
        stages: Stages {
            sandbox,
            job: &job,
            limits: &merge.limits,
            loosened: &merge.loosened,
            artifacts: None,
            config,
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
    if let Err(err) = sandbox.reap_job(&job).await {
        tracing::warn!("cleaning up after the merge queue: {err}");
    }
    sandbox.release_spare_volumes().await;
    match outcome? {
        MergeOutcome::Landed { tip, merged } => {
            record(
                "push",
                serde_json::json!({"dest": dest.to_string(), "ref": format!("refs/heads/{}", merge.target), "old": tip.to_string(), "new": merged.to_string()}),
            )?;
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
pub fn reject(root: &Path, id: &str, by: &str, note: &str, config: &Config) -> Result<(), Error> {
    let mut found = escalation::open(root, id)?;
    escalation::decide(
        &mut found,
        Decision {
            decision: Verdict::Rejected,
            by: by.trim().into(),
            at: escalation::now(),
            note: Some(note.into()),
        },
    )?;
    if let Some(audit) = config.audit()? {
        let data = serde_json::json!({"by": by.trim(), "note": note});
        if let Err(e) = audit.append("escalation.rejected", Some(id), data) {
            escalation::undecide(&mut found)?;
            return Err(e.into());
        }
    }
    Ok(())
}
