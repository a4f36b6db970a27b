//! A real coding agent through its adapter: Aider (installed from PyPI by the `agent-aider`
//! recipe) runs headless in the sandbox against an HTTPS stand-in for the Anthropic API on a
//! loopback address, which answers with an edit. The agent reaches the API only through kiln's
//! proxy, with a key it never holds, and its edit passes the job's tests; every call it makes is
//! counted against its budget, and with none left it is stopped before a call leaves. (Talks to
//! loopback only: the operator config maps api.anthropic.com to 127.0.0.2, or .3.)

mod common;

const AIDER: &str = "kiln/agent-aider:latest";

/// The Anthropic Messages API, as far as Aider needs it: one answer, an edit in Aider's
/// SEARCH/REPLACE form.
fn messages_api(_head: &str, body: &str) -> (String, String) {
    let request: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let edit = "greet.sh\n```\n<<<<<<< SEARCH\necho \"Hello, world!\"\n=======\necho \"Hello, kiln!\"\n>>>>>>> REPLACE\n```\n";
    let answer = serde_json::json!({
        "id": "msg_kiln_test",
        "type": "message",
        "role": "assistant",
        "model": request["model"],
        "content": [{"type": "text", "text": edit}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 40}
    });
    ("application/json".into(), answer.to_string())
}

/// A fixture with the greeting repository, an operator config that maps api.anthropic.com to
/// the stand-in (a model host with prices, its key bound) and an Aider job with `budget`;
/// the key, the config and the job.
fn aider_job(
    stand_in: &common::HttpsStandIn,
    address: &str,
    budget: &str,
) -> (
    common::Fixture,
    String,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let key = format!("sk-ant-test-{}", ulid::Ulid::new());
    let fixture = common::Fixture::with_git(common::HELLO_FILES);
    std::fs::write(fixture.path("anthropic.key"), &key).unwrap();
    std::fs::write(fixture.path("test-ca.pem"), &stand_in.ca_pem).unwrap();
    let config = fixture.path("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nmemory = \"1GiB\"\n\n\
             [egress]\npermit = [\"api.anthropic.com:443\"]\n\
             allow_addresses = [\"{address}\"]\nhosts = {{ \"api.anthropic.com\" = \"{address}\" }}\n\
             upstream_ca = {ca:?}\n\n\
             [egress.models.\"api.anthropic.com\"]\nkind = \"anthropic\"\n\
             input_per_mtok = 3.0\noutput_per_mtok = 15.0\n\n\
             [secrets.ANTHROPIC_API_KEY]\nfile = {file:?}\nhosts = [\"api.anthropic.com\"]\n",
            ca = fixture.path("test-ca.pem"),
            file = fixture.path("anthropic.key"),
        ),
    )
    .unwrap();
    let job = fixture.path("job.toml");
    std::fs::write(
        &job,
        format!(
            "repo = \"repo\"\nbranch = \"factory/aider\"\n\
             prompt = \"Make greet.sh greet kiln, so that test.sh passes.\"\n\
             context_files = [\"*.sh\"]\n\n\
             [generate]\nagent = \"aider\"\ntimeout = \"5m\"\nbudget = {budget}\n\n\
             [test]\nimage = \"{busybox}\"\ncommand = [\"sh\", \"test.sh\"]\n\n\
             [limits]\nmemory = \"1GiB\"\n",
            busybox = common::BUSYBOX
        ),
    )
    .unwrap();
    (fixture, key, config, job)
}

#[test]
fn aider_edits_through_its_adapter_with_a_key_it_never_holds() {
    common::require_image(AIDER, "agent-aider");
    common::require_busybox();
    let stand_in = common::HttpsStandIn::start(
        "api.anthropic.com",
        "127.0.0.2:443".parse().unwrap(),
        messages_api,
    );
    let (fixture, key, config, job) = aider_job(&stand_in, "127.0.0.2", "{ requests = 20 }");
    let ran = fixture.run_configured(&config, &job);
    let artifacts = ran.artifacts.clone().expect("artifacts");
    let log = std::fs::read_to_string(artifacts.join("attempt-1/generate.log")).unwrap();
    assert_eq!(ran.code, 0, "{}\n{log}", ran.stderr);

    // Aider asked the stand-in with the real key and the job's prompt; it never held the key.
    let keys = stand_in.header("x-api-key");
    assert!(!keys.is_empty(), "{log}");
    assert!(keys.iter().all(|k| *k == key), "{keys:?}");
    let requests = stand_in.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|(_, body)| body.contains("Make greet.sh greet kiln")),
        "{requests:?}"
    );
    assert!(!log.contains(&key), "{log}");

    // Its edit is the attempt's change, and it passed the tests.
    let greet = common::file_on(
        &artifacts.join("repo.git"),
        "refs/heads/factory/aider",
        "greet.sh",
    );
    assert_eq!(greet, "#!/bin/sh\necho \"Hello, kiln!\"\n");
    let report = ran.report.expect("a report");
    assert_eq!(report["attempts"][0]["passed"], true, "{report}");
    let files = report["attempts"][0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "only greet.sh changed: {files:?}");

    // The proxy recorded each request to the API with the secret it added.
    let records: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(artifacts.join("attempt-1/generate.egress.json")).unwrap(),
    )
    .unwrap();
    let exchanges: Vec<&serde_json::Value> = records["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == "api.anthropic.com:443")
        .flat_map(|r| r["exchanges"].as_array().unwrap().iter())
        .collect();
    assert!(
        exchanges
            .iter()
            .any(|e| e["path"] == "/v1/messages" && e["secrets"][0] == "ANTHROPIC_API_KEY"),
        "{records}"
    );

    // Every call the agent made was counted, at the stand-in's usage.
    let calls = requests.len() as u64;
    let spent = &report["spend"]["generate"]["spent"];
    assert_eq!(spent["requests"], calls, "{spent}");
    assert_eq!(spent["usage"]["input"], 100 * calls);
    assert_eq!(spent["usage"]["output"], 40 * calls);
    assert_eq!(spent["estimated"], 0);
}

#[test]
fn aider_with_no_budget_left_is_stopped_before_its_first_call_reaches_the_api() {
    common::require_image(AIDER, "agent-aider");
    common::require_busybox();
    let stand_in = common::HttpsStandIn::start(
        "api.anthropic.com",
        "127.0.0.3:443".parse().unwrap(),
        messages_api,
    );
    let (fixture, _key, config, job) = aider_job(&stand_in, "127.0.0.3", "{ requests = 0 }");
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    assert_eq!(ran.report()["status"], "budget_exhausted");
    assert!(stand_in.requests.lock().unwrap().is_empty());
    let artifacts = ran.artifacts.clone().expect("artifacts");
    assert!(!artifacts.join("repo.git").exists(), "nothing published");
}

#[test]
fn the_agent_example_loads_with_its_operator_config() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent");
    let mut config = kiln::config::Config::load(&examples.join("kiln.toml")).unwrap();
    // The example reads the key from kiln's environment; here it comes from a file instead, so
    // that the test changes no process environment.
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "sk-ant-example-not-a-key\n").unwrap();
    let source = config.secrets.get_mut("ANTHROPIC_API_KEY").unwrap();
    source.env = None;
    source.file = Some(key.path().into());
    let secrets = kiln::secrets::Secrets::load(&config.secrets);
    let job = kiln::job::Job::load(&examples.join("job.toml"), &config, &secrets).unwrap();
    assert_eq!(job.generate.agent, kiln::model::Agent::ClaudeCode);
    assert_eq!(job.generate.image, "kiln/agent-claude-code:latest");
    let network = job.generate.network.as_ref().unwrap();
    assert_eq!(network.allow[0].to_string(), "api.anthropic.com:443");
    assert_eq!(network.secrets, ["ANTHROPIC_API_KEY"]);
    // Without the key in kiln's environment, the job is refused before anything runs.
    let refused = common::kiln()
        .env_remove("ANTHROPIC_API_KEY")
        .arg("--config")
        .arg(examples.join("kiln.toml"))
        .arg("run")
        .arg(examples.join("job.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`ANTHROPIC_API_KEY` is not set"),
        "{stderr}"
    );
}
