//! The console's frame and its list pages: sign-in, the jobs (live), the escalations waiting.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State as Shared};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde::{Deserialize, Serialize};

use super::session::Session;
use super::text::{ago, spec_field};
use super::{ROOT, refused};
use crate::error::Error;
use crate::model::time::now_ms;
use crate::serve::{Server, decide};
use crate::store::{JobRow, State};

/// The most jobs the list shows (the newest).
pub(super) const LISTED: usize = 200;

/// The page around `body`; `csrf` is set for a signed-in reader (the navigation, the sign-out
/// form and the live-update script are theirs only).
pub(super) fn layout(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "kiln · " (title) }
                link rel="stylesheet" href="/console/assets/console.css";
                @if csrf.is_some() {
                    script src="/console/assets/console.js" defer {}
                }
            }
            body {
                a.skip href="#main" { "Skip to the content" }
                @if let Some(csrf) = csrf {
                    header {
                        nav aria-label="Console" {
                            a href=(ROOT) { "Jobs" }
                            a href="/console/escalations" { "Escalations" }
                            form.inline method="post" action="/console/sign-out" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// GET /console/sign-in.
pub(super) async fn sign_in() -> Html<String> {
    Html(sign_in_page(None).into_string())
}

/// The sign-in form, with why the last try failed.
pub(super) fn sign_in_page(failed: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in to kiln" }
            @if let Some(why) = failed {
                p.refusal role="alert" { (why) }
            }
            form method="post" action="/console/sign-in" {
                label for="token" { "The server's token" }
                input id="token" name="token" type="password" autocomplete="current-password"
                    required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "The token is in the server's state folder (" code { "token" } "), or the file "
                code { "--token-file" } " names." }
        },
    )
}

/// One job as the list shows it (and the live updates send it).
#[derive(Debug, Serialize)]
pub(super) struct Listed {
    id: String,
    state: &'static str,
    pub(super) doing: String,
    repo: String,
    branch: String,
    age: String,
}

impl Listed {
    pub(super) fn of(row: &JobRow, now: i64) -> Listed {
        let doing = match (row.state, row.stage) {
            (State::Running, Some(stage)) => {
                format!("attempt {} · {}", row.attempt, stage.as_str())
            }
            (State::Running, None) => "starting".into(),
            _ if row.attempt == 1 => "1 attempt".into(),
            _ if row.attempt > 1 => format!("{} attempts", row.attempt),
            _ => String::new(),
        };
        Listed {
            id: row.id.clone(),
            state: row.state.as_str(),
            doing,
            repo: row.repo.clone(),
            branch: spec_field(row, "branch").unwrap_or_default(),
            age: ago(row.submitted_ms, now),
        }
    }
}

/// The newest jobs in `state` (any, when none), newest first.
pub(super) fn listed(server: &Server, state: Option<State>) -> Result<Vec<Listed>, Error> {
    let rows = server.db(|s| s.newest(state, LISTED))?;
    let now = now_ms();
    Ok(rows.iter().map(|r| Listed::of(r, now)).collect())
}

#[derive(Deserialize)]
pub(super) struct Filter {
    state: Option<String>,
}

impl Filter {
    /// The state asked for; an unknown one is no filter.
    pub(super) fn state(&self) -> Option<State> {
        self.state.as_deref().and_then(State::parse)
    }
}

/// The states a reader filters by.
const STATES: [State; 8] = [
    State::Queued,
    State::Running,
    State::Escalated,
    State::AwaitingReview,
    State::Succeeded,
    State::Failed,
    State::Rejected,
    State::Cancelled,
];

/// GET /console: the jobs, newest first, live.
pub(super) async fn jobs(
    Shared(server): Shared<Arc<Server>>,
    Extension(session): Extension<Session>,
    Query(filter): Query<Filter>,
) -> Response {
    let state = filter.state();
    let jobs = match listed(&server, state) {
        Ok(jobs) => jobs,
        Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let csrf = server.sessions.csrf(&session);
    let events = match state {
        Some(s) => format!("/console/events?state={}", s.as_str()),
        None => "/console/events".into(),
    };
    let body = html! {
        h1 { "Jobs" }
        nav.filters aria-label="Filter by state" {
            a href=(ROOT) aria-current=[state.is_none().then_some("page")] { "all" }
            @for s in STATES {
                a href={ (ROOT) "?state=" (s.as_str()) }
                    aria-current=[(state == Some(s)).then_some("page")] { (s.as_str()) }
            }
        }
        table.jobs {
            caption { "The newest " (LISTED) " jobs" @if let Some(s) = state { ", " (s.as_str()) } }
            thead { tr { th scope="col" { "Job" } th scope="col" { "State" }
                th scope="col" { "Doing" } th scope="col" { "Repository" }
                th scope="col" { "Branch" } th scope="col" { "Submitted" } } }
            tbody id="jobs" data-events=(events) {
                @for job in &jobs { (job_row(job)) }
            }
        }
        @if jobs.is_empty() { p id="empty" { "No jobs here." } }
    };
    Html(layout("Jobs", Some(&csrf), body).into_string()).into_response()
}

fn job_row(job: &Listed) -> Markup {
    html! {
        tr data-id=(job.id) {
            td { a href={ "/console/jobs/" (job.id) } { code { (job.id) } } }
            td { span class={ "state s-" (job.state) } { (job.state) } }
            td { (job.doing) }
            td.path { (job.repo) }
            td.path { (job.branch) }
            td { (job.age) }
        }
    }
}

/// GET /console/escalations: what waits for a human, oldest first, with why.
pub(super) async fn escalations(
    Shared(server): Shared<Arc<Server>>,
    Extension(session): Extension<Session>,
) -> Response {
    let mut found = match decide::escalations(&server).await {
        Ok(found) => found,
        Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    found.retain(|f| f.decision.is_none());
    found.sort_by(|a, b| a.escalation.created_at.cmp(&b.escalation.created_at));
    let csrf = server.sessions.csrf(&session);
    let body = html! {
        h1 { "Escalations waiting" }
        @if found.is_empty() {
            p { "Nothing waits for a decision." }
        } @else {
            ol.escalations {
                @for f in &found {
                    li {
                        a href={ "/console/jobs/" (f.escalation.id) } { code { (f.escalation.id) } }
                        " · " span.kind { (f.escalation.kind.as_str()) }
                        " · since " (f.escalation.created_at)
                        p.reason { (f.escalation.reason) }
                        p.path { (f.escalation.request.branch) " in " (f.escalation.request.repo) }
                    }
                }
            }
        }
    };
    Html(layout("Escalations", Some(&csrf), body).into_string()).into_response()
}
