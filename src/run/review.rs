//! The reviewer stage: once the tests pass, a reviewer agent gets the tested tree (mounted
//! read-only) and `/kiln/review.json`, in a fresh container with every sandbox default, and
//! leaves its verdict in `/kiln/out/verdict.json`, the one place it may write.

use std::sync::Arc;

use git2::Oid;
use serde::Serialize;
use tracing::{Instrument, info_span};

use super::Runner;
use super::stage::{Ran, stage_report};
use crate::error::Error;
use crate::model::text::{head_text, tail_text};
use crate::model::{ByteSize, Stage, StageSpec};
use crate::policy::TestInfo;
use crate::report::ReviewReport;
use crate::review::{MAX_VERDICT_BYTES, ReviewVerdict, VERDICT_PATH, single_file_from_tar};
use crate::sandbox::WORKSPACE_DIR;
use crate::workspace::Workspace;

/// Most bytes of the diff given to the reviewer.
const REVIEW_DIFF_BYTES: usize = 256 << 10;
/// Most bytes of the passing test output given to the reviewer.
const REVIEW_TEST_BYTES: usize = 16 << 10;
/// Size of the reviewer's output volume.
const OUT_VOLUME: ByteSize = ByteSize::mib(1);

/// What the reviewer finds in `/kiln/review.json` (schema `kiln.review-input/v1`, docs/job.md).
#[derive(Serialize)]
struct ReviewInput<'a> {
    schema: &'static str,
    job_id: &'a str,
    attempt: u32,
    max_attempts: u32,
    prompt: &'a str,
    test_requirements: Option<&'a str>,
    branch: &'a str,
    /// The tested tree, read-only.
    workspace: &'static str,
    /// Where the verdict goes.
    verdict_path: &'static str,
    /// The change against the base, as a unified diff.
    diff: &'a str,
    diff_truncated: bool,
    tests: &'a [TestInfo],
    /// The last bytes of the passing test run's output.
    test_output_tail: String,
}

impl Runner<'_> {
    /// Runs the reviewer on the tested `tree` of attempt `n` and returns its verdict; anything
    /// short of a well-formed verdict from a reviewer that exited 0 is `escalate`.
    pub(super) async fn review(
        &mut self,
        ws: &Arc<Workspace>,
        n: u32,
        tree: Oid,
        patch: &str,
        tested: &Ran,
        spec: &StageSpec,
    ) -> Result<ReviewVerdict, Error> {
        let job = self.job;
        let dir = self.artifacts.attempt(n);
        let diff = head_text(patch, REVIEW_DIFF_BYTES);
        let tests = self.tests();
        let input = serde_json::to_vec_pretty(&ReviewInput {
            schema: "kiln.review-input/v1",
            job_id: job.id.as_str(),
            attempt: n,
            max_attempts: job.max_attempts,
            prompt: &job.prompt,
            test_requirements: job.test_requirements.as_deref(),
            branch: job.branch.as_str(),
            workspace: WORKSPACE_DIR,
            verdict_path: VERDICT_PATH,
            diff,
            diff_truncated: diff.len() < patch.len(),
            tests: &tests,
            test_output_tail: tail_text(&tested.output_bytes, REVIEW_TEST_BYTES),
        })
        .map_err(Error::Json)?;
        let input = self
            .artifacts
            .write_async(dir.join("review.json"), input)
            .await?;

        let timer = self.progress.start(self.step(n, Stage::Review));
        let (ran, verdict) = self.run_reviewer(ws, n, tree, &input, spec).await?;
        let comments = verdict.comments.len();
        timer.done(&format!(
            "{} ({comments} comment{}){}",
            verdict.verdict.as_str(),
            if comments == 1 { "" } else { "s" },
            verdict
                .invalid
                .as_deref()
                .map(|why| format!("; {why}"))
                .unwrap_or_default()
        ));
        let files = &self.artifacts;
        files
            .write_async(dir.join("review.log"), ran.output_bytes.clone())
            .await?;
        let verdict = files
            .write_json_async(dir.join("verdict.json"), verdict)
            .await?;
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.review = Some(ReviewReport {
                stage: stage_report(spec, &ran),
                verdict: verdict.clone(),
            });
        }
        Ok(verdict)
    }

    async fn run_reviewer(
        &self,
        ws: &Arc<Workspace>,
        n: u32,
        tree: Oid,
        input: &[u8],
        spec: &StageSpec,
    ) -> Result<(Ran, ReviewVerdict), Error> {
        let stages = self.stages();
        let span = info_span!("stage", kiln.stage = %Stage::Review);
        let (volume, out) = stages
            .review_volumes(&ws.repo_path(), n, tree, input, OUT_VOLUME)
            .instrument(span.clone())
            .await?;
        let mut ran_container = None;
        let result = async {
            let (ran, made) = stages
                .container(&volume, Some(&out), (Stage::Review, n), spec, None)
                .await?;
            // Removed once the verdict is read, with the volumes (after it, as they are its).
            ran_container = made;
            let verdict = if ran.timed_out {
                ReviewVerdict::escalate("the reviewer was killed at its timeout")
            } else if ran.oom_killed {
                ReviewVerdict::escalate("the reviewer was killed: out of memory")
            } else if ran.exit_code != Some(0) {
                ReviewVerdict::escalate(format!(
                    "the reviewer exited with {}",
                    ran.exit_code
                        .map_or("no exit code".to_string(), |c| c.to_string())
                ))
            } else {
                // The out volume is 1 MiB; a tar of it fits in twice that.
                match out.download_all(2 * OUT_VOLUME.bytes()).await? {
                    Ok(tar) => {
                        match single_file_from_tar(&tar, "kiln/verdict.json", MAX_VERDICT_BYTES) {
                            Ok(bytes) => ReviewVerdict::parse(&bytes),
                            Err(why) => ReviewVerdict::escalate(why.to_string()),
                        }
                    }
                    Err(_) => ReviewVerdict::escalate("the reviewer's output is too large"),
                }
            };
            Ok((ran, verdict))
        }
        .instrument(span.clone())
        .await;
        span.in_scope(|| stages.sweep(ran_container, vec![volume, out]));
        result
    }
}
