//! A job's model budget, enforced by the egress proxy against an HTTPS stand-in for a model
//! API on loopback: usage read from streamed and whole responses is counted exactly, a request
//! past the budget is answered 429 by kiln and never reaches the host, and a response whose
//! usage cannot be read is counted by the estimate and flagged.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use common::HttpsStandIn;
use kiln::config::EgressConfig;
use kiln::egress::{Intercept, JobCa, ModelHost, Proxy, Rules, SpendMeter};
use kiln::model::Allow;
use kiln::model::spend::{ApiKind, Budget, Price, Spend};
use kiln::secrets::Binding;

const KEY: &str = "sk-test-real-key";
const PLACEHOLDER: &str = "kiln-placeholder-model-key";
const PRICE: Price = Price {
    input_per_mtok: 3.0,
    output_per_mtok: 15.0,
    cached_per_mtok: Some(0.3),
};

/// What the stand-in answers: by path, an Anthropic stream, an OpenAI whole response, or a
/// body with no usage in it.
fn answer(head: &str, _body: &str) -> (String, String) {
    if head.starts_with("POST /v1/messages") {
        // The text echoes the key the request came with: a transcript must not keep it.
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("authorization: Bearer "))
            .or_else(|| {
                head.lines()
                    .find_map(|l| l.strip_prefix("Authorization: Bearer "))
            })
            .unwrap_or("none");
        let stream = format!(
            "event: message_start\n\
            data: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":1000,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}}}}\n\n\
            event: content_block_delta\n\
            data: {{\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hello from the model; \"}}}}\n\n\
            event: content_block_delta\n\
            data: {{\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"text_delta\",\"text\":\"you sent {key}\"}}}}\n\n\
            event: message_delta\n\
            data: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":500}}}}\n\n\
            event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        );
        ("text/event-stream".into(), stream)
    } else if head.starts_with("POST /v1/chat/completions") {
        let whole = r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":400,"completion_tokens":100,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        ("application/json".into(), whole.into())
    } else {
        ("text/plain".into(), "no usage here".repeat(10))
    }
}

/// A proxy for `model.test` (the stand-in) with its key bound, counting spend into `meter`;
/// and the PEM of the CA it signs the sandbox's side with.
async fn proxy(standin: &HttpsStandIn, meter: Arc<SpendMeter>) -> (Proxy, String) {
    let loopback: IpAddr = Ipv4Addr::LOCALHOST.into();
    let operator = EgressConfig {
        allow_addresses: vec![loopback],
        hosts: HashMap::from([("model.test".to_string(), loopback)]),
        ..Default::default()
    };
    let allow = vec![Allow::parse(&format!("model.test:{}", standin.port)).unwrap()];
    let mut rules = Rules::new(allow, &operator);
    let ca = Arc::new(JobCa::new("budget-test", &["model.test".into()]).unwrap());
    rules.secrets = vec![Binding {
        name: "MODEL_KEY".into(),
        placeholder: PLACEHOLDER.into(),
        value: KEY.into(),
        hosts: vec!["model.test".into()],
        headers: vec!["authorization".into()],
    }];
    rules.intercept = Some(Arc::new(Intercept {
        ca: ca.clone(),
        upstream: kiln::egress::upstream_client(Some(standin.ca_pem.as_bytes())).unwrap(),
    }));
    rules.spend = Some(meter);
    let proxy = Proxy::start((loopback, 0).into(), rules).await.unwrap();
    (proxy, ca.cert_pem().to_string())
}

fn client(proxy: &Proxy, ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", proxy.addr())).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, port: u16, path: &str) -> (u16, String) {
    let response = client
        .post(format!("https://model.test:{port}{path}"))
        .header("authorization", format!("Bearer {PLACEHOLDER}"))
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_counted_exactly_and_the_request_past_the_budget_never_leaves() {
    let standin = HttpsStandIn::start("model.test", "127.0.0.1:0".parse().unwrap(), answer);
    let hosts = HashMap::from([(
        "model.test".to_string(),
        ModelHost {
            kind: ApiKind::Anthropic,
            price: PRICE,
        },
    )]);
    let budget = Budget {
        requests: Some(3),
        ..Budget::default()
    };
    let meter = SpendMeter::new(hosts, budget, false);
    let (proxy, ca) = proxy(&standin, meter.clone()).await;
    let client = client(&proxy, &ca);
    for _ in 0..3 {
        let (status, body) = post(&client, standin.port, "/v1/messages").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("message_stop"));
    }
    for _ in 0..2 {
        let (status, body) = post(&client, standin.port, "/v1/messages").await;
        assert_eq!(status, 429, "{body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["type"], "budget_exhausted");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("3 of 3 requests")
        );
    }
    assert_eq!(
        standin.requests.lock().unwrap().len(),
        3,
        "no request after the 429"
    );
    assert_eq!(
        standin.header("authorization"),
        vec![format!("Bearer {KEY}"); 3]
    );
    let spent = meter.spent();
    assert_eq!(spent.requests, 3);
    assert_eq!(
        (spent.usage.input, spent.usage.cached, spent.usage.output),
        (3000, 6000, 1500)
    );
    let each = (1000.0 * 3.0 + 2000.0 * 0.3 + 500.0 * 15.0) / 1e6;
    assert!((spent.usd - 3.0 * each).abs() < 1e-9, "{spent:?}");
    assert_eq!(spent.estimated, 0);

    let (records, _) = proxy.stop().await;
    let exchanges: Vec<_> = records.iter().flat_map(|r| r.exchanges.clone()).collect();
    assert_eq!(exchanges.len(), 5);
    let metered = exchanges.iter().filter(|e| e.usage.is_some()).count();
    let refused = exchanges
        .iter()
        .filter(|e| e.budget_refused.is_some())
        .count();
    assert_eq!((metered, refused), (3, 2));
    assert!(
        exchanges
            .iter()
            .all(|e| e.usd.is_none_or(|usd| (usd - each).abs() < 1e-9))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_budget_cuts_and_unreadable_usage_is_estimated_and_flagged() {
    let standin = HttpsStandIn::start("model.test", "127.0.0.1:0".parse().unwrap(), answer);
    let hosts = HashMap::from([(
        "model.test".to_string(),
        ModelHost {
            kind: ApiKind::Openai,
            price: PRICE,
        },
    )]);
    // One chat call costs (400 * 3 + 100 * 15) / 1e6 = $0.0027: the budget allows two.
    let budget = Budget {
        usd: Some(0.005),
        ..Budget::default()
    };
    let meter = SpendMeter::new(hosts, budget, false);
    let (proxy, ca) = proxy(&standin, meter.clone()).await;
    let client = client(&proxy, &ca);
    let (status, _) = post(&client, standin.port, "/v1/other").await;
    assert_eq!(status, 200);
    let after_unreadable: Spend = meter.spent();
    assert_eq!(after_unreadable.estimated, 1, "{after_unreadable:?}");
    // The estimate: one token per two bytes of request and response.
    let request_bytes = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.len() as u64;
    let response_bytes = "no usage here".repeat(10).len() as u64;
    assert_eq!(after_unreadable.usage.input, request_bytes.div_ceil(2));
    assert_eq!(after_unreadable.usage.output, response_bytes.div_ceil(2));
    // A body sent in chunks (no Content-Length) is counted all the same, byte by byte.
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok("x".repeat(30)), Ok("y".repeat(10))];
    let response = client
        .post(format!("https://model.test:{}/v1/other", standin.port))
        .header("authorization", format!("Bearer {PLACEHOLDER}"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        standin.requests.lock().unwrap()[1]
            .0
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    );
    response.text().await.unwrap();
    let after_chunked = meter.spent().since(&after_unreadable);
    assert_eq!(after_chunked.estimated, 1, "{after_chunked:?}");
    assert_eq!(after_chunked.usage.input, 40 / 2);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(&client, standin.port, "/v1/chat/completions").await.0);
    }
    assert_eq!(statuses, [200, 200, 429, 429], "{:?}", meter.spent());
    assert_eq!(standin.requests.lock().unwrap().len(), 4);
    assert!(meter.spent().usd >= 0.005);
    let (records, _) = proxy.stop().await;
    let flagged = records
        .iter()
        .flat_map(|r| &r.exchanges)
        .filter(|e| e.estimated)
        .count();
    assert_eq!(flagged, 2);
}

const DEBIAN: &str = "kiln/debian:bookworm";

/// A job whose generator (the Debian image's curl, through kiln's proxy, the key added by kiln)
/// calls the stand-in's Messages API up to `calls` times, a second apart, then writes its
/// change; its budget is `budget`.
fn spending_job(
    fixture: &common::Fixture,
    port: u16,
    calls: u32,
    budget: &str,
) -> std::path::PathBuf {
    let script = format!(
        r#"cd "$KILN_WORKSPACE"
for i in $(seq 1 {calls}); do
  code=$(curl -sS --max-time 20 -o /tmp/answer -w '%{{http_code}}' -X POST \
    "https://model.test:{port}/v1/messages" -H "Authorization: Bearer $MODEL_KEY" \
    -H 'Content-Type: application/json' -d '{{"model":"m","messages":[]}}')
  echo "call $i: $code"
  sleep 1
done
echo "loop done"
echo spent > spent.txt
"#
    );
    let job = fixture.job(
        "branch = \"factory/spend\"\nprompt = \"x\"",
        &script,
        "true",
        "",
    );
    fixture.edit_job(
        &job,
        "[generate]\nimage = \"kiln/busybox:latest\"",
        "[generate]\nimage = \"kiln/debian:bookworm\"",
    );
    fixture.edit_job(
        &job,
        "[test]",
        &format!(
            "budget = {budget}\n\n[generate.network]\nallow = [\"model.test:{port}\"]\nsecrets = [\"MODEL_KEY\"]\n\n[test]"
        ),
    );
    job
}

/// The operator config: the stand-in as a model host with its prices, its key bound.
fn operator(fixture: &common::Fixture, standin: &HttpsStandIn) -> std::path::PathBuf {
    std::fs::write(fixture.path("model.key"), format!("{KEY}\n")).unwrap();
    std::fs::write(fixture.path("test-ca.pem"), &standin.ca_pem).unwrap();
    let config = fixture.path("kiln.toml");
    let port = standin.port;
    std::fs::write(
        &config,
        format!(
            "[egress]\npermit = [\"model.test:{port}\"]\n\
             allow_addresses = [\"127.0.0.1\"]\nhosts = {{ \"model.test\" = \"127.0.0.1\" }}\n\
             upstream_ca = {ca:?}\ntranscripts = true\n\n\
             [egress.models.\"model.test\"]\nkind = \"anthropic\"\ninput_per_mtok = 3.0\n\
             output_per_mtok = 15.0\ncached_per_mtok = 0.3\n\n\
             [secrets.MODEL_KEY]\nfile = {file:?}\nhosts = [\"model.test\"]\n",
            ca = fixture.path("test-ca.pem"),
            file = fixture.path("model.key"),
        ),
    )
    .unwrap();
    config
}

#[test]
fn a_job_under_budget_succeeds_and_reports_its_spend_exactly() {
    common::require_image(DEBIAN, "debian");
    let standin = HttpsStandIn::start("model.test", "127.0.0.1:0".parse().unwrap(), answer);
    let fixture = common::Fixture::with_files(&[("README", "hello\n")]);
    let config = operator(&fixture, &standin);
    let job = spending_job(&fixture, standin.port, 2, "{ requests = 5, usd = 1.0 }");
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let spent = &ran.report()["spend"]["generate"]["spent"];
    assert_eq!(spent["requests"], 2, "{spent}");
    assert_eq!(spent["usage"]["input"], 2000);
    assert_eq!(spent["usage"]["cached"], 4000);
    assert_eq!(spent["usage"]["output"], 1000);
    let each = (1000.0 * 3.0 + 2000.0 * 0.3 + 500.0 * 15.0) / 1e6;
    assert!((spent["usd"].as_f64().unwrap() - 2.0 * each).abs() < 1e-9);
    assert_eq!(ran.report()["spend"]["generate"]["budget"]["requests"], 5);
    // The attempt's stage run carries its own share.
    let attempt_spend = &ran.report()["attempts"][0]["generate"]["spend"];
    assert_eq!(attempt_spend["requests"], 2, "{attempt_spend}");
    assert_eq!(attempt_spend["usage"]["output"], 1000);
    // Each request's share is in the stage's egress record.
    let artifacts = ran.artifacts.clone().unwrap();
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(artifacts.join("attempt-1/generate.egress.json")).unwrap(),
    )
    .unwrap();
    let metered: Vec<&serde_json::Value> = record["requests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["exchanges"].as_array().unwrap())
        .filter(|e| e["usage"].is_object())
        .collect();
    assert_eq!(metered.len(), 2);

    // The transcript holds each call: the request as sent, the text reassembled from the
    // stream, the key that came back redacted.
    let transcript =
        std::fs::read_to_string(artifacts.join("attempt-1/generate.transcript.jsonl")).unwrap();
    let calls: Vec<serde_json::Value> = transcript
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 2, "{transcript}");
    assert_eq!(calls[0]["request"]["model"], "m");
    assert_eq!(calls[0]["path"], "/v1/messages");
    assert_eq!(
        calls[0]["response"],
        "Hello from the model; you sent [REDACTED:MODEL_KEY]"
    );
    assert_eq!(calls[0]["usage"]["output"], 500);
    assert!(!transcript.contains(KEY), "{transcript}");
}

#[test]
fn a_job_whose_agent_keeps_calling_is_cut_at_its_budget_and_escalated() {
    common::require_image(DEBIAN, "debian");
    let standin = HttpsStandIn::start("model.test", "127.0.0.1:0".parse().unwrap(), answer);
    let fixture = common::Fixture::with_files(&[("README", "hello\n")]);
    let config = operator(&fixture, &standin);
    let job = spending_job(&fixture, standin.port, 30, "{ requests = 3 }");
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["status"], "budget_exhausted", "{report}");
    assert_eq!(
        standin.requests.lock().unwrap().len(),
        3,
        "no request after the 429"
    );
    assert_eq!(report["spend"]["generate"]["spent"]["requests"], 3);
    assert_eq!(
        report["spend"]["generate"]["spent"]["usage"]["output"],
        1500
    );
    let artifacts = ran.artifacts.clone().unwrap();
    let log = std::fs::read_to_string(artifacts.join("attempt-1/generate.log")).unwrap();
    assert!(log.contains("call 3: 200"), "{log}");
    // The stage is stopped as the refusal goes out: the agent may not even print it.
    assert!(!log.contains("call 4: 200"), "{log}");
    assert!(!log.contains("loop done"), "the stage was stopped: {log}");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(artifacts.join("attempt-1/generate.egress.json")).unwrap(),
    )
    .unwrap();
    let refused: Vec<&serde_json::Value> = record["requests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["exchanges"].as_array().unwrap())
        .filter(|e| e["budget_refused"].is_string())
        .collect();
    assert_eq!(refused.len(), 1, "{record}");
    assert_eq!(refused[0]["status"], 429);
    assert!(!artifacts.join("repo.git").exists(), "nothing published");
    let escalation: serde_json::Value = serde_json::from_slice(
        &std::fs::read(artifacts.join("escalation/escalation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(escalation["kind"], "budget");
    assert_eq!(escalation["spend"]["generate"]["spent"]["requests"], 3);

    // The reviewer of the escalation sees what the agent was told, the key never.
    let calls = escalation["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3, "{escalation}");
    assert!(
        calls[0]["response_tail"]
            .as_str()
            .unwrap()
            .starts_with("Hello from the model")
    );
    let summary = std::fs::read_to_string(artifacts.join("escalation/summary.html")).unwrap();
    assert!(summary.contains("Model calls"), "{summary}");
    assert!(
        summary.contains("you sent [REDACTED:MODEL_KEY]"),
        "{summary}"
    );
    assert!(!summary.contains(KEY));

    // Exported as one JSON line, with the calls whole.
    let out = common::kiln()
        .args(["escalations", "export", "--artifacts"])
        .arg(fixture.artifacts_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["schema"], "kiln.escalation-export/v1");
    assert_eq!(lines[0]["state"], "open");
    assert_eq!(lines[0]["calls"].as_array().unwrap().len(), 3);
    assert_eq!(lines[0]["calls"][0]["call"]["request"]["model"], "m");
    assert!(!text.contains(KEY));
    let decided_only = common::kiln()
        .args(["escalations", "export", "--decided", "--artifacts"])
        .arg(fixture.artifacts_root())
        .output()
        .unwrap();
    assert!(decided_only.stdout.is_empty());
}

#[test]
fn under_kiln_serve_the_spend_is_in_metrics_by_host_and_kind() {
    common::require_image(DEBIAN, "debian");
    let standin = HttpsStandIn::start("model.test", "127.0.0.1:0".parse().unwrap(), answer);
    let fixture = common::Fixture::with_files(&[("README", "hello\n")]);
    let config = operator(&fixture, &standin);
    let job = spending_job(&fixture, standin.port, 30, "{ requests = 2 }");
    let repo = fixture.path("repo");
    fixture.edit_job(&job, "repo = \"repo\"", &format!("repo = {repo:?}"));
    let server = common::serve::Server::start(
        &fixture.path("state"),
        &["--config", config.to_str().unwrap()],
    );
    let id = server.submit(&job);
    assert_eq!(server.wait(&id), 10);
    let row = server.job(&id);
    assert_eq!(row["state"], "escalated", "{row}");
    assert_eq!(row["status"], "budget_exhausted", "{row}");
    let token = server.token.clone();
    let (code, metrics) = server.http("GET", "/metrics", Some(&token), None, false);
    assert_eq!(code, 200);
    let labels = "host=\"model.test\",kind=\"anthropic\"";
    for line in [
        format!("kiln_model_requests_total{{{labels}}} 2"),
        format!("kiln_model_tokens_total{{{labels},type=\"input\"}} 2000"),
        format!("kiln_model_tokens_total{{{labels},type=\"output\"}} 1000"),
        format!("kiln_model_estimated_total{{{labels}}} 0"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    let cost = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("kiln_model_cost_usd_total{{{labels}}} ")))
        .unwrap();
    let each = (1000.0 * 3.0 + 2000.0 * 0.3 + 500.0 * 15.0) / 1e6;
    assert!(
        (cost.parse::<f64>().unwrap() - 2.0 * each).abs() < 1e-9,
        "{cost}"
    );
}
