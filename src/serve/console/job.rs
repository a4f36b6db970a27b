//! GET /console/jobs/{id}: the whole story of one job, for the person who decides it: the
//! request, a timeline of attempts and stages, each attempt's diff file by file with the policy
//! findings and the reviewer's comments at their lines, the tails of its logs, its egress, the
//! gate's decision with the modules' hashes, the decision forms or the decision made, and the
//! job's audit records. Everything shown came from a job or a container: it is text, escaped.

use std::path::Path;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path as UrlPath, State as Shared};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;

use super::diff::{Notes, attempt_diff};
use super::pages::{Listed, layout};
use super::refused;
use super::session::Session;
use super::text::{duration, read_json, spec_field, tail};
use crate::audit::Record;
use crate::escalation::Found;
use crate::model::JobId;
use crate::model::time::now_ms;
use crate::serve::{Server, kept};
use crate::store::{JobRow, State};

/// The end of each log a page shows.
const LOG_TAIL: u64 = 8 << 10;
/// The most audit records a page shows.
const AUDIT_RECORDS: usize = 500;
/// The most attempts a page reads (a job has at most a handful).
const MAX_ATTEMPTS: u32 = 20;

/// What the page shows, read from the job's files.
struct Story {
    report: Option<Value>,
    gate: Option<Value>,
    attempts: Vec<AttemptFiles>,
    escalation: Option<Found>,
}

struct AttemptFiles {
    n: u32,
    diff: Option<crate::model::Diff>,
    logs: Vec<(&'static str, String, bool)>,
    egress: Vec<(&'static str, Value)>,
}

impl Story {
    fn read(root: &Path, id: &str) -> Story {
        let dir = root.join(id);
        let attempts = (1..=MAX_ATTEMPTS)
            .map(|n| (n, dir.join(format!("attempt-{n}"))))
            .take_while(|(_, d)| d.is_dir())
            .map(|(n, d)| AttemptFiles::read(n, &d))
            .collect();
        Story {
            report: read_json(&dir.join("report.json")),
            gate: read_json(&dir.join("gate.json")),
            attempts,
            escalation: crate::escalation::open(root, id).ok(),
        }
    }
}

impl AttemptFiles {
    fn read(n: u32, dir: &Path) -> AttemptFiles {
        let stages = ["generate", "test", "review"];
        let logs = stages
            .iter()
            .filter_map(|s| {
                tail(&dir.join(format!("{s}.log")), LOG_TAIL).map(|(t, cut)| (*s, t, cut))
            })
            .collect();
        let egress = stages
            .iter()
            .filter_map(|s| read_json(&dir.join(format!("{s}.egress.json"))).map(|v| (*s, v)))
            .collect();
        let diff = read_json(&dir.join("diff.json")).and_then(|v| serde_json::from_value(v).ok());
        AttemptFiles {
            n,
            diff,
            logs,
            egress,
        }
    }
}

pub(super) async fn page(
    Shared(server): Shared<Arc<Server>>,
    Extension(session): Extension<Session>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    // Only an id kiln made names a folder: nothing else is joined to a path.
    if JobId::parse(&id).is_none() {
        return refused(StatusCode::NOT_FOUND, "There is no such job.");
    }
    let row = match server.db(|s| s.get(&id)) {
        Ok(Some(row)) => row,
        Ok(None) => return refused(StatusCode::NOT_FOUND, "There is no such job."),
        Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    if server.shared
        && row.state != State::Queued
        && let Err(e) = kept::fetch(&server, &id).await
    {
        tracing::warn!(job = id, "the console could not fetch the job's files: {e}");
    }
    let (root, key) = (server.artifacts(), id.clone());
    let audit = server.ctx.audit.clone();
    let read = tokio::task::spawn_blocking(move || {
        let records = match &audit {
            Some(log) => log.of_job(&key, AUDIT_RECORDS).map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        };
        (Story::read(&root, &key), records)
    })
    .await;
    let Ok((story, records)) = read else {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The job's files could not be read.",
        );
    };
    let csrf = server.sessions.csrf(&session);
    let body = render(&row, &story, &records, &csrf);
    Html(layout(&format!("job {id}"), Some(&csrf), body).into_string()).into_response()
}

fn render(
    row: &JobRow,
    story: &Story,
    records: &Result<Vec<Record>, String>,
    csrf: &str,
) -> Markup {
    let listed = Listed::of(row, now_ms());
    let report = story.report.as_ref();
    html! {
        div #job data-job=(row.id) data-state=(row.state.as_str()) {
            h1 { "Job " code { (row.id) } }
            p {
                span #job-state class={ "state s-" (row.state.as_str()) } { (row.state.as_str()) }
                " " span #job-doing { (listed.doing) }
                @if row.runs > 1 { " · started " (row.runs) " times" }
                @if let Some(server) = &row.server { " · server " code { (server) } }
            }
            @if let Some(reason) = &row.reason { p.reason { (reason) } }
            (request(row, report))
            (decision(row, story, csrf))
            (published(report, records))
            (timeline(report))
            (spend(report))
            @for attempt in story.attempts.iter().rev() {
                (attempt_section(attempt, story))
            }
            (gate(story.gate.as_ref()))
            (audit(records))
        }
    }
}

fn request(row: &JobRow, report: Option<&Value>) -> Markup {
    let field = |name: &str| spec_field(row, name);
    let base = report
        .and_then(|r| r["job"]["base_commit"].as_str().map(str::to_string))
        .or_else(|| field("base"));
    html! {
        h2 { "Request" }
        dl.request {
            dt { "Repository" } dd.path { (row.repo) }
            dt { "Base" } dd.path { (base.unwrap_or_else(|| "its default branch".into())) }
            dt { "Branch" } dd.path { (field("branch").unwrap_or_default()) }
            dt { "Priority" } dd { (row.priority) }
        }
        h3 { "Prompt" }
        pre.prompt { (field("prompt").unwrap_or_else(|| "(given in a file the job names)".into())) }
    }
}

/// The escalation and its decision: the forms while it is open, who decided what after.
fn decision(row: &JobRow, story: &Story, csrf: &str) -> Markup {
    let Some(found) = &story.escalation else {
        return html! {};
    };
    let e = &found.escalation;
    html! {
        section.escalation aria-labelledby="escalation" {
            h2 #escalation { "Escalation: " (e.kind.as_str()) }
            p.reason { (e.reason) }
            @if let Some(channel) = &e.channel { p.muted { "Channel: " (channel) } }
            @match &found.decision {
                Some(d) => {
                    p.result role="status" {
                        (found.state()) " by " (d.by) " at " (d.at)
                        @if let Some(note) = &d.note { ": " (note) }
                    }
                }
                None => {
                    @if e.candidate.is_some() {
                        (decision_form(&row.id, csrf, "approve", "Approve and publish", "Note (optional)", false))
                    } @else {
                        p.muted { "No tested commit: this escalation can only be rejected." }
                    }
                    (decision_form(&row.id, csrf, "reject", "Reject", "Why (required)", true))
                }
            }
        }
    }
}

/// The form that makes decision `verb` (`approve`, `reject`) on job `id`: who decides, and a
/// note (`note_required` for a rejection).
fn decision_form(
    id: &str,
    csrf: &str,
    verb: &str,
    button: &str,
    note_label: &str,
    note_required: bool,
) -> Markup {
    let (by, note) = (format!("{verb}-by"), format!("{verb}-note"));
    html! {
        form.decide method="post" action={ "/console/jobs/" (id) "/" (verb) } {
            h3 { (button) }
            input type="hidden" name="csrf" value=(csrf);
            label for=(by) { "Your name" }
            input id=(by) type="text" name="by" required maxlength="100";
            label for=(note) { (note_label) }
            textarea id=(note) name="note" rows="2" maxlength="4000" required[note_required] {}
            button type="submit" { (button) }
        }
    }
}

/// What the job published and merged: its `push` audit records, or the report's commit.
fn published(report: Option<&Value>, records: &Result<Vec<Record>, String>) -> Markup {
    let pushes: Vec<&Record> = match records {
        Ok(records) => records.iter().filter(|r| r.kind == "push").collect(),
        Err(_) => Vec::new(),
    };
    let commit = report.map(|r| &r["commit"]).filter(|c| c.is_object());
    if pushes.is_empty() && commit.is_none() {
        return html! {};
    }
    html! {
        h2 { "Published" }
        ul.published {
            @for p in &pushes {
                li {
                    code { (text(&p.data["ref"])) } " in " span.path { (text(&p.data["dest"])) }
                    " at " code { (text(&p.data["new"])) }
                }
            }
            @if pushes.is_empty() && let Some(c) = commit {
                li {
                    code { (text(&c["branch"])) } " in " span.path { (text(&c["repository"])) }
                    " at " code { (text(&c["oid"])) }
                }
            }
        }
    }
}

/// A JSON value as text: a string as it is, anything else as JSON.
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// What the generator and the reviewer spent on model calls, against their budgets.
fn spend(report: Option<&Value>) -> Markup {
    let Some(spend) = report.map(|r| &r["spend"]).filter(|s| s.is_object()) else {
        return html! {};
    };
    html! {
        h2 { "Model spend" }
        table.spend {
            thead { tr { th scope="col" { "Stage" } th scope="col" { "Requests" }
                th scope="col" { "Tokens in / cached / out" } th scope="col" { "Cost" }
                th scope="col" { "Budget" } } }
            tbody {
                @for stage in ["generate", "review"] {
                    @let s = &spend[stage];
                    @if s.is_object() {
                        tr {
                            td { (stage) }
                            td { (text(&s["spent"]["requests"]))
                                @if s["spent"]["estimated"].as_u64().unwrap_or(0) > 0 {
                                    " (" (text(&s["spent"]["estimated"])) " estimated)"
                                } }
                            td { (text(&s["spent"]["usage"]["input"])) " / "
                                (text(&s["spent"]["usage"]["cached"])) " / "
                                (text(&s["spent"]["usage"]["output"])) }
                            td { "$" (format!("{:.4}", s["spent"]["usd"].as_f64().unwrap_or(0.0))) }
                            td.path { (text(&s["budget"])) }
                        }
                    }
                }
            }
        }
    }
}

fn timeline(report: Option<&Value>) -> Markup {
    let Some(attempts) = report.and_then(|r| r["attempts"].as_array()) else {
        return html! {};
    };
    html! {
        h2 { "Timeline" }
        table.timeline {
            thead { tr { th scope="col" { "Attempt" } th scope="col" { "Stage" }
                th scope="col" { "Started" } th scope="col" { "Took" } th scope="col" { "Exit" } } }
            tbody {
                @for a in attempts {
                    @for stage in ["generate", "test"] {
                        (stage_row(&a["attempt"], stage, &a[stage]))
                    }
                    (stage_row(&a["attempt"], "review", &a["review"]["stage"]))
                }
            }
        }
    }
}

fn stage_row(attempt: &Value, stage: &str, s: &Value) -> Markup {
    if !s.is_object() {
        return html! {};
    }
    let ms = |v: &Value| duration(v.as_u64().unwrap_or(0));
    html! {
        tr {
            td { (text(attempt)) } td { (stage) } td { "+" (ms(&s["start_ms"])) }
            td { (ms(&s["duration_ms"])) }
            td {
                (text(&s["exit_code"]))
                @if s["timed_out"] == true { " (timed out)" }
                @if s["oom_killed"] == true { " (out of memory)" }
            }
        }
    }
}

fn attempt_section(attempt: &AttemptFiles, story: &Story) -> Markup {
    let reported = story
        .report
        .as_ref()
        .and_then(|r| r["attempts"].as_array())
        .and_then(|a| a.iter().find(|x| x["attempt"] == attempt.n));
    let passed = reported.map(|r| r["passed"] == true);
    // The gate judged the last attempt's change.
    let last = story.attempts.last().map(|a| a.n) == Some(attempt.n);
    let notes = Notes::of(
        if last { story.gate.as_ref() } else { None },
        reported.map(|r| &r["review"]["verdict"]),
    );
    html! {
        section.attempt aria-labelledby={ "attempt-" (attempt.n) } {
            h2 id={ "attempt-" (attempt.n) } {
                "Attempt " (attempt.n)
                @match passed { Some(true) => " · tests passed", Some(false) => " · tests failed", None => "" }
            }
            @if let Some(review) = reported.map(|r| &r["review"]["verdict"]).filter(|v| v.is_object()) {
                p { "Reviewer: " strong { (text(&review["verdict"])) } " " (text(&review["summary"])) }
            }
            @match &attempt.diff {
                Some(diff) => (attempt_diff(diff, &notes)),
                None => p.muted { "No change recorded yet." },
            }
            @for (stage, log, cut) in &attempt.logs {
                details open[*stage == "test"] {
                    summary { (stage) " log" @if *cut { " (its end)" } }
                    pre.log { (log) }
                }
            }
            @for (stage, record) in &attempt.egress { (egress(stage, record)) }
        }
    }
}

fn egress(stage: &str, record: &Value) -> Markup {
    let requests = record["requests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    html! {
        h3 { (stage) " egress: " (requests.len()) " requests" }
        @if !requests.is_empty() {
            table.egress {
                thead { tr { th scope="col" { "Request" } th scope="col" { "Allowed" }
                    th scope="col" { "Bytes up / down" } th scope="col" { "Why" } } }
                tbody {
                    @for r in requests.iter().take(200) {
                        tr {
                            td.path { (text(&r["method"])) " " (text(&r["target"])) }
                            td { @if r["allowed"] == true { "yes" } @else { "refused" } }
                            td { (text(&r["bytes_up"])) " / " (text(&r["bytes_down"])) }
                            td { (text(&r["reason"])) }
                        }
                    }
                }
            }
        }
    }
}

fn gate(gate: Option<&Value>) -> Markup {
    let Some(g) = gate else {
        return html! {};
    };
    let policies = g["policies"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    html! {
        h2 { "Policy gate: " (text(&g["decision"])) }
        table.gate {
            thead { tr { th scope="col" { "Module" } th scope="col" { "sha256" } th scope="col" { "Mode" }
                th scope="col" { "Decision" } th scope="col" { "Findings" } } }
            tbody {
                @for p in policies {
                    tr {
                        td { (text(&p["name"])) } td { code { (text(&p["sha256"])) } }
                        td { (text(&p["mode"])) }
                        td { (text(&p["decision"])) @if p["failed"] == true { " (failed)" } }
                        td {
                            @for f in p["findings"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                                div {
                                    (text(&f["severity"])) " " code { (text(&f["rule"])) } " "
                                    (text(&f["message"]))
                                    @if f["path"].is_string() { " — " span.path { (text(&f["path"])) @if f["line"].is_u64() { ":" (text(&f["line"])) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn audit(records: &Result<Vec<Record>, String>) -> Markup {
    html! {
        h2 { "Audit records" }
        @match records {
            Err(e) => p.refusal { "The audit log could not be read: " (e) },
            Ok(records) if records.is_empty() => p.muted { "None (the server keeps no audit log, or none yet)." },
            Ok(records) => {
                table.audit {
                    thead { tr { th scope="col" { "#" } th scope="col" { "At" } th scope="col" { "Kind" }
                        th scope="col" { "Data" } } }
                    tbody {
                        @for r in records {
                            tr { td { (r.seq) } td { (r.at) } td { code { (r.kind) } }
                                td.path { (clip(&r.data.to_string(), 400)) } }
                        }
                    }
                }
            }
        }
    }
}

/// `text` cut to at most `max` characters.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
