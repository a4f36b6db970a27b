//! The HTTP API of `kiln serve` (docs/openapi.json): every route but `/health` needs the bearer
//! token; bodies are capped; errors are JSON naming what was wrong. Nothing a request says can
//! make kiln write outside its state folder: a submitted job names no output, and its paths must
//! be absolute paths kiln only reads.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Server;
use crate::error::Error;
use crate::job::Job;
use crate::store::{NewJob, State};

/// The largest request body kiln reads.
const MAX_BODY: usize = 1 << 20;
/// The OpenAPI document, served as committed.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub(super) fn router(server: Arc<Server>) -> Router {
    let guarded = Router::new()
        .route("/jobs", post(submit).get(list))
        .route("/jobs/{id}", get(status))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/report", get(report))
        .route("/jobs/{id}/logs", get(logs))
        .route("/jobs/{id}/artifacts/{*path}", get(artifact))
        .route("/jobs/{id}/approve", post(approve))
        .route("/jobs/{id}/reject", post(reject))
        .route("/escalations", get(escalations))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(server.clone(), authorize));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/openapi.json", get(openapi))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(server)
}

/// An error answer: `{"error": "..."}` with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e.exit_code() {
            crate::ExitCode::Invalid => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no job `{id}`"))
}

/// Refuses a request without the server's bearer token (compared in constant time).
async fn authorize(Shared(server): Shared<Arc<Server>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = server.token.as_bytes();
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0;
    if !same {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required: Authorization: Bearer <the token in the state folder>"
                .into(),
        )
        .into_response();
    }
    next.run(request).await
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// POST /jobs: a job file (TOML), or the seed article's record (`Content-Type: application/json`).
async fn submit(Shared(server): Shared<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Answer {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "the body is not UTF-8".into()))?;
    let job = Job::parse(text, json, None, Path::new("request"), &server.config)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let repo = server
        .allowed_repo(job.repo.path())
        .map_err(|why| ApiError(StatusCode::FORBIDDEN, why))?
        .display()
        .to_string();
    let id = job.id.to_string();
    server.db(|s| {
        s.submit(NewJob {
            id: &id,
            priority: job.priority,
            repo: &repo,
            touches: &job.touches,
            spec: text,
            spec_format: if json { "json" } else { "toml" },
        })
    })?;
    server.record(
        "job.state",
        &id,
        json!({"to": "queued", "priority": job.priority, "repo": repo, "branch": job.branch}),
    )?;
    server.wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "state": "queued"})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list(Shared(server): Shared<Arc<Server>>, Query(q): Query<ListQuery>) -> Answer {
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

fn row_of(server: &Server, id: &str) -> Result<crate::store::JobRow, ApiError> {
    server.db(|s| s.get(id))?.ok_or_else(|| not_found(id))
}

async fn status(Shared(server): Shared<Arc<Server>>, UrlPath(id): UrlPath<String>) -> Answer {
    Ok(Json(row_of(&server, &id)?).into_response())
}

/// POST /jobs/{id}/cancel: a queued job at once; a running one's task is stopped and its
/// containers removed before this answers.
async fn cancel(Shared(server): Shared<Arc<Server>>, UrlPath(id): UrlPath<String>) -> Answer {
    let now = server
        .db(|s| s.cancel(&id))?
        .ok_or_else(|| not_found(&id))?;
    if now == State::Running {
        let task = server
            .running
            .lock()
            .expect("the running lock is never poisoned")
            .remove(&id);
        if let Some(task) = task {
            task.abort();
        }
        if let Some(job) = crate::model::JobId::parse(&id) {
            server.sandbox.reap_job(&job).await.map_err(Error::from)?;
        }
        let ended = server.db(|s| {
            s.finish(
                &id,
                State::Cancelled,
                "cancelled",
                130,
                "cancelled by request",
            )
        });
        if ended.is_ok() {
            server.record("job.state", &id, json!({"to": "cancelled"}))?;
        }
        server.wake.notify_one();
    } else if now == State::Cancelled {
        server.record("job.state", &id, json!({"to": "cancelled"}))?;
    }
    Ok(Json(row_of(&server, &id)?).into_response())
}

/// The job's artifacts folder, once the job exists.
fn artifacts_of(server: &Server, id: &str) -> Result<PathBuf, ApiError> {
    row_of(server, id)?;
    Ok(server.artifacts().join(id))
}

async fn report(Shared(server): Shared<Arc<Server>>, UrlPath(id): UrlPath<String>) -> Answer {
    let path = artifacts_of(&server, &id)?.join("report.json");
    let bytes = std::fs::read(&path).map_err(|_| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("job `{id}` has no report yet"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    follow: Option<bool>,
}

/// Every stage log in `dir` so far, attempt by attempt, each under a header line.
/// Every stage log written so far, each under a header line, as the container wrote it (bytes,
/// not necessarily UTF-8). The last log may still be growing; unless `ended`, nothing is added
/// after it, so that a later look's answer starts with this one's.
fn logs_text(dir: &Path, ended: bool) -> Vec<u8> {
    let mut logs = Vec::new();
    for n in 1.. {
        let attempt = dir.join(format!("attempt-{n}"));
        if !attempt.is_dir() {
            break;
        }
        for name in ["generate.log", "test.log", "review.log"] {
            if let Ok(bytes) = std::fs::read(attempt.join(name)) {
                logs.push((format!("==> attempt {n} {name} <==\n"), bytes));
            }
        }
    }
    let last = logs.len().saturating_sub(1);
    let mut text = Vec::new();
    for (i, (header, bytes)) in logs.into_iter().enumerate() {
        text.extend_from_slice(header.as_bytes());
        text.extend_from_slice(&bytes);
        if (ended || i < last) && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
    }
    text
}

/// GET /jobs/{id}/logs: every stage log written so far; with `follow=true`, the answer goes on,
/// each stage's log sent as the stage ends, until the job does.
async fn logs(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Answer {
    let dir = artifacts_of(&server, &id)?;
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow.unwrap_or(false) {
        return Ok((plain, logs_text(&dir, true)).into_response());
    }
    // (bytes sent so far, whether the job had ended at the last look). The text only grows: a
    // running stage's log is the start of what it will be (`Sandbox::run_live`); while a log is
    // rewritten it may look shorter for a moment, so `sent` never goes back.
    let stream = futures_util::stream::unfold((0usize, false), move |(sent, ended)| {
        let (server, dir, id) = (server.clone(), dir.clone(), id.clone());
        async move {
            if ended {
                return None;
            }
            loop {
                let done = server
                    .db(|s| s.get(&id))
                    .ok()
                    .flatten()
                    .is_none_or(|row| row.state.is_final());
                let text = logs_text(&dir, done);
                if text.len() > sent || done {
                    let chunk = text.get(sent..).unwrap_or_default().to_vec();
                    let sent = sent.max(text.len());
                    return Some((Ok::<_, std::convert::Infallible>(chunk), (sent, done)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    });
    Ok((plain, axum::body::Body::from_stream(stream)).into_response())
}

/// GET /jobs/{id}/artifacts/{path}: one file of the job's artifacts; the path may not leave the
/// folder nor follow a link.
async fn artifact(
    Shared(server): Shared<Arc<Server>>,
    UrlPath((id, path)): UrlPath<(String, String)>,
) -> Answer {
    let dir = artifacts_of(&server, &id)?;
    let relative = Path::new(&path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`path` must stay inside the job's artifacts".into(),
        ));
    }
    let file = dir.join(relative);
    let meta = std::fs::symlink_metadata(&file)
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no artifact `{path}`")))?;
    if !meta.is_file() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no artifact `{path}`"),
        ));
    }
    let bytes = std::fs::read(&file).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(bytes.into_response())
}

async fn escalations(Shared(server): Shared<Arc<Server>>) -> Answer {
    let found = crate::escalation::list(&server.artifacts()).map_err(Error::from)?;
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

async fn approve(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let d = decision(&body)?;
    row_of(&server, &id)?;
    let progress = crate::run::Progress::observed(Arc::new(|_: &str| {}));
    let approved = crate::run::approve(
        &server.artifacts(),
        &id,
        &d.by,
        d.note,
        &server.config,
        &progress,
    )
    .await?;
    let (state, reason) = match &approved.not_merged {
        None => (State::Succeeded, format!("approved by {}", d.by.trim())),
        Some(why) => (
            State::Failed,
            format!("approved by {}; not merged: {why}", d.by.trim()),
        ),
    };
    let code = approved.exit_code as i64;
    server.db(|s| s.decide(&id, state, code, &reason))?;
    Ok(Json(
        json!({"id": id, "state": state, "commit": approved.commit, "branch": approved.branch,
                   "merged": approved.merged, "exit_code": code}),
    )
    .into_response())
}

async fn reject(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let d = decision(&body)?;
    row_of(&server, &id)?;
    let note = d.note.unwrap_or_default();
    crate::run::reject(&server.artifacts(), &id, &d.by, &note, &server.config)?;
    let reason = format!("rejected by {}: {note}", d.by.trim());
    server.db(|s| s.decide(&id, State::Rejected, 11, &reason))?;
    Ok(Json(json!({"id": id, "state": "rejected", "exit_code": 11})).into_response())
}

/// GET /metrics: Prometheus text format.
async fn metrics(Shared(server): Shared<Arc<Server>>) -> Answer {
    let counts = server.db(|s| s.counts())?;
    let mut text = String::from("# HELP kiln_jobs Jobs by state.\n# TYPE kiln_jobs gauge\n");
    for (state, n) in &counts {
        text.push_str(&format!("kiln_jobs{{state=\"{}\"}} {n}\n", state.as_str()));
    }
    let queued = counts
        .iter()
        .find(|(s, _)| *s == State::Queued)
        .map_or(0, |(_, n)| *n);
    text.push_str(&format!(
        "# HELP kiln_queue_depth Jobs waiting to start.\n# TYPE kiln_queue_depth gauge\nkiln_queue_depth {queued}\n"
    ));
    server.metrics.render(&mut text);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes `router` serves, as the OpenAPI document names them.
    const ROUTES: [&str; 12] = [
        "/health",
        "/openapi.json",
        "/jobs",
        "/jobs/{id}",
        "/jobs/{id}/cancel",
        "/jobs/{id}/report",
        "/jobs/{id}/logs",
        "/jobs/{id}/artifacts/{path}",
        "/jobs/{id}/approve",
        "/jobs/{id}/reject",
        "/escalations",
        "/metrics",
    ];

    #[test]
    fn the_committed_openapi_document_names_every_route_and_no_other() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort();
        let mut served: Vec<&str> = ROUTES.to_vec();
        served.sort();
        assert_eq!(documented, served);
        // And the router's own code (this file above its tests) routes each of them.
        let whole = include_str!("api.rs");
        let source = &whole[..whole
            .find("#[cfg(test)]")
            .expect("the tests are in this file")];
        for route in served {
            let axum_route = route.replace("{path}", "{*path}");
            assert!(
                source.contains(&format!("\"{axum_route}\"")),
                "{route} is documented but not routed"
            );
        }
    }
}
