//! The review console: web pages `kiln serve` serves under `/console` for the people who watch
//! jobs and decide escalations. Server-rendered HTML (maud escapes every value), one small
//! script for live updates and a style sheet, both embedded; a Content-Security-Policy that lets
//! nothing else load or run. A browser signs in with the server's token once and holds a signed
//! session cookie (`session`); every form that changes something carries the session's CSRF
//! token and is refused from another origin. Readable with JavaScript off.

mod assets;
mod diff;
mod events;
mod forms;
mod job;
mod pages;
mod session;
mod text;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State as Shared};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::Server;
pub(crate) use session::Sessions;
use session::{COOKIE, Session};

/// Where the console lives.
const ROOT: &str = "/console";

/// What every console answer carries: nothing loads but from here, no script but ours, no
/// framing, no sniffing, no caching of pages that show jobs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(super) fn router(server: Arc<Server>) -> Router {
    let signed_in = Router::new()
        .route("/console", get(pages::jobs))
        .route("/console/escalations", get(pages::escalations))
        .route("/console/jobs/{id}", get(job::page))
        .route("/console/jobs/{id}/approve", post(forms::approve))
        .route("/console/jobs/{id}/reject", post(forms::reject))
        .route("/console/sign-out", post(forms::sign_out))
        .route("/console/events", get(events::stream))
        .route_layer(middleware::from_fn_with_state(
            server.clone(),
            require_session,
        ));
    Router::new()
        .route("/console/sign-in", get(pages::sign_in).post(forms::sign_in))
        .route("/console/assets/{name}", get(assets::serve))
        .merge(signed_in)
        .layer(middleware::from_fn(same_origin_only))
        .layer(middleware::from_fn(headers))
        .with_state(server)
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The session a request's cookie stands for, if any.
fn session_of(server: &Server, headers: &HeaderMap) -> Option<Session> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())?;
    server.sessions.check(&value, now())
}

/// Lets a request through only with a session: a page asked without one is sent to sign in,
/// anything else is refused.
async fn require_session(
    Shared(server): Shared<Arc<Server>>,
    mut request: Request,
    next: Next,
) -> Response {
    match session_of(&server, request.headers()) {
        Some(session) => {
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        None if request.method() == Method::GET && request.uri().path() != "/console/events" => {
            Redirect::to("/console/sign-in").into_response()
        }
        None => refused(StatusCode::UNAUTHORIZED, "You are not signed in."),
    }
}

/// Refuses a state-changing request another site's page sent: its `Origin` (or, without one,
/// `Sec-Fetch-Site`) must say it came from this console. The CSRF token is checked beside it.
async fn same_origin_only(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let headers = request.headers();
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let foreign = match origin.filter(|o| *o != "null") {
            Some(origin) => Some(origin) != own_origin(headers).as_deref(),
            // No origin said (or `null`): a browser says where the request came from in
            // `Sec-Fetch-Site`; a client that is no browser says neither, and has no cookie
            // a page could have lent it.
            None => match site {
                Some(site) => site != "same-origin" && site != "none",
                None => origin.is_some(),
            },
        };
        if foreign {
            return refused(
                StatusCode::FORBIDDEN,
                "This form was sent from another site; kiln refuses it.",
            );
        }
    }
    next.run(request).await
}

/// `http://host[:port]` as the request names this server (`https` behind a proxy that says
/// so).
fn own_origin(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!("{}://{host}", scheme(headers)))
}

fn scheme(headers: &HeaderMap) -> &'static str {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok());
    if forwarded == Some("https") {
        "https"
    } else {
        "http"
    }
}

/// Adds the console's security headers to every answer.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // same-origin, not no-referrer: with no-referrer a browser sends `Origin: null`.
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A short page saying why a request was refused, with a way back.
fn refused(status: StatusCode, why: &str) -> Response {
    let page = pages::layout(
        "Refused",
        None,
        maud::html! {
            h1 { "Refused" }
            p.refusal role="alert" { (why) }
            p { a href=(ROOT) { "Back to the jobs" } }
        },
    );
    (status, Html(page.into_string())).into_response()
}
