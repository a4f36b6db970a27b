//! Deciding an escalated job, for the API and the console alike. A decision runs as a task of
//! its own, which the request only waits for: a client that goes away cannot cut an approval in
//! half (its publish, merge and re-test run to their end and are recorded). Any server decides
//! any job: it first takes the decision in the store (one at a time, the first wins), works from
//! the job's files as the store keeps them, and keeps what the decision wrote there after.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Server, kept};
use crate::error::Error;
use crate::escalation::{Found, Kind};
use crate::run::Progress;
use crate::store::{End, State};

/// Why a decision was not made.
#[derive(Debug)]
pub(crate) enum Refused {
    /// No such job.
    NotFound(String),
    /// The decision cannot be made as asked (decided already, not escalated, a bad name or
    /// note): what is wrong.
    Invalid(String),
    /// Something failed on the way: the decision was given back.
    Failed(Error),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        match e.exit_code() {
            crate::model::ExitCode::Invalid => Refused::Invalid(e.to_string()),
            _ => Refused::Failed(e),
        }
    }
}

/// Approves job `id` as `by`, with `note`: publishes its tested commit and merges it when the
/// job asks. What came of it, as the API answers.
pub(crate) async fn approve(
    server: &Arc<Server>,
    id: &str,
    by: &str,
    note: Option<String>,
) -> Result<Value, Refused> {
    exists(server, id)?;
    let (server, id, by) = (server.clone(), id.to_string(), by.to_string());
    owned(async move {
        let progress = Progress::observed(Arc::new(|_| {}));
        let approved = deciding(&server, &id, async {
            crate::run::approve(&server.artifacts(), &id, &by, note, &server.ctx, &progress).await
        })
        .await?;
        let (state, reason) = match &approved.not_merged {
            None => (State::Succeeded, format!("approved by {}", by.trim())),
            Some(why) => (
                State::Failed,
                format!("approved by {}; not merged: {why}", by.trim()),
            ),
        };
        let code = approved.exit_code as i64;
        decided(&server, &id, state, code, &reason).await?;
        Ok(
            json!({"id": id, "state": state, "commit": approved.commit, "branch": approved.branch,
                   "merged": approved.merged, "exit_code": code}),
        )
    })
    .await
}

/// Rejects job `id` as `by`, saying why in `note`.
pub(crate) async fn reject(
    server: &Arc<Server>,
    id: &str,
    by: &str,
    note: String,
) -> Result<Value, Refused> {
    exists(server, id)?;
    let (server, id, by) = (server.clone(), id.to_string(), by.to_string());
    owned(async move {
        deciding(&server, &id, async {
            crate::run::reject(&server.artifacts(), &id, &by, &note, &server.ctx).await
        })
        .await?;
        let reason = format!("rejected by {}: {note}", by.trim());
        decided(&server, &id, State::Rejected, 11, &reason).await?;
        Ok(json!({"id": id, "state": "rejected", "exit_code": 11}))
    })
    .await
}

/// Every escalation this server can see, whichever server ran its job (with a shared store,
/// the files of every job that ended for a human are brought here first).
pub(crate) async fn escalations(server: &Arc<Server>) -> Result<Vec<Found>, Error> {
    if server.shared {
        let rows = server.db(|s| s.list(None, 10_000))?;
        for row in rows
            .iter()
            .filter(|r| r.status.and_then(Kind::of).is_some())
        {
            kept::fetch(server, &row.id).await?;
        }
    }
    let root = server.artifacts();
    tokio::task::spawn_blocking(move || crate::escalation::list(&root))
        .await
        .map_err(Error::Join)?
        .map_err(Error::from)
}

fn exists(server: &Server, id: &str) -> Result<(), Refused> {
    match server.db(|s| s.get(id))? {
        Some(_) => Ok(()),
        None => Err(Refused::NotFound(format!("no job `{id}`"))),
    }
}

/// Runs `decide` as a task owned by the server, and waits for its answer.
async fn owned<F>(decide: F) -> Result<Value, Refused>
where
    F: Future<Output = Result<Value, Refused>> + Send + 'static,
{
    tokio::spawn(decide).await.map_err(Error::Join)?
}

/// Takes the decision on job `id` in the store, brings its files here, and runs `decide`; a
/// decision that fails is given back, for someone to make again.
async fn deciding<T>(
    server: &Arc<Server>,
    id: &str,
    decide: impl Future<Output = Result<T, Error>>,
) -> Result<T, Refused> {
    server
        .db(|s| s.claim_decision(id, &server.id))
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    let made = match kept::fetch(server, id).await {
        Ok(()) => decide.await,
        Err(e) => Err(e),
    };
    if let Err(e) = made {
        server.db(|s| s.release_decision(id))?;
        return Err(e.into());
    }
    Ok(made?)
}

/// Records the decision made on `id`, and keeps what it wrote in the store.
async fn decided(
    server: &Arc<Server>,
    id: &str,
    state: State,
    exit_code: i64,
    reason: &str,
) -> Result<(), Refused> {
    kept::keep(server, id).await?;
    let end = End {
        state,
        status: None,
        exit_code,
        reason,
    };
    server.db(|s| s.decide(id, &end))?;
    Ok(())
}
