//! The scheduler loop of `kiln serve`, and each claimed job's task: run it as `kiln run` would,
//! record where it is as it goes and how it ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Server, Task, kept, lease};
use crate::audit::JobState;
use crate::error::Error;
use crate::job::Job;
use crate::model::{JobId, Status};
use crate::run::{Holds, Progress, Report, RunOptions, Step};
use crate::store::{End, State, StoreError};

/// The scheduler loop: on every wake (a submission, a job's end) and every second, claim what
/// the limits and the queue allow. A server whose leases have not been renewed lately (the store
/// is unreachable) claims nothing.
pub(super) async fn schedule(server: Arc<Server>) {
    loop {
        if server.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if lease::renewed_lately(&server)
            && let Err(e) = start_ready(&server).await
        {
            tracing::error!("scheduler: {e}");
        }
        tokio::select! {
            () = server.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn start_ready(server: &Arc<Server>) -> Result<(), Error> {
    let claimed = server.db(|s| s.claim(&server.id, server.limits, server.lease))?;
    for r in &claimed.recovered {
        let Some(job) = JobId::parse(&r.id) else {
            continue;
        };
        let why = match &r.from {
            Some(from) => format!("the lease of server {from} ran out"),
            None => "its lease ran out".into(),
        };
        let state = JobState {
            runs: Some(r.runs.into()),
            why: Some(why),
            server: Some(server.id.clone()),
            ..JobState::to(r.to.as_str())
        };
        server.record(&job, state).await?;
    }
    for row in claimed.started {
        // Held while the task starts, so that a job ending at once is removed after it is added.
        let mut running = server
            .running
            .lock()
            .expect("the running lock is never poisoned");
        let task = tokio::spawn(run_one(server.clone(), row.id.clone()));
        running.insert(
            row.id,
            Task {
                abort: task.abort_handle(),
                since: Instant::now(),
            },
        );
    }
    Ok(())
}

/// Runs one claimed job to its end and records how it ended. With a shared store its files are
/// kept there first: nothing is reported ended that another server could not answer for. A
/// store that cannot be written is tried again until it can, or until the job is no longer this
/// server's.
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
    let end = End {
        state,
        status: Some(status),
        exit_code: code,
        reason: &reason,
    };
    let mut wait = Duration::from_millis(200);
    loop {
        let written = match kept::keep(&server, &id).await {
            Ok(()) => server.db(|s| s.finish(&id, &server.id, &end)),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => break,
            Err(Error::Store(StoreError::WrongState(..))) => {
                tracing::warn!(
                    job = id,
                    "its end is not recorded: it is no longer this server's"
                );
                break;
            }
            Err(e) => {
                tracing::warn!(job = id, "recording the end (will try again): {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    server
        .running
        .lock()
        .expect("the running lock is never poisoned")
        .remove(&id);
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
    let holds: Holds = {
        let (server, id) = (server.clone(), id.to_string());
        // A store that does not answer is asked again while the lease is surely still this
        // server's: a short outage delays the publish instead of failing a job that passed.
        Arc::new(move || {
            loop {
                if !lease::renewed_lately(&server) {
                    return Err("this server's leases were not renewed lately".into());
                }
                match server.db_blocking(|s| s.holds(&id, &server.id)) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {
                        return Err(format!("server {} no longer holds the job", server.id));
                    }
                    Err(e) => {
                        tracing::warn!(job = id, "confirming the lease (will ask again): {e}");
                        std::thread::sleep(lease::BEAT_EVERY / 2);
                    }
                }
            }
        })
    };
    let opts = RunOptions {
        artifacts_root: server.artifacts(),
        out: server.out.clone(),
        holds: Some(holds),
        trace_parent: row.trace_parent.as_deref().and_then(|t| t.parse().ok()),
    };
    crate::run::preflight(&job, ctx, &server.sandbox, &opts).await?;
    let observer = {
        let server = server.clone();
        let id = id.to_string();
        Arc::new(move |step: &Step| {
            if let Some(phase) = step.phase() {
                let _ = server.db(|s| s.progress(&id, &server.id, step.attempt(), phase));
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
        | Status::NotConverging
        | Status::BudgetExhausted => State::Escalated,
        Status::TestsFailed | Status::PolicyDenied | Status::Error => State::Failed,
    }
}
