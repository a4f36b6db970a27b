//! The attempt loop and one attempt: generate on the previous tree, read the workspace back,
//! diff it, stop if the attempts no longer converge, test the tree kiln diffed, and hand the
//! next attempt its feedback.

use std::sync::Arc;

use git2::Oid;
use tracing::{Instrument, info_span};

use super::convergence::convergence;
use super::input::{self, Feedback, JobInput};
use super::outcome::AfterPass;
use super::stage::{Prepared, Ran, Stages, stage_report};
use super::{End, RunOptions, Runner, Step, blocking, short};
use crate::error::Error;
use crate::job::ContextMode;
use crate::model::{Diff, Stage, Status};
use crate::report::{AttemptReport, FileSummary};
use crate::sandbox::WORKSPACE_DIR;
use crate::workspace::{BlobChange, Ingested, Skipped, Workspace};

impl Runner<'_> {
    pub(super) async fn execute(&mut self, opts: &RunOptions) -> Result<End, Error> {
        let job = self.job;
        let timer = self.progress.start(Step::Workspace);
        let (id, repo, base, limit) = (
            job.id.clone(),
            job.repo.clone(),
            job.base.clone(),
            job.limits.workspace,
        );
        let ws = Arc::new(
            blocking(move || Ok(Workspace::open(&id, &repo, base.as_deref(), limit)?)).await?,
        );
        self.context = {
            let (ws, globs) = (ws.clone(), job.context_files.clone());
            blocking(move || Ok(ws.context_files(&globs)?)).await?
        };
        if job.context.mode == ContextMode::Auto {
            self.selection = Some(self.select_context(&ws).await?);
        }
        let workspace_ms = timer
            .done(&format!("base {}", short(ws.base_commit())))
            .as_millis() as u64;

        let base_commit = ws.base_commit();
        let stamp = |ended: End| End {
            workspace_ms,
            base_commit: Some(base_commit),
            ..ended
        };

        let mut trees = vec![ws.base_tree()];
        let mut deltas: Vec<Vec<BlobChange>> = Vec::new();
        let mut feedback: Option<Feedback> = None;
        for n in 1..=job.max_attempts {
            let span = info_span!("attempt", kiln.attempt = n);
            let step = self
                .attempt(&ws, n, &trees, &deltas, feedback.as_ref())
                .instrument(span)
                .await?;
            if let Some(why) = self.spend.cut_short() {
                return Ok(stamp(budget_spent(n, &why)));
            }
            match step {
                Attempted::Passed(passed) => match self.after_pass(&ws, n, *passed, opts).await? {
                    // The reviewer stopped for the budget: that, not its missing verdict, is
                    // why the job ends.
                    AfterPass::End(ended) if ended.status != Status::Succeeded => {
                        match self.spend.cut_short() {
                            Some(why) => return Ok(stamp(budget_spent(n, &why))),
                            None => return Ok(stamp(ended)),
                        }
                    }
                    AfterPass::End(ended) => return Ok(stamp(ended)),
                    AfterPass::Retry(retry) => {
                        trees.push(retry.tree);
                        deltas.push(retry.delta);
                        feedback = Some(retry.next);
                    }
                    AfterPass::Restart(next) => {
                        trees = vec![ws.base_tree()];
                        deltas.clear();
                        feedback = Some(next);
                    }
                },
                Attempted::NotConverging(reason) => {
                    return Ok(stamp(End::new(Status::NotConverging, reason)));
                }
                Attempted::Failed(retry) => {
                    trees.push(retry.tree);
                    deltas.push(retry.delta);
                    feedback = Some(retry.next);
                }
            }
        }
        let reason = format!("tests still fail after {} attempts", job.max_attempts);
        Ok(stamp(End::new(Status::TestsFailed, reason)))
    }

    async fn attempt(
        &mut self,
        ws: &Arc<Workspace>,
        n: u32,
        trees: &[Oid],
        deltas: &[Vec<BlobChange>],
        feedback: Option<&Feedback>,
    ) -> Result<Attempted, Error> {
        let job = self.job;
        let artifacts = self.artifacts.clone();
        let dir = blocking(move || Ok(artifacts.create_attempt(n)?)).await?;
        if let (Some((selection, paths)), Some(previous)) = (&mut self.selection, feedback) {
            input::add_named_by_tests(selection, paths, previous);
        }
        // The files the generator is told to start from: kiln's choice, or the globs' matches.
        let starting_files: Vec<String> = match &self.selection {
            Some((selection, _)) => selection.files.iter().map(|f| f.path.clone()).collect(),
            None => self.context.clone(),
        };
        let input = serde_json::to_vec_pretty(&JobInput {
            schema: "kiln.job-input/v1",
            job_id: job.id.as_str(),
            attempt: n,
            max_attempts: job.max_attempts,
            prompt: &job.prompt,
            test_requirements: job.test_requirements.as_deref(),
            context_files: &self.context,
            context: self.selection.as_ref().map(|(s, _)| s.files.as_slice()),
            branch: job.branch.as_str(),
            workspace: WORKSPACE_DIR,
            previous: feedback,
            agent_prompt: input::agent_prompt(
                &job.prompt,
                job.test_requirements.as_deref(),
                &starting_files,
                feedback,
            ),
        })
        .map_err(Error::Json)?;
        let input = self
            .artifacts
            .write_async(dir.join("job.json"), input)
            .await?;

        let timer = self.progress.start(self.step(n, Stage::Generate));
        let previous_tree = *trees.last().expect("trees starts with the base tree");
        // The test stage's volume and container are made while the generator runs; the
        // container is started only once the tree to test is in its volume.
        let stages = self.stages();
        let prepare = info_span!("stage.prepare", kiln.stage = %Stage::Test);
        let (generated, prepared) = tokio::join!(
            self.generate(ws, n, previous_tree, &input),
            stages
                .prepare((Stage::Test, n), &self.job.test)
                .instrument(prepare),
        );
        let (generated, tree, ingested) = generated?;
        let prepared = prepared
            .inspect_err(|e| tracing::debug!("the test stage was not made ahead: {e}"))
            .ok();
        let (diff, patch) = {
            let (ws, base) = (ws.clone(), ws.base_tree());
            let budget = self.ctx.config.policy.max_diff;
            blocking(move || Ok(ws.diff(base, tree, budget)?))
                .instrument(info_span!("diff"))
                .await?
        };
        let delta = {
            let ws = ws.clone();
            blocking(move || Ok(ws.blob_changes(previous_tree, tree)?)).await?
        };
        timer.done(&format!("{}; {}", exit_note(&generated), diff_note(&diff)));
        let files = &self.artifacts;
        files
            .write_async(dir.join("generate.log"), generated.output_bytes.clone())
            .await?;
        let patch = files.write_async(dir.join("diff.patch"), patch).await?;
        let diff = files.write_json_async(dir.join("diff.json"), diff).await?;

        let whole = ingested.whole;
        let attempt = AttemptReport {
            attempt: n,
            generate: stage_report(&job.generate, &generated),
            ignored_paths: ingested.skipped,
            secrets_redacted: ingested.redacted,
            diff: diff.stats,
            files: diff
                .files
                .iter()
                .map(|f| FileSummary {
                    path: f.path.clone(),
                    status: f.status,
                    additions: f.additions,
                    deletions: f.deletions,
                    binary: f.binary,
                })
                .collect(),
            test: None,
            review: None,
            protected_reverted: Vec::new(),
            passed: false,
            artifacts: dir.display().to_string(),
        };
        // In the report from here on, whatever happens next: an attempt that ends in an error
        // is still there, with what it got to.
        self.attempts.push(attempt);
        if let Some(reason) = convergence(n, tree, &trees[1..], &delta, deltas) {
            self.progress.line(&format!("  not converging: {reason}"));
            return Ok(Attempted::NotConverging(reason));
        }
        // A generator cut off mid-write, or a tree kiln could not read whole, is nothing to
        // commit: the attempt fails untested.
        if let Some(why) = cut_short(&generated, whole, tree == ws.base_tree()) {
            self.progress.line(&format!(
                "  attempt {n} failed untested: the generator {why}"
            ));
            let next = Feedback::new(n, patch, &generated, Some(why), None, Vec::new());
            return Ok(Attempted::Failed(Box::new(Retry { tree, delta, next })));
        }

        // The tests run with the base version of protected paths, whatever the generator did.
        let (tested_tree, reverted) = {
            let (ws, protect) = (ws.clone(), job.protect.clone());
            blocking(move || Ok(ws.protected_tree(tree, &protect)?)).await?
        };
        if !reverted.is_empty() {
            self.progress.line(&format!(
                "  protected paths put back for the tests: {}",
                reverted.join(", ")
            ));
        }
        let timer = self.progress.start(self.step(n, Stage::Test));
        let tested = self.test(ws, n, tested_tree, &input, prepared).await?;
        let passed = tested.succeeded();
        timer.done(&if passed {
            "passed".to_string()
        } else {
            format!("failed ({})", exit_note(&tested))
        });
        self.artifacts
            .write_async(dir.join("test.log"), tested.output_bytes.clone())
            .await?;
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.test = Some(stage_report(&job.test, &tested));
            attempt.protected_reverted = reverted.clone();
            attempt.passed = passed;
        }
        if passed {
            // What is published is what was tested; the gate still judges the generator's diff.
            let next = Feedback::new(n, patch.clone(), &generated, None, Some(&tested), reverted);
            return Ok(Attempted::Passed(Box::new(Passed {
                tree: tested_tree,
                diff,
                patch,
                tested,
                input,
                retry: Retry { tree, delta, next },
            })));
        }
        let next = Feedback::new(n, patch, &generated, None, Some(&tested), reverted);
        Ok(Attempted::Failed(Box::new(Retry { tree, delta, next })))
    }

    /// The generator container: its workspace starts as `tree`; what it leaves is read back.
    async fn generate(
        &self,
        ws: &Arc<Workspace>,
        n: u32,
        tree: Oid,
        input: &[u8],
    ) -> Result<(Ran, Oid, Ingested), Error> {
        let stages = self.stages();
        let span = info_span!("stage", kiln.stage = %Stage::Generate);
        let stage = (Stage::Generate, n);
        let spec = &self.job.generate;
        let (volume, made) = stages
            .filled(None, stage, spec, (&ws.repo_path(), tree), input)
            .instrument(span.clone())
            .await?;
        let mut ran_container = None;
        let result = async {
            let (ran, made) = stages.container(&volume, None, stage, spec, made).await?;
            ran_container = made;
            // tmpfs usage bounds the tar; twice the cap leaves room for tar headers.
            let cap = self.job.limits.workspace.bytes() * 2 + (16 << 20);
            let (ws_read, redactor) = (ws.clone(), self.ctx.redactor().clone());
            let read = volume
                .read_workspace(cap, move |tar| ws_read.ingest(tar, &redactor))
                .await?;
            let (tree, ingested) = match read {
                Ok(ingested) => ingested?,
                Err(cap) => {
                    let skipped = Skipped {
                        path: "workspace".into(),
                        reason: "archive larger than twice the workspace limit",
                    };
                    tracing::warn!(
                        "workspace archive over {cap} bytes; the attempt fails untested"
                    );
                    (
                        tree,
                        Ingested {
                            files: 0,
                            skipped: vec![skipped],
                            whole: false,
                            redacted: 0,
                        },
                    )
                }
            };
            Ok((ran, tree, ingested))
        }
        .instrument(span.clone())
        .await;
        // The container and its volume go while the job goes on: nothing reads them again.
        span.in_scope(|| stages.sweep(ran_container, vec![volume]));
        result
    }

    /// The test container, on exactly the tree kiln diffed (in the volume made ahead for it).
    async fn test(
        &self,
        ws: &Arc<Workspace>,
        n: u32,
        tree: Oid,
        input: &[u8],
        prepared: Option<Prepared>,
    ) -> Result<Ran, Error> {
        let repo = ws.repo_path();
        self.stages()
            .test(
                (Stage::Test, n),
                (&repo, tree),
                input,
                &self.job.test,
                prepared,
            )
            .await
    }

    /// The progress step of `stage` in attempt `n`.
    pub(super) fn step(&self, n: u32, stage: Stage) -> Step {
        Step::Attempt {
            n,
            of: self.job.max_attempts,
            stage,
        }
    }

    pub(super) fn stages(&self) -> Stages<'_> {
        Stages {
            sandbox: self.sandbox,
            job: &self.job.id,
            limits: &self.job.limits,
            loosened: &self.job.loosened,
            artifacts: Some(&self.artifacts),
            ctx: self.ctx,
            spend: Some(&self.spend),
        }
    }
}

/// How one attempt ended.
enum Attempted {
    Passed(Box<Passed>),
    NotConverging(String),
    Failed(Box<Retry>),
}

/// An attempt whose tests passed.
pub(super) struct Passed {
    /// The tree the tests ran on: what is published.
    pub(super) tree: Oid,
    /// The generator's change against the base: what the reviewer and the gate judge.
    pub(super) diff: Diff,
    pub(super) patch: String,
    pub(super) tested: Ran,
    /// The attempt's `job.json`, which the merge queue's re-test gets too.
    pub(super) input: Vec<u8>,
    /// How the next attempt starts if the reviewer requests changes.
    pub(super) retry: Retry,
}

/// What the next attempt builds on: the generator's tree, what it changed, and the feedback.
pub(super) struct Retry {
    pub(super) tree: Oid,
    pub(super) delta: Vec<BlobChange>,
    pub(super) next: Feedback,
}

/// Why an attempt's tree must not be tested or committed, if it must not: the generator was
/// cut short, kiln could not read its tree whole, or it changed nothing (an unchanged tree that
/// passes is not the work the job asked for).
fn cut_short(generated: &Ran, whole: bool, unchanged: bool) -> Option<&'static str> {
    if generated.timed_out {
        Some("was killed at the timeout")
    } else if generated.oom_killed {
        Some("was killed: out of memory")
    } else if !whole {
        Some("left a workspace kiln could not read whole")
    } else if unchanged {
        Some("changed nothing")
    } else {
        None
    }
}

fn exit_note(ran: &Ran) -> String {
    let mut note = match (ran.timed_out, ran.exit_code) {
        (true, _) => "killed at timeout".to_string(),
        (false, Some(code)) => format!("exit {code}"),
        (false, None) => "no exit code".to_string(),
    };
    if ran.oom_killed {
        note.push_str(", out of memory");
    }
    if ran.output_dropped > 0 {
        note.push_str(&format!(", {} output bytes dropped", ran.output_dropped));
    }
    note
}

fn diff_note(diff: &Diff) -> String {
    let s = diff.stats;
    format!(
        "{} file{} changed +{} -{}",
        s.files_changed,
        if s.files_changed == 1 { "" } else { "s" },
        s.additions,
        s.deletions
    )
}

/// How a job ends when a model call of attempt `n` was refused for the budget.
fn budget_spent(n: u32, why: &str) -> End {
    End::new(
        Status::BudgetExhausted,
        format!("the model budget was spent in attempt {n} ({why}); the stage was stopped"),
    )
}
