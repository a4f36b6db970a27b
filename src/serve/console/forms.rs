//! The console's forms: sign in and out, approve and reject. Every one but sign-in needs the
//! session's CSRF token; the decisions are `serve::decide`'s, as the API makes them.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Path as UrlPath, State as Shared};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::session::{COOKIE, LIFETIME, Session};
use super::{now, pages, refused, scheme};
use crate::serve::Server;
use crate::serve::decide::{self, Refused};

#[derive(Deserialize)]
pub(super) struct SignIn {
    token: String,
}

/// POST /console/sign-in: the server's token, for a session cookie.
pub(super) async fn sign_in(
    Shared(server): Shared<Arc<Server>>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    if !server.token_is(form.token.trim()) {
        let page = pages::sign_in_page(Some("That is not this server's token."));
        return (StatusCode::UNAUTHORIZED, Html(page.into_string())).into_response();
    }
    let (_, value) = server.sessions.start(now());
    let secure = if scheme(&headers) == "https" || server.https {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.as_secs()
    );
    redirect_setting("/console", &cookie)
}

/// A redirect to `to` that sets `cookie`.
fn redirect_setting(to: &str, cookie: &str) -> Response {
    let mut response = Redirect::to(to).into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct Csrf {
    #[serde(default)]
    csrf: String,
}

/// POST /console/sign-out: the session ends here and its cookie is cleared.
pub(super) async fn sign_out(
    Shared(server): Shared<Arc<Server>>,
    Extension(session): Extension<Session>,
    Form(form): Form<Csrf>,
) -> Response {
    if let Some(refusal) = check_csrf(&server, &session, &form.csrf) {
        return refusal;
    }
    server.sessions.end(&session, now());
    let gone = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    redirect_setting("/console/sign-in", &gone)
}

#[derive(Deserialize)]
pub(super) struct Decision {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    by: String,
    #[serde(default)]
    note: String,
}

/// POST /console/jobs/{id}/approve.
pub(super) async fn approve(
    Shared(server): Shared<Arc<Server>>,
    Extension(session): Extension<Session>,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<Decision>,
) -> Response {
    if let Some(refusal) = check_csrf(&server, &session, &form.csrf) {
        return refusal;
    }
    let note = Some(form.note).filter(|n| !n.trim().is_empty());
    answer(&id, decide::approve(&server, &id, &form.by, note).await)
}

/// POST /console/jobs/{id}/reject: a note saying why is required.
pub(super) async fn reject(
    Shared(server): Shared<Arc<Server>>,
    Extension(session): Extension<Session>,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<Decision>,
) -> Response {
    if let Some(refusal) = check_csrf(&server, &session, &form.csrf) {
        return refusal;
    }
    answer(&id, decide::reject(&server, &id, &form.by, form.note).await)
}

/// The refusal of a form whose CSRF token is not `session`'s, if it is not.
fn check_csrf(server: &Server, session: &Session, given: &str) -> Option<Response> {
    (!server.sessions.csrf_matches(session, given)).then(|| {
        refused(
            StatusCode::FORBIDDEN,
            "This form's CSRF token is missing or not this session's; reload the page and try again.",
        )
    })
}

/// After a decision: back to the job's page, which shows what came of it; or why not.
fn answer(id: &str, made: Result<serde_json::Value, Refused>) -> Response {
    match made {
        Ok(_) => Redirect::to(&format!("/console/jobs/{id}")).into_response(),
        Err(Refused::NotFound(why)) => refused(StatusCode::NOT_FOUND, &why),
        Err(Refused::Invalid(why)) => refused(StatusCode::CONFLICT, &why),
        Err(Refused::Failed(e)) => refused(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
