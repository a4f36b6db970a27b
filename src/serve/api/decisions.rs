//! The routes where a human decides: the escalations waiting, approve and reject. A decision
//! runs as a task of its own, which the request only waits for: a client that goes away cannot
//! cut an approval in half (its publish, merge and re-test run to their end and are recorded).
//! Any server decides any job: it first takes the decision in the store (one at a time, the
//! first wins), works from the job's files as the store keeps them, and keeps what the decision
//! wrote there after.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as Shared};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, ApiError, row_of};
use crate::error::Error;
use crate::escalation::Kind;
use crate::run::Progress;
use crate::serve::{Server, kept};
use crate::store::{End, State};

pub(super) async fn escalations(Shared(server): Shared<Arc<Server>>) -> Answer {
    if server.shared {
        // Every job that ended for a human, whichever server ran it.
        let rows = server.db(|s| s.list(None, 10_000))?;
        for row in rows
            .iter()
            .filter(|r| r.status.and_then(Kind::of).is_some())
        {
            kept::fetch(&server, &row.id).await?;
        }
    }
    let root = server.artifacts();
    let found = tokio::task::spawn_blocking(move || crate::escalation::list(&root))
        .await
        .map_err(Error::Join)?
        .map_err(Error::from)?;
    let rows: Vec<Value> = found
        .iter()
        .map(|f| {
            json!({"id": f.escalation.id, "state": f.state(), "kind": f.escalation.kind,
                   "reason": f.escalation.reason, "created_at": f.escalation.created_at})
        })
        .collect();
    Ok(Json(json!({"escalations": rows})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    by: String,
    note: Option<String>,
}

fn decision(body: &Bytes) -> Result<Decision, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

/// Runs `decide` as a task owned by the server, and waits for its answer.
async fn owned<F>(decide: F) -> Answer
where
    F: Future<Output = Answer> + Send + 'static,
{
    tokio::spawn(decide).await.map_err(Error::Join)?
}

pub(super) async fn approve(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let d = decision(&body)?;
    row_of(&server, &id)?;
    owned(async move {
        let progress = Progress::observed(Arc::new(|_| {}));
        let approved = deciding(&server, &id, async {
            crate::run::approve(
                &server.artifacts(),
                &id,
                &d.by,
                d.note,
                &server.ctx,
                &progress,
            )
            .await
        })
        .await?;
        let (state, reason) = match &approved.not_merged {
            None => (State::Succeeded, format!("approved by {}", d.by.trim())),
            Some(why) => (
                State::Failed,
                format!("approved by {}; not merged: {why}", d.by.trim()),
            ),
        };
        let code = approved.exit_code as i64;
        decided(&server, &id, state, code, &reason).await?;
        Ok(Json(
            json!({"id": id, "state": state, "commit": approved.commit, "branch": approved.branch,
                   "merged": approved.merged, "exit_code": code}),
        )
        .into_response())
    })
    .await
}

pub(super) async fn reject(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let d = decision(&body)?;
    row_of(&server, &id)?;
    owned(async move {
        let note = d.note.unwrap_or_default();
        deciding(&server, &id, async {
            crate::run::reject(&server.artifacts(), &id, &d.by, &note, &server.ctx).await
        })
        .await?;
        let reason = format!("rejected by {}: {note}", d.by.trim());
        decided(&server, &id, State::Rejected, 11, &reason).await?;
        Ok(Json(json!({"id": id, "state": "rejected", "exit_code": 11})).into_response())
    })
    .await
}

/// Takes the decision on job `id` in the store, brings its files here, and runs `decide`; a
/// decision that fails is given back, for someone to make again.
async fn deciding<T>(
    server: &Arc<Server>,
    id: &str,
    decide: impl Future<Output = Result<T, Error>>,
) -> Result<T, ApiError> {
    server
        .db(|s| s.claim_decision(id, &server.id))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
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
) -> Result<(), ApiError> {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends as an approve or reject body, it is a decision to check
        /// further, or a 400 saying what is wrong: never a panic, never anything else.
        #[test]
        fn any_body_is_a_decision_or_a_clear_400(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                "\\{\"by\": *\"[^\"]{0,20}\"(, *\"note\": *(null|\"[^\"]{0,20}\"|[0-9]+))?(, *\"[a-z]{1,5}\": *1)?\\}"
                    .prop_map(String::into_bytes),
            ],
        ) {
            match decision(&Bytes::from(body.clone())) {
                Ok(d) => {
                    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    prop_assert_eq!(sent["by"].as_str(), Some(d.by.as_str()));
                    prop_assert_eq!(sent["note"].as_str(), d.note.as_deref());
                }
                Err(ApiError(status, message)) => {
                    prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                    prop_assert!(!message.is_empty());
                }
            }
        }
    }
}
