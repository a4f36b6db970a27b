//! The heartbeat: every second, the leases of the jobs this server runs are renewed in the store.
//! A job the store no longer gives this server (its lease ran out and another server took it
//! back) is stopped at once, its containers removed, and nothing of it is published; a job
//! asked to cancel (through any server) is stopped and ended `cancelled`. When the store cannot
//! be reached for most of a lease, every running job is stopped: its lease is about to run out,
//! and another server will run it again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Server;
use crate::audit::JobState;
use crate::store::{End, State};

/// How often the leases are renewed and cancellations looked for.
pub(super) const BEAT_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn heartbeat(server: Arc<Server>) {
    loop {
        tokio::time::sleep(BEAT_EVERY).await;
        if server.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        beat(&server).await;
    }
}

async fn beat(server: &Arc<Server>) {
    let asked = Instant::now();
    let held = match server.db(|s| s.beat(&server.id, server.lease)) {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!("renewing leases: {e}");
            if !renewed_lately(server) {
                for id in server.running_ids() {
                    lost(
                        server,
                        &id,
                        "the store could not be reached to renew its lease",
                    )
                    .await;
                }
            }
            return;
        }
    };
    *server
        .renewed
        .lock()
        .expect("the lease lock is never poisoned") = asked;
    let ours: HashSet<&str> = held.iter().map(|h| h.id.as_str()).collect();
    // Jobs claimed after the heartbeat asked are not in its answer yet.
    let before: Vec<String> = server
        .running
        .lock()
        .expect("the running lock is never poisoned")
        .iter()
        .filter(|(_, task)| task.since < asked)
        .map(|(id, _)| id.clone())
        .collect();
    for id in before {
        if !ours.contains(id.as_str()) {
            lost(server, &id, "its lease ran out and the store gave it back").await;
        }
    }
    for h in held.iter().filter(|h| h.cancel_asked) {
        if let Err(e) = cancel_here(server, &h.id).await {
            tracing::warn!(job = h.id, "cancelling: {e}");
        }
    }
}

/// Whether the leases were renewed within the last two thirds of a lease: while they were,
/// no other server can have taken this server's jobs.
pub(super) fn renewed_lately(server: &Server) -> bool {
    server
        .renewed
        .lock()
        .expect("the lease lock is never poisoned")
        .elapsed()
        < server.lease * 2 / 3
}

/// Stops a job this server no longer holds: its task, its containers. The store is not
/// written: the job is another server's to hand back.
async fn lost(server: &Arc<Server>, id: &str, why: &str) {
    tracing::warn!(job = id, "stopping the job here: {why}");
    eprintln!("kiln serve: job {id} stopped: {why}");
    if let Err(e) = server.stop_job(id).await {
        tracing::warn!(job = id, "removing its containers: {e}");
    }
    server.wake.notify_one();
}

/// Stops a job this server runs that was asked to cancel, and ends it `cancelled`.
pub(super) async fn cancel_here(server: &Arc<Server>, id: &str) -> Result<(), crate::Error> {
    if !server.stop_job(id).await? {
        return Ok(());
    }
    let end = End {
        state: State::Cancelled,
        status: None,
        exit_code: 130,
        reason: "cancelled by request",
    };
    let ended = server.db(|s| s.finish(id, &server.id, &end));
    if let (Ok(()), Some(job)) = (ended, crate::model::JobId::parse(id)) {
        let state = JobState {
            server: Some(server.id.clone()),
            ..JobState::to("cancelled")
        };
        server.record(&job, state).await?;
    }
    server.wake.notify_one();
    Ok(())
}
