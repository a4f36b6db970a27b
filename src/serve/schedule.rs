//! The scheduler loop of `kiln serve`, and each started job's task: run it as `kiln run` would,
//! record where it is as it goes and how it ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Server;
use crate::error::Error;
use crate::job::Job;
use crate::model::time::now_ms;
use crate::model::{JobId, Status};
use crate::run::{Progress, Report, RunOptions, Step};
use crate::scheduler::{self, Queued, Running, Touches};
use crate::store::State;

/// The scheduler loop: on every wake (a submission, a job's end) and every second, start what
/// the limits and the queue allow.
pub(super) async fn schedule(server: Arc<Server>) {
    loop {
        if server.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Err(e) = start_ready(&server) {
            tracing::error!("scheduler: {e}");
        }
        tokio::select! {
            () = server.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn start_ready(server: &Arc<Server>) -> Result<(), Error> {
    let now = now_ms();
    let queued_rows = server.db(|s| s.list(Some(State::Queued), 10_000))?;
    let running_rows = server.db(|s| s.list(Some(State::Running), 10_000))?;
    let queued: Vec<Queued> = queued_rows
        .iter()
        .map(|r| Queued {
            id: r.id.clone(),
            priority: r.priority,
            waited: r.waited(now),
            repo: r.repo.clone(),
            touches: Touches::new(r.touches.clone()),
        })
        .collect();
    let running: Vec<Running> = running_rows
        .iter()
        .map(|r| Running {
            repo: r.repo.clone(),
            touches: Touches::new(r.touches.clone()),
        })
        .collect();
    for picked in scheduler::pick(&queued, &running, server.limits) {
        let id = picked.id.clone();
        // Durable before it is acted on: the job is `running` on disk before its task starts.
        server.db(|s| s.start(&id))?;
        // Held while the task starts, so that a job ending at once is removed after it is added.
        let mut running = server
            .running
            .lock()
            .expect("the running lock is never poisoned");
        let task = tokio::spawn(run_one(server.clone(), id.clone()));
        running.insert(id, task.abort_handle());
    }
    Ok(())
}

/// Runs one started job to its end and records how it ended.
async fn run_one(server: Arc<Server>, id: String) {
    let (state, status, code, reason) = match run_job(&server, &id).await {
        Ok(report) => {
            server.metrics.observe(&report);
            let status = report.status;
            (
                state_of(status),
                status,
                report.exit_code as i64,
                report.reason,
            )
        }
        Err(e) => (
            State::Failed,
            Status::Error,
            e.exit_code() as i64,
            e.to_string(),
        ),
    };
    if let Some(job) = JobId::parse(&id) {
        let _ = server.sandbox.reap_job(&job).await;
    }
    server
        .running
        .lock()
        .expect("the running lock is never poisoned")
        .remove(&id);
    if let Err(e) = server.db(|s| s.finish(&id, state, Some(status), code, &reason)) {
        tracing::warn!(job = id, "recording the end: {e}");
    }
    server.wake.notify_one();
}

async fn run_job(server: &Arc<Server>, id: &str) -> Result<Report, Error> {
    let row = server
        .db(|s| s.get(id))?
        .ok_or_else(|| Error::Internal(format!("job {id} vanished from the store")))?;
    let origin = PathBuf::from(format!("job {id}"));
    let ctx = &server.ctx;
    let mut job = Job::parse(
        &row.spec,
        row.spec_format,
        None,
        &origin,
        &ctx.config,
        &ctx.secrets,
    )?;
    job.id = JobId::parse(id).ok_or_else(|| Error::Internal(format!("bad job id {id}")))?;
    // Again at the start: the folder may have changed (a symlink swapped) since it was submitted.
    server.allowed_repo(job.repo.path()).map_err(Error::Usage)?;
    let opts = RunOptions {
        artifacts_root: server.artifacts(),
        out: server.out.clone(),
    };
    crate::run::preflight(&job, ctx, &server.sandbox, &opts).await?;
    let observer = {
        let server = server.clone();
        let id = id.to_string();
        Arc::new(move |step: &Step| {
            if let Some(phase) = step.phase() {
                let _ = server.db(|s| s.progress(&id, step.attempt(), phase));
            }
        })
    };
    crate::run::run_job(
        &job,
        ctx,
        &server.sandbox,
        &opts,
        server.gate.clone(),
        Progress::observed(observer),
    )
    .await
}

fn state_of(status: Status) -> State {
    match status {
        Status::Succeeded => State::Succeeded,
        Status::AwaitingReview => State::AwaitingReview,
        Status::PolicyEscalated
        | Status::ReviewEscalated
        | Status::MergeEscalated
        | Status::NotConverging => State::Escalated,
        Status::TestsFailed | Status::PolicyDenied | Status::Error => State::Failed,
    }
}
