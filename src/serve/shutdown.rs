//! Stopping `kiln serve` on SIGTERM or SIGINT: no new job starts, the running ones get the grace
//! period (`--grace`) to end, what is still running then is stopped and handed back to the queue
//! by the restart rule, and everything the server made in Docker is removed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Server;
use crate::audit::{Event, JobState};
use crate::model::JobId;

/// Resolves on SIGTERM or SIGINT (and never, if neither can be listened for).
pub(super) async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Stops the server's work as the module says; returns once nothing of it is left.
pub(super) async fn stop(server: &Arc<Server>, grace: Duration) {
    server.stopping.store(true, Ordering::SeqCst);
    let running = || {
        server
            .running
            .lock()
            .expect("the running lock is never poisoned")
            .len()
    };
    eprintln!(
        "kiln serve: stopping; {} running job(s) get {} to end",
        running(),
        humantime::format_duration(grace)
    );
    let deadline = Instant::now() + grace;
    while running() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut: Vec<_> = server
        .running
        .lock()
        .expect("the running lock is never poisoned")
        .drain()
        .collect();
    for (_, task) in &cut {
        task.abort.abort();
    }
    // A stopped job is still `running` in the store: the restart rule hands it back now, as a
    // restart would, so that the next server (or this one, started again) runs it.
    match server.db(|s| s.recover(&server.id)) {
        Ok(recovered) => {
            for r in recovered {
                let Some(job) = JobId::parse(&r.id) else {
                    continue;
                };
                let state = JobState {
                    runs: Some(r.runs.into()),
                    why: Some("server stopped".into()),
                    server: Some(server.id.clone()),
                    ..JobState::to(r.to.as_str())
                };
                if let Err(e) = server.ctx.record(&job, Event::JobState(state)).await {
                    tracing::warn!(job = r.id, "recording the hand-back: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("handing back the running jobs: {e}"),
    }
    server.sandbox.release_spare_volumes().await;
    match server.sandbox.reap_own().await {
        Ok(removed) => eprintln!(
            "kiln serve: stopped; {} job(s) handed back, {removed} container(s), volume(s) and network(s) removed",
            cut.len()
        ),
        Err(e) => eprintln!("kiln serve: stopped, but cleaning up failed: {e}; run `kiln gc`"),
    }
}
