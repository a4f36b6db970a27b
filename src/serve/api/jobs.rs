//! The job routes: submit, list, status, cancel.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{Answer, ApiError, not_found, row_of};
use crate::audit::JobState;
use crate::job::{Format, Job};
use crate::model::{JobId, TraceParent};
use crate::serve::{Server, lease};
use crate::store::{NewJob, State};

/// How long a cancel waits for another server to stop the job it runs.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// POST /jobs: a job file (TOML), or the seed article's record (`Content-Type: application/json`).
pub(super) async fn submit(
    Shared(server): Shared<Arc<Server>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let format = if json { Format::Json } else { Format::Toml };
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "the body is not UTF-8".into()))?;
    let ctx = &server.ctx;
    let job = Job::parse(
        text,
        format,
        None,
        Path::new("request"),
        &ctx.config,
        &ctx.secrets,
    )
    .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let repo = server
        .allowed_repo(job.repo.path())
        .map_err(|why| ApiError(StatusCode::FORBIDDEN, why))?
        .display()
        .to_string();
    let id = job.id.to_string();
    // W3C trace context: a malformed parent is ignored, and the job starts a trace of its own.
    let trace_parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceParent>().ok());
    server.db(|s| {
        s.submit(NewJob {
            id: &id,
            priority: job.priority,
            repo: &repo,
            touches: job.touches.patterns(),
            spec: text,
            spec_format: format,
            trace_parent: trace_parent.as_ref().map(TraceParent::as_str),
        })
    })?;
    let queued = JobState {
        priority: Some(job.priority),
        repo: Some(repo),
        branch: Some(job.branch.to_string()),
        ..JobState::to("queued")
    };
    server.record(&job.id, queued).await?;
    server.wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "state": "queued"})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list(
    Shared(server): Shared<Arc<Server>>,
    Query(q): Query<ListQuery>,
) -> Answer {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("`state`: `{s}` is not a job state"),
            )
        })?),
    };
    let rows = server.db(|s| s.list(state, q.limit.unwrap_or(1000).min(10_000)))?;
    Ok(Json(json!({"jobs": rows})).into_response())
}

pub(super) async fn status(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    Ok(Json(row_of(&server, &id)?).into_response())
}

/// POST /jobs/{id}/cancel: a queued job at once; a running one is stopped and its containers
/// removed before this answers, by this server if it runs it, else by the server that does (its
/// heartbeat sees the request within seconds; this answer waits for it, up to [`CANCEL_WAIT`]).
pub(super) async fn cancel(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    let now = server
        .db(|s| s.cancel(&id))?
        .ok_or_else(|| not_found(&id))?;
    if now == State::Running {
        let here = server.running_ids().contains(&id);
        if here {
            lease::cancel_here(&server, &id).await?;
        } else {
            let deadline = Instant::now() + CANCEL_WAIT;
            while Instant::now() < deadline && row_of(&server, &id)?.state == State::Running {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    } else if let (State::Cancelled, Some(job)) = (now, JobId::parse(&id)) {
        server.record(&job, JobState::to("cancelled")).await?;
    }
    Ok(Json(row_of(&server, &id)?).into_response())
}
