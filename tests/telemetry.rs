//! Traces: with `[telemetry] otlp_endpoint`, kiln exports its spans over OTLP/HTTP to a
//! collector; here a receiver on loopback decodes what the real binary sent and finds each job's
//! tree of spans, under the trace its caller named (`TRACEPARENT` for `kiln run` and `kiln
//! submit`), with ids and outcomes as attributes and no prompt or file content.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::serve::{Jobs, Server};
use common::{Fixture, HELLO_FILES, default_bundle, require_busybox};
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";
const PROMPT: &str = "greet kiln PROMPT-MARKER-7f3a";
const CONTENT: &str = "CONTENT-MARKER-91c2";

/// An OTLP/HTTP receiver on loopback: keeps every body posted to `/v1/traces`.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_string());
                }
                let length: usize = head
                    .iter()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let json = head.iter().any(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("content-type: application/json")
                });
                if head
                    .first()
                    .is_some_and(|l| l.starts_with("POST /v1/traces "))
                    && json
                {
                    kept.lock().unwrap().push(String::from_utf8(body).unwrap());
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
            }
        });
        Receiver { port, bodies }
    }

    fn config(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kiln.toml");
        let text = common::operator_config(&format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\n",
            self.port
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every span received so far, and every body as text.
    fn spans(&self) -> (Vec<Span>, String) {
        let bodies = self.bodies.lock().unwrap().clone();
        let mut spans = Vec::new();
        for body in &bodies {
            let export: Value = serde_json::from_str(body).unwrap();
            for resource in export["resourceSpans"].as_array().unwrap() {
                let service = attributes(&resource["resource"]["attributes"]);
                assert_eq!(
                    service.get("service.name").map(String::as_str),
                    Some("kiln")
                );
                for scope in resource["scopeSpans"].as_array().unwrap() {
                    for span in scope["spans"].as_array().unwrap() {
                        spans.push(Span {
                            name: span["name"].as_str().unwrap().to_string(),
                            trace: span["traceId"].as_str().unwrap().to_string(),
                            id: span["spanId"].as_str().unwrap().to_string(),
                            parent: span["parentSpanId"].as_str().unwrap_or("").to_string(),
                            attributes: attributes(&span["attributes"]),
                        });
                    }
                }
            }
        }
        (spans, bodies.join("\n"))
    }

    /// The spans of the job `id`'s trace, once its job span has arrived (within 20 s).
    fn job_trace(&self, id: &str) -> (Vec<Span>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (spans, text) = self.spans();
            if let Some(job) = spans
                .iter()
                .find(|s| s.name == "job" && s.attr("kiln.job_id") == id)
            {
                let trace = job.trace.clone();
                return (
                    spans.into_iter().filter(|s| s.trace == trace).collect(),
                    text,
                );
            }
            assert!(
                Instant::now() < deadline,
                "no job span for {id} came: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn attributes(list: &Value) -> HashMap<String, String> {
    let mut found = HashMap::new();
    for kv in list.as_array().into_iter().flatten() {
        let value = &kv["value"];
        let text = ["stringValue", "intValue", "boolValue", "doubleValue"]
            .iter()
            .find_map(|kind| value.get(*kind))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        found.insert(kv["key"].as_str().unwrap().to_string(), text);
    }
    found
}

#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// The one span named `name` whose parent is `parent` (and, given, whose `key` is `value`).
fn child<'a>(spans: &'a [Span], parent: &Span, name: &str, with: Option<(&str, &str)>) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name && s.parent == parent.id)
        .filter(|s| with.is_none_or(|(k, v)| s.attr(k) == v))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} {with:?} under {} wanted: {:#?}",
        parent.name,
        spans
            .iter()
            .map(|s| (&s.name, &s.parent, &s.id))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// A stage span's own work: its container created (or, `made_ahead`, not: it was made in a
/// `stage.prepare` span beside it), started, waited for and removed, its workspace copied in.
fn check_stage(spans: &[Span], stage: &Span, exit_code: &str, made_ahead: Option<&Span>) {
    child(spans, stage, "tar.in", None);
    match made_ahead {
        Some(prepare) => {
            child(spans, prepare, "container.create", None);
            assert!(
                !spans
                    .iter()
                    .any(|s| s.name == "container.create" && s.parent == stage.id),
                "a stage made ahead creates no container of its own"
            );
        }
        None => {
            child(spans, stage, "container.create", None);
        }
    }
    child(spans, stage, "container.start", None);
    let wait = child(spans, stage, "container.wait", None);
    assert_eq!(wait.attr("kiln.exit_code"), exit_code);
    assert_eq!(wait.attr("kiln.timed_out"), "false");
    child(spans, stage, "container.remove", None);
}

#[test]
fn a_run_s_spans_form_the_job_s_tree_under_the_caller_s_trace() {
    require_busybox();
    let receiver = Receiver::start();
    let fixture = Fixture::with_git(HELLO_FILES);
    let config = receiver.config(fixture.dir.path());
    // Wrong on the first attempt, right on the second; the file it writes carries a marker.
    let script = format!(
        "cd /kiln/workspace; if [ \"$KILN_ATTEMPT\" = 1 ]; then echo 'echo nope' > greet.sh; \
         else echo 'echo \"Hello, kiln!\" # {CONTENT}' > greet.sh; fi"
    );
    let job = fixture.job(
        &format!("branch = \"factory/traced\"\nprompt = \"{PROMPT}\""),
        &script,
        "sh test.sh",
        "",
    );
    let bundle = default_bundle();
    let ran = fixture.run_with(
        common::kiln()
            .arg("--config")
            .arg(&config)
            .env("TRACEPARENT", format!("00-{TRACE}-{CALLER}-01"))
            .arg("run")
            .arg(&job)
            .arg("--policies")
            .arg(&bundle),
        &[],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let id = ran.job_id();
    // kiln sent its last spans before it exited: no waiting here.
    let (spans, text) = receiver.spans();
    assert!(!spans.is_empty(), "nothing was exported");
    assert!(spans.iter().all(|s| s.trace == TRACE), "{spans:#?}");

    let job = spans.iter().find(|s| s.name == "job").expect("a job span");
    assert_eq!(job.parent, CALLER, "the job continues the caller's span");
    assert_eq!(job.attr("kiln.job_id"), id);
    assert_eq!(job.attr("kiln.branch"), "factory/traced");
    assert_eq!(
        job.attr("kiln.repo"),
        fixture.path("repo").display().to_string()
    );
    assert_eq!(job.attr("kiln.outcome"), "succeeded");
    assert_eq!(job.attr("kiln.exit_code"), "0");

    for (n, test_exit) in [("1", "1"), ("2", "0")] {
        let attempt = child(&spans, job, "attempt", Some(("kiln.attempt", n)));
        let generate = child(&spans, attempt, "stage", Some(("kiln.stage", "generate")));
        check_stage(&spans, generate, "0", None);
        child(&spans, generate, "tar.out", None);
        child(&spans, attempt, "diff", None);
        let test = child(&spans, attempt, "stage", Some(("kiln.stage", "test")));
        let prepare = child(
            &spans,
            attempt,
            "stage.prepare",
            Some(("kiln.stage", "test")),
        );
        check_stage(&spans, test, test_exit, Some(prepare));
    }
    let gate = child(&spans, job, "policy", None);
    let bundle_text = std::fs::read_to_string(&bundle).unwrap();
    let modules: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "policy.module" && s.parent == gate.id)
        .collect();
    assert_eq!(modules.len(), bundle_text.matches("[[policy]]").count());
    for module in modules {
        let pin = format!("sha256 = \"{}\"", module.attr("kiln.sha256"));
        assert!(bundle_text.contains(&pin), "{module:?}");
        assert_eq!(module.attr("kiln.decision"), "allow", "{module:?}");
    }
    let publish = child(&spans, job, "publish", None);
    assert_eq!(publish.attr("kiln.branch"), "factory/traced");

    // Ids, names and outcomes only: nothing the job asked or wrote.
    assert!(!text.contains("PROMPT-MARKER"), "the prompt was exported");
    assert!(!text.contains(CONTENT), "file content was exported");
}

#[test]
fn a_submitted_job_s_trace_continues_the_client_s_traceparent() {
    require_busybox();
    let receiver = Receiver::start();
    let jobs = Jobs::new();
    let config = receiver.config(jobs.dir.path());
    let config = config.to_str().unwrap();
    let server = Server::start(&jobs.state(), &["--config", config]);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let traced = jobs.write("traced", 0, "");
    let out = server
        .client()
        .env("TRACEPARENT", parent)
        .arg("submit")
        .arg(&traced)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // A malformed traceparent is ignored: that job starts a trace of its own.
    let (code, body) = server.http_with(
        "POST",
        "/jobs",
        &[("traceparent", "00-not-a-trace-01")],
        &std::fs::read(jobs.write("untraced", 0, "")).unwrap(),
    );
    assert_eq!(code, 201, "{body}");
    let untraced: Value = serde_json::from_str(&body).unwrap();
    let untraced = untraced["id"].as_str().unwrap().to_string();
    assert_eq!(server.wait(&id), 0);
    assert_eq!(server.wait(&untraced), 0);

    let (spans, _) = receiver.job_trace(&id);
    let job = spans.iter().find(|s| s.name == "job").unwrap();
    assert_eq!(job.trace, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(job.parent, "b7ad6b7169203331");
    assert_eq!(job.attr("kiln.outcome"), "succeeded");
    let attempt = child(&spans, job, "attempt", Some(("kiln.attempt", "1")));
    let generate = child(&spans, attempt, "stage", Some(("kiln.stage", "generate")));
    check_stage(&spans, generate, "0", None);

    let (spans, _) = receiver.job_trace(&untraced);
    let job = spans.iter().find(|s| s.name == "job").unwrap();
    assert_ne!(job.trace, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(job.parent, "", "a job without a caller is its trace's root");
}
