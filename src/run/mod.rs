//! One job end to end: clone, then up to `max_attempts` of generate → diff → test, feeding each
//! failure back, stopping early when attempts stop converging; commit the passing tree on the
//! work branch; write every attempt's artifacts and the report.

mod approve;
mod convergence;
mod input;
mod merge;
mod outcome;
mod progress;
mod review;
mod stage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use git2::Oid;
use serde::Serialize;
use tracing::{Instrument, info_span};

pub use approve::{Approved, approve, reject};
use convergence::convergence;
use input::{Feedback, JobInput};
use outcome::AfterPass;
pub use progress::Progress;
pub use crate::model::Status;
pub use crate::report::{MergeReport, Report};
use stage::Stages;

use crate::config::{Config, Loosening};
use crate::error::Error;
use crate::escalation::{Candidate, Kind};
use crate::model::Stage;
use crate::job::Job;
use crate::policy::{Decision, Gate, GateInput, GateResult, JobInfo, TestInfo};
use crate::publish::{Destination, check_destination};
use crate::review::ReviewVerdict;
use crate::sandbox::{self, RunOutcome, Sandbox, WORKSPACE_DIR};
use crate::secrets::Redactor;
use crate::model::Diff;
use crate::workspace::{BlobChange, Ingested, Skipped, Workspace};
use crate::report::{
    AttemptReport, CommitReport, FileSummary, JobSummary, SandboxSummary, Timings, stage_report,
};

/// Where a run writes: artifacts root and, optionally, the repository that gets the branch.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub artifacts_root: PathBuf,
    /// Where the work branch is published; default `<artifacts>/<id>/repo.git`.
    pub out: Option<Destination>,
}

/// Checks what must hold before anything runs: the images exist and `--out` can take the branch.
pub async fn preflight(
    job: &Job,
    config: &Config,
    sandbox: &Sandbox,
    opts: &RunOptions,
) -> Result<(), Error> {
    if let Some(out) = &opts.out {
        let (out, branch, config) = (out.clone(), job.branch.clone(), config.clone());
        blocking(move || Ok(check_destination(&out, &branch, &config)?)).await?;
    }
    let review = job.review.as_ref().map(|r| r.image.as_str());
    for image in [
        job.generate.image.as_str(),
        job.test.image.as_str(),
        sandbox::volume_holder_image(),
    ]
    .into_iter()
    .chain(review)
    {
        sandbox.require_image(image).await?;
    }
    Ok(())
}

/// Runs `job` to its end and returns the report; the report is also written to the job's
/// artifacts folder. Errors after artifacts exist are reported there with status `error`.
pub async fn run_job(
    job: &Job,
    config: &Config,
    sandbox: &Sandbox,
    opts: &RunOptions,
    gate: Option<Arc<Gate>>,
    progress: Progress,
) -> Result<Report, Error> {
    let started = Instant::now();
    let artifacts = opts.artifacts_root.join(job.id.as_str());
    std::fs::create_dir_all(&artifacts)
        .map_err(Error::io(format!("cannot create {}", artifacts.display())))?;
    let audit = config.audit()?;
    let mut runner = Runner {
        job,
        config,
        audit,
        sandbox,
        progress,
        artifacts: artifacts.clone(),
        attempts: Vec::new(),
        context: Vec::new(),
        gate,
        gate_result: None,
        redactor: config.redactor(),
    };
    let span = info_span!("job", job_id = %job.id);
    runner.record(
        "job.state",
        serde_json::json!({"to": "running", "repo": job.repo.path(), "branch": job.branch}),
    )?;
    let result = runner.execute(opts).instrument(span).await;
    let (end, exit) = match result {
        Ok(end) => {
            let exit = end.status.exit_code();
            (end, exit)
        }
        Err(e) => {
            let end = End::new(Status::Error, e.to_string());
            (end, e.exit_code())
        }
    };
    let mut report = Report {
        schema: report::SCHEMA,
        job: JobSummary {
            id: job.id.to_string(),
            repo: job.repo.path().display().to_string(),
            base: job.base.clone(),
            base_commit: end.base_commit.map(|c| c.to_string()),
            branch: job.branch.to_string(),
            max_attempts: job.max_attempts,
            context_files: std::mem::take(&mut runner.context),
            seed: job.seed.clone(),
        },
        sandbox: SandboxSummary {
            limits: job.limits.clone(),
            loosened: job.loosened.clone(),
            network: if job.loosened.contains(&Loosening::Network) {
                "bridge"
            } else {
                "none"
            },
        },
        attempts: std::mem::take(&mut runner.attempts),
        gate: runner.gate_result.take(),
        status: end.status,
        reason: end.reason,
        commit: end.commit,
        artifacts: artifacts.display().to_string(),
        timings: Timings {
            total_ms: started.elapsed().as_millis() as u64,
            workspace_ms: end.workspace_ms,
        },
        exit_code: exit,
        escalation: None,
    };
    if Kind::of(report.status).is_some() {
        let out = opts
            .out
            .clone()
            .unwrap_or_else(|| Destination::Local(artifacts.join("repo.git")));
        report.escalation = Some(
            outcome::escalate(&report, job, config, end.candidate, &out, &runner.progress).await?,
        );
    }
    write_json(&runner.redactor, &artifacts.join("report.json"), &report)?;
    runner.record(
        "job.state",
        serde_json::json!({"to": report.status.as_str(), "reason": report.reason, "exit_code": report.exit_code as u8}),
    )?;
    Ok(report)
}

struct Runner<'a> {
    job: &'a Job,
    config: &'a Config,
    /// The operator's audit log, if the config names one.
    audit: Option<crate::audit::AuditLog>,
    sandbox: &'a Sandbox,
    progress: Progress,
    artifacts: PathBuf,
    attempts: Vec<AttemptReport>,
    context: Vec<String>,
    gate: Option<Arc<Gate>>,
    gate_result: Option<GateResult>,
    /// Hides the operator's secrets in every artifact.
    redactor: Redactor,
}

/// How a job that ran to its end ended.
struct End {
    status: Status,
    reason: String,
    commit: Option<CommitReport>,
    workspace_ms: u64,
    base_commit: Option<Oid>,
    /// The tested commit kept for a human's decision, when the job escalated after its tests passed.
    candidate: Option<Candidate>,
}

impl End {
    fn new(status: Status, reason: String) -> Self {
        End {
            status,
            reason,
            commit: None,
            workspace_ms: 0,
            base_commit: None,
            candidate: None,
        }
    }
}

/// Runs blocking git work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

impl Runner<'_> {
    async fn execute(&mut self, opts: &RunOptions) -> Result<End, Error> {
        let job = self.job;
        let timer = self.progress.start("workspace");
        let (id, repo, base, limit) = (
            job.id.clone(),
            job.repo.clone(),
            job.base.clone(),
            job.limits.workspace,
        );
        let ws = Arc::new(
            blocking(move || Ok(Workspace::open(&id, &repo, base.as_deref(), limit)?)).await?,
        );
        let globs = crate::job::context_globs(&job.context_files).map_err(Error::Usage)?;
        self.context = {
            let ws = ws.clone();
            blocking(move || Ok(ws.context_files(&globs)?)).await?
        };
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
            let span = info_span!("attempt", job_id = %job.id, attempt = n);
            let step = self
                .attempt(&ws, n, &trees, &deltas, feedback.as_ref())
                .instrument(span)
                .await?;
            match step {
                Step::Passed(passed) => match self.after_pass(&ws, n, *passed, opts).await? {
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
                Step::NotConverging(reason) => {
                    return Ok(stamp(End::new(Status::NotConverging, reason)));
                }
                Step::Failed(retry) => {
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
    ) -> Result<Step, Error> {
        let job = self.job;
        let dir = self.artifacts.join(format!("attempt-{n}"));
        std::fs::create_dir_all(&dir)
            .map_err(Error::io(format!("cannot create {}", dir.display())))?;
        let input = serde_json::to_vec_pretty(&JobInput {
            schema: "kiln.job-input/v1",
            job_id: job.id.as_str(),
            attempt: n,
            max_attempts: job.max_attempts,
            prompt: &job.prompt,
            test_requirements: job.test_requirements.as_deref(),
            context_files: &self.context,
            branch: job.branch.as_str(),
            workspace: WORKSPACE_DIR,
            previous: feedback,
            agent_prompt: input::agent_prompt(
                &job.prompt,
                job.test_requirements.as_deref(),
                &self.context,
                feedback,
            ),
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        write_file(&self.redactor, &dir.join("job.json"), &input)?;

        let label = format!("attempt {n}/{} · generate", job.max_attempts);
        let timer = self.progress.start(label);
        let previous_tree = *trees.last().expect("trees starts with the base tree");
        let (generated, tree, ingested) = self.generate(ws, n, previous_tree, &input).await?;
        let (diff, patch) = {
            let (ws, base) = (ws.clone(), ws.base_tree());
            blocking(move || Ok(ws.diff(base, tree)?)).await?
        };
        let delta = {
            let ws = ws.clone();
            blocking(move || Ok(ws.blob_changes(previous_tree, tree)?)).await?
        };
        timer.done(&format!("{}; {}", exit_note(&generated), diff_note(&diff)));
        write_file(
            &self.redactor,
            &dir.join("generate.log"),
            &generated.output_bytes,
        )?;
        write_file(&self.redactor, &dir.join("diff.patch"), patch.as_bytes())?;
        write_json(&self.redactor, &dir.join("diff.json"), &diff)?;

        let whole = ingested.whole;
        let mut attempt = AttemptReport {
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
        if let Some(reason) = convergence(n, tree, &trees[1..], &delta, deltas) {
            self.progress.line(&format!("  not converging: {reason}"));
            self.attempts.push(attempt);
            return Ok(Step::NotConverging(reason));
        }
        // A generator cut off mid-write, or a tree kiln could not read whole, is nothing to
        // commit: the attempt fails untested.
        if let Some(why) = cut_short(&generated, whole, tree == ws.base_tree()) {
            self.progress.line(&format!(
                "  attempt {n} failed untested: the generator {why}"
            ));
            self.attempts.push(attempt);
            let next = Feedback::new(n, patch, &generated, Some(why), None, Vec::new());
            return Ok(Step::Failed(Box::new(Retry { tree, delta, next })));
        }

        // The tests run with the base version of protected paths, whatever the generator did.
        let (tested_tree, reverted) = {
            let ws = ws.clone();
            let protect = crate::job::context_globs(&job.protect).map_err(Error::Usage)?;
            blocking(move || Ok(ws.protected_tree(tree, &protect)?)).await?
        };
        if !reverted.is_empty() {
            self.progress.line(&format!(
                "  protected paths put back for the tests: {}",
                reverted.join(", ")
            ));
        }
        let label = format!("attempt {n}/{} · test", job.max_attempts);
        let timer = self.progress.start(label);
        let tested = self.test(ws, n, tested_tree, &input).await?;
        let passed = tested.succeeded();
        timer.done(&if passed {
            "passed".to_string()
        } else {
            format!("failed ({})", exit_note(&tested))
        });
        write_file(&self.redactor, &dir.join("test.log"), &tested.output_bytes)?;
        attempt.test = Some(stage_report(&job.test, &tested));
        attempt.protected_reverted = reverted.clone();
        attempt.passed = passed;
        self.attempts.push(attempt);
        if passed {
            // What is published is what was tested; the gate still judges the generator's diff.
            let next = Feedback::new(n, patch.clone(), &generated, None, Some(&tested), reverted);
            return Ok(Step::Passed(Box::new(Passed {
                tree: tested_tree,
                diff,
                patch,
                tested,
                input,
                retry: Retry { tree, delta, next },
            })));
        }
        let next = Feedback::new(n, patch, &generated, None, Some(&tested), reverted);
        Ok(Step::Failed(Box::new(Retry { tree, delta, next })))
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
        let volume = stages
            .volume(&ws.repo_path(), tree, "job.json", input)
            .await?;
        let result = async {
            let ran = stages
                .container(&volume, None, Stage::Generate, n, &self.job.generate)
                .await?;
            // tmpfs usage bounds the tar; twice the cap leaves room for tar headers.
            let cap = self.job.limits.workspace.bytes() * 2 + (16 << 20);
            let (tree, ingested) = match volume.download_workspace(cap).await? {
                Ok(tar) => {
                    let (ws, redactor) = (ws.clone(), self.redactor.clone());
                    blocking(move || Ok(ws.ingest(&tar, &redactor)?)).await?
                }
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
        .await;
        volume.remove().await;
        result
    }

    /// The test container, on exactly the tree kiln diffed.
    async fn test(
        &self,
        ws: &Arc<Workspace>,
        n: u32,
        tree: Oid,
        input: &[u8],
    ) -> Result<Ran, Error> {
        let repo = ws.repo_path();
        self.stages()
            .test(Stage::Test, &repo, n, tree, input, &self.job.test)
            .await
    }

    fn stages(&self) -> Stages<'_> {
        Stages {
            sandbox: self.sandbox,
            job: &self.job.id,
            limits: &self.job.limits,
            loosened: &self.job.loosened,
            artifacts: Some(&self.artifacts),
            config: self.config,
        }
    }

    /// Appends `kind` about this job to the audit log, if there is one; a record that cannot be
    /// written stops the job: nothing goes unrecorded.
    fn record(&self, kind: &str, data: serde_json::Value) -> Result<(), Error> {
        if let Some(audit) = &self.audit {
            audit.append(kind, Some(self.job.id.as_str()), data)?;
        }
        Ok(())
    }

    /// Every test run so far, as the gate and the reviewer see them.
    fn tests(&self) -> Vec<TestInfo> {
        self.attempts
            .iter()
            .filter_map(|a| {
                a.test.as_ref().map(|t| TestInfo {
                    attempt: a.attempt,
                    passed: a.passed,
                    exit_code: t.exit_code,
                })
            })
            .collect()
    }

    /// Runs the policy gate on the passing change; its result goes to the report, `gate.json`
    /// and `gate.sarif` in the artifacts.
    async fn judge(
        &mut self,
        gate: Arc<Gate>,
        diff: Diff,
        verdict: Option<&ReviewVerdict>,
    ) -> Result<Decision, Error> {
        let job = self.job;
        let timer = self.progress.start("policy gate");
        let tests = self.tests();
        let reviewer = verdict
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let info = JobInfo {
            id: job.id.to_string(),
            repo: job.repo.path().display().to_string(),
            branch: job.branch.to_string(),
            prompt: job.prompt.clone(),
            tests_fixed: job.tests_fixed,
            protect: job.protect.clone(),
        };
        let result = blocking(move || {
            let input = GateInput {
                job: info,
                diff: &diff,
                tests,
                reviewer,
            };
            Ok(gate.evaluate(&input))
        })
        .await?;
        let findings: usize = result.policies.iter().map(|p| p.findings.len()).sum();
        timer.done(&format!(
            "{} ({findings} findings)",
            result.decision.as_str()
        ));
        write_json(&self.redactor, &self.artifacts.join("gate.json"), &result)?;
        write_json(
            &self.redactor,
            &self.artifacts.join("gate.sarif"),
            &crate::policy::to_sarif(&result),
        )?;
        let decision = result.decision;
        let modules: Vec<_> = result
            .policies
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "sha256": p.sha256, "mode": p.mode, "decision": p.decision}))
            .collect();
        self.record(
            "policy.decision",
            serde_json::json!({"decision": decision, "auto_merge": result.auto_merge.eligible, "policies": modules}),
        )?;
        self.gate_result = Some(result);
        Ok(decision)
    }
}

enum Step {
    Passed(Box<Passed>),
    NotConverging(String),
    Failed(Box<Retry>),
}

/// An attempt whose tests passed.
struct Passed {
    /// The tree the tests ran on: what is published.
    tree: Oid,
    /// The generator's change against the base: what the reviewer and the gate judge.
    diff: Diff,
    patch: String,
    tested: Ran,
    /// The attempt's `job.json`, which the merge queue's re-test gets too.
    input: Vec<u8>,
    /// How the next attempt starts if the reviewer requests changes.
    retry: Retry,
}

/// What the next attempt builds on: the generator's tree, what it changed, and the feedback.
struct Retry {
    tree: Oid,
    delta: Vec<BlobChange>,
    next: Feedback,
}

/// A finished container with its output turned into bytes.
pub(super) struct Ran {
    exit_code: Option<i64>,
    timed_out: bool,
    oom_killed: bool,
    start_ms: u64,
    duration_ms: u64,
    /// What went through the egress proxy, for a stage with an allowlist.
    egress: Option<crate::egress::Summary>,
    output_total: u64,
    output_dropped: u64,
    output_bytes: Vec<u8>,
}

impl Ran {
    /// What a stage's container did, with every secret hidden in its output.
    fn redacted(o: RunOutcome, redactor: &crate::secrets::Redactor) -> Self {
        Ran {
            exit_code: o.exit_code,
            timed_out: o.timed_out,
            oom_killed: o.oom_killed,
            start_ms: o.start_latency.as_millis() as u64,
            egress: None,
            duration_ms: o.duration.as_millis() as u64,
            output_total: o.output.total_bytes(),
            output_dropped: o.output.dropped_bytes(),
            output_bytes: o.output.into_bytes_redacted(redactor),
        }
    }

    fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
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

fn short(oid: Oid) -> String {
    oid.to_string()[..10].to_string()
}

/// Writes an artifact with every configured secret hidden.
fn write_file(redactor: &Redactor, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, redactor.bytes(bytes))
        .map_err(Error::io(format!("cannot write {}", path.display())))
}

/// Writes `value` as pretty JSON with every configured secret hidden.
pub fn write_json(redactor: &Redactor, path: &Path, value: &impl Serialize) -> Result<(), Error> {
    let mut text = json_text(redactor, value)?;
    text.push('\n');
    std::fs::write(path, text).map_err(Error::io(format!("cannot write {}", path.display())))
}

/// `value` as pretty JSON with every configured secret hidden.
pub fn json_text(redactor: &Redactor, value: &impl Serialize) -> Result<String, Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(redactor.text(&text).into_owned())
}
