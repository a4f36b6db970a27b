//! One job end to end: clone, then up to `max_attempts` of generate → diff → test, feeding each
//! failure back, stopping early when attempts stop converging; judge the passing change, commit
//! it on the work branch; write every attempt's artifacts and the report.
//!
//! `mod.rs` holds the job's frame (preflight, the report); `attempt.rs` the attempt loop and one
//! attempt; `judge.rs` the policy gate; `review.rs` the reviewer; `outcome.rs` what becomes of a
//! passing change; `stage.rs` one stage's container.

mod approve;
mod attempt;
mod context;
mod convergence;
mod input;
mod judge;
mod merge;
mod outcome;
mod progress;
mod review;
mod selection;
mod spend;
mod stage;
mod stage_network;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use git2::Oid;
use tracing::{Instrument, Span, field, info_span};

pub use approve::{Approved, approve, reject};
pub use context::Context;
pub use progress::{Progress, StageObserver, Step};

pub use crate::model::Status;
pub use crate::report::{MergeReport, Report};

use crate::artifacts::Artifacts;
use crate::audit::{Event, JobState};
use crate::config::Loosening;
use crate::error::Error;
use crate::escalation::{Candidate, Kind};
use crate::job::Job;
use crate::model::TraceParent;
use crate::policy::{Gate, GateResult};
use crate::publish::{Destination, check_destination};
use crate::report::{AttemptReport, CommitReport, JobSummary, SandboxSummary, Timings};
use crate::sandbox::{self, Sandbox};

/// Where a run writes: artifacts root and, optionally, the repository that gets the branch.
#[derive(Clone)]
pub struct RunOptions {
    pub artifacts_root: PathBuf,
    /// Where the work branch is published; default `<artifacts>/<id>/repo.git`.
    pub out: Option<Destination>,
    /// Asked (on a blocking thread) before anything is published or merged: whether this
    /// process may still act for the job. Under `kiln serve` on a shared store, whether its
    /// lease holds; `Err` says why not, and the job ends with nothing published.
    pub holds: Option<Holds>,
    /// The caller's trace (a client's W3C `traceparent`): the job's spans continue it.
    pub trace_parent: Option<TraceParent>,
}

/// See [`RunOptions::holds`].
pub type Holds = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Checks what must hold before anything runs: the engine applies seccomp profiles, the images
/// exist (a missing one's error says how to build it) and `--out` can take the branch.
pub async fn preflight(
    job: &Job,
    ctx: &Context,
    sandbox: &Sandbox,
    opts: &RunOptions,
) -> Result<(), Error> {
    if let Some(out) = &opts.out {
        let (out, branch, config) = (out.clone(), job.branch.clone(), ctx.config.clone());
        blocking(move || Ok(check_destination(&out, &branch, &config)?)).await?;
    }
    sandbox
        .require_confinement(&ctx.config.sandbox.runtimes())
        .await?;
    let review = job.review.as_ref().map(|r| r.image.as_str());
    for image in [
        job.generate.image.as_str(),
        job.test.image.as_str(),
        sandbox::volume_holder_image(),
    ]
    .into_iter()
    .chain(review)
    {
        crate::images::require(sandbox, image).await?;
    }
    Ok(())
}

/// Runs `job` to its end and returns the report; the report is also written to the job's
/// artifacts folder. Errors after artifacts exist are reported there with status `error`.
pub async fn run_job(
    job: &Job,
    ctx: &Context,
    sandbox: &Sandbox,
    opts: &RunOptions,
    gate: Option<Arc<Gate>>,
    progress: Progress,
) -> Result<Report, Error> {
    let span = info_span!(
        "job",
        kiln.job_id = %job.id,
        kiln.repo = %job.repo.path().display(),
        kiln.branch = %job.branch,
        kiln.outcome = field::Empty,
        kiln.exit_code = field::Empty,
        otel.status_code = field::Empty,
    );
    if let Some(parent) = &opts.trace_parent {
        crate::telemetry::continue_trace(&span, parent);
    }
    let result = run_traced(job, ctx, sandbox, opts, gate, progress)
        .instrument(span.clone())
        .await;
    let (outcome, exit) = match &result {
        Ok(report) => (report.status.as_str(), report.exit_code),
        Err(e) => (Status::Error.as_str(), e.exit_code()),
    };
    span.record("kiln.outcome", outcome);
    span.record("kiln.exit_code", exit as u8);
    if outcome == Status::Error.as_str() {
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// [`run_job`] inside the job's span.
async fn run_traced(
    job: &Job,
    ctx: &Context,
    sandbox: &Sandbox,
    opts: &RunOptions,
    gate: Option<Arc<Gate>>,
    progress: Progress,
) -> Result<Report, Error> {
    let started = Instant::now();
    let artifacts = Artifacts::new(&opts.artifacts_root, &job.id, ctx.redactor().clone());
    let dir = artifacts.dir().to_path_buf();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let mut runner = Runner {
        job,
        ctx,
        sandbox,
        progress,
        artifacts,
        attempts: Vec::new(),
        context: Vec::new(),
        selection: None,
        gate,
        gate_result: None,
        spend: spend::JobSpend::new(job, &ctx.config),
    };
    runner
        .record(Event::JobState(JobState {
            repo: Some(job.repo.path().display().to_string()),
            branch: Some(job.branch.to_string()),
            server: ctx.server.clone(),
            ..JobState::to("running")
        }))
        .await?;
    let result = runner.execute(opts).await;
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
        schema: crate::report::SCHEMA,
        job: JobSummary {
            id: job.id.to_string(),
            repo: job.repo.path().display().to_string(),
            base: job.base.clone(),
            base_commit: end.base_commit.map(|c| c.to_string()),
            branch: job.branch.to_string(),
            max_attempts: job.max_attempts,
            context_files: std::mem::take(&mut runner.context),
            context: runner.selection.take().map(|(selection, _)| selection),
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
        artifacts: dir.display().to_string(),
        timings: Timings {
            total_ms: started.elapsed().as_millis() as u64,
            workspace_ms: end.workspace_ms,
        },
        exit_code: exit,
        escalation: None,
        spend: runner.spend.report(),
    };
    if Kind::of(report.status).is_some() {
        let out = runner.destination(opts);
        report.escalation = Some(
            outcome::escalate(
                &report,
                job,
                ctx,
                &runner.artifacts,
                end.candidate,
                &out,
                &runner.progress,
            )
            .await?,
        );
    }
    let report = runner
        .artifacts
        .write_json_async(runner.artifacts.report(), report)
        .await?;
    runner
        .record(Event::JobState(JobState {
            reason: Some(report.reason.clone()),
            exit_code: Some(report.exit_code as u8),
            server: ctx.server.clone(),
            ..JobState::to(report.status.as_str())
        }))
        .await?;
    Ok(report)
}

/// One job's run: what it has found and decided so far.
struct Runner<'a> {
    job: &'a Job,
    ctx: &'a Context,
    sandbox: &'a Sandbox,
    progress: Progress,
    artifacts: Artifacts,
    attempts: Vec<AttemptReport>,
    context: Vec<String>,
    /// With `[context] mode = "auto"`: the files kiln chose at the base, and every path of the
    /// base tree with its size (a failing test output's paths are added from it).
    selection: Option<(crate::context::Selection, Vec<(String, u64)>)>,
    gate: Option<Arc<Gate>>,
    gate_result: Option<GateResult>,
    /// What the generator and reviewer spend on model calls, against their budgets.
    spend: spend::JobSpend,
}

impl Runner<'_> {
    /// Appends `event` about this job to the audit log, if there is one; a record that cannot
    /// be written stops the job: nothing goes unrecorded.
    async fn record(&self, event: Event) -> Result<(), Error> {
        Ok(self.ctx.record(&self.job.id, event).await?)
    }

    /// Where published work goes: `--out`, else `<artifacts>/<id>/repo.git`.
    fn destination(&self, opts: &RunOptions) -> Destination {
        opts.out
            .clone()
            .unwrap_or_else(|| Destination::Local(self.artifacts.default_out()))
    }
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

/// Runs blocking git and file work off the async threads, inside the caller's span (the spans
/// it opens are its children).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let span = Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(Error::Join)?
}

fn short(oid: Oid) -> String {
    oid.to_string()[..10].to_string()
}
