//! The HTTP API of `kiln serve` (docs/openapi.json): every route but `/health` needs the bearer
//! token; bodies are capped; errors are JSON naming what was wrong. Nothing a request says can
//! make kiln write outside its state folder: a submitted job names no output, and its paths must
//! be absolute paths kiln only reads.

mod decisions;
mod files;
mod jobs;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State as Shared};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::Server;
use crate::error::Error;
use crate::model::ExitCode;
use crate::store::{JobRow, State};
use decisions::{approve, escalations, reject};
use files::{artifact, logs, report};
use jobs::{cancel, list, status, submit};

/// The largest request body kiln reads.
const MAX_BODY: usize = 1 << 20;
/// The OpenAPI document, served as committed.
const OPENAPI: &str = include_str!("../../../docs/openapi.json");

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
            ExitCode::Invalid => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no job `{id}`"))
}

fn row_of(server: &Server, id: &str) -> Result<JobRow, ApiError> {
    server.db(|s| s.get(id))?.ok_or_else(|| not_found(id))
}

/// Refuses a request without the server's bearer token (compared in constant time).
async fn authorize(Shared(server): Shared<Arc<Server>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !server.token_is(given) {
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
        use serde_json::Value;
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
        let whole = include_str!("mod.rs");
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
