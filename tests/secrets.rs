//! A secret through the egress proxy, with a real sandbox: an HTTPS stand-in for a model API on
//! loopback (its certificate from a test CA the operator config trusts) records the
//! Authorization header it gets and echoes it back. The request arrives with the real key while
//! the container holds only a placeholder; the key the stand-in echoes is redacted from every
//! artifact, the report, the committed tree and the audit log. (Talks to loopback only.)

mod common;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const DEBIAN: &str = "kiln/debian:bookworm";

/// Echoes the Authorization header it got.
fn echo_authorization(head: &str, _body: &str) -> (String, String) {
    let authorization = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "(none)".into());
    (
        "text/plain".into(),
        format!("authorization: {authorization}\n"),
    )
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                found.push((path.display().to_string(), bytes));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_sandbox_uses_a_key_it_never_holds_and_the_key_is_redacted_everywhere() {
    common::require_image(DEBIAN, "debian");
    let stand_in = common::HttpsStandIn::start(
        "model.test",
        "127.0.0.1:0".parse().unwrap(),
        echo_authorization,
    );
    let (port, ca_pem) = (stand_in.port, stand_in.ca_pem.clone());
    let key = format!("sk-test-{}", ulid::Ulid::new());
    let fixture = common::Fixture::with_files(&[("README", "hello\n")]);
    std::fs::write(fixture.path("model.key"), format!("{key}\n")).unwrap();
    std::fs::write(fixture.path("test-ca.pem"), &ca_pem).unwrap();
    let audit = fixture.path("audit/log.jsonl");
    let config = fixture.path("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "audit_log = {audit:?}\n\n\
             [egress]\npermit = [\"model.test:{port}\", \"169.254.169.254:80\"]\n\
             allow_addresses = [\"127.0.0.1\"]\nhosts = {{ \"model.test\" = \"127.0.0.1\" }}\n\
             upstream_ca = {ca:?}\n\n\
             [secrets.MODEL_KEY]\nfile = {file:?}\nhosts = [\"model.test\"]\n",
            ca = fixture.path("test-ca.pem"),
            file = fixture.path("model.key"),
        ),
    )
    .unwrap();
    let script = format!(
        r#"cd "$KILN_WORKSPACE"
env | sort > env.txt
answer=$(curl -sS --max-time 20 "https://model.test:{port}/v1/messages" -H "Authorization: Bearer $MODEL_KEY")
echo "answer: $answer"
echo "$answer" > answer.txt
printf '%s' "$answer" | base64 -w0 > answer.b64
echo "placeholder: $MODEL_KEY"
proxy=${{HTTP_PROXY#http://}}
echo "metadata: $(curl -s -o /dev/null -w '%{{http_code}}' http://169.254.169.254/latest/meta-data/)"
echo "host: $(curl -s -o /dev/null -w '%{{http_code}}' "http://${{proxy%:*}}:{port}/")"
getent hosts model.test >/dev/null; echo "dns: $?"
(echo x > /kiln/egress-ca.pem) 2>/dev/null && echo "ca: written" || echo "ca: kept"
(rm -f /kiln/egress-ca.pem) 2>/dev/null && [ ! -e /kiln/egress-ca.pem ] && echo "ca: removed" || echo "ca: still there"
"#
    );
    let job = fixture.job(
        "branch = \"factory/secret\"\nprompt = \"x\"",
        &script,
        "true",
        "",
    );
    fixture.edit_job(&job, common::BUSYBOX, DEBIAN);
    fixture.edit_job(
        &job,
        "[test]",
        &format!(
            "[generate.network]\nallow = [\"model.test:{port}\", \"169.254.169.254:80\"]\nsecrets = [\"MODEL_KEY\"]\n\n[test]"
        ),
    );
    let ran = fixture.run_configured(&config, &job);
    // A change that held a secret is escalated, never published by itself.
    assert_eq!(ran.code, 10, "{}", ran.stderr);

    // The stand-in got the real key; the sandbox saw only the placeholder.
    assert_eq!(
        stand_in.header("authorization"),
        vec![format!("Bearer {key}")]
    );
    let artifacts = ran.artifacts.clone().expect("artifacts");
    let log = std::fs::read_to_string(artifacts.join("attempt-1/generate.log")).unwrap();
    for line in [
        "answer: authorization: Bearer [REDACTED:MODEL_KEY]",
        "metadata: 403",
        "host: 403",
        "dns: 2",
        "ca: kept",
        "ca: still there",
    ] {
        assert!(log.lines().any(|l| l == line), "{line} in {log}");
    }
    assert!(
        log.contains("placeholder: kiln-placeholder-model-key-"),
        "{log}"
    );
    assert!(!artifacts.join("repo.git").exists(), "nothing published");
    let repo = artifacts.join("escalation/candidate.git");
    let branch = "refs/kiln/candidate";
    let env = common::file_on(&repo, branch, "env.txt");
    assert!(
        env.contains("MODEL_KEY=kiln-placeholder-model-key-"),
        "{env}"
    );
    assert!(env.contains("SSL_CERT_FILE=/kiln/egress-ca.pem"), "{env}");
    assert_eq!(
        common::file_on(&repo, branch, "answer.txt"),
        "authorization: Bearer [REDACTED:MODEL_KEY]\n"
    );
    assert!(common::file_on(&repo, branch, "answer.b64").contains("[REDACTED:MODEL_KEY]"));
    let report = ran.report.clone().expect("a report");
    assert_eq!(report["attempts"][0]["secrets_redacted"], 2, "{report}");
    assert_eq!(report["status"], "policy_escalated", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("held a configured secret"),
        "{report}"
    );

    // The proxy recorded the opened exchange, with the secret it added, and the refusals.
    let records: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(artifacts.join("attempt-1/generate.egress.json")).unwrap(),
    )
    .unwrap();
    let requests = records["requests"].as_array().unwrap();
    let model = requests
        .iter()
        .find(|r| r["target"] == format!("model.test:{port}"))
        .unwrap_or_else(|| panic!("{requests:?}"));
    assert_eq!(model["allowed"], true);
    assert_eq!(model["exchanges"][0]["path"], "/v1/messages");
    assert_eq!(model["exchanges"][0]["status"], 200);
    assert_eq!(model["exchanges"][0]["secrets"][0], "MODEL_KEY");
    assert_eq!(requests.iter().filter(|r| r["allowed"] == false).count(), 2);

    // Nowhere kiln wrote holds the key, or the base64 of what carried it.
    let carried = STANDARD.encode(format!("authorization: Bearer {key}"));
    let encoded = STANDARD.encode(&key);
    let mut written = files_under(&artifacts);
    written.push(("audit log".into(), std::fs::read(&audit).unwrap()));
    written.push((
        "report".into(),
        std::fs::read(fixture.path("report.json")).unwrap(),
    ));
    for (path, bytes) in &written {
        assert!(!contains(bytes, key.as_bytes()), "the key is in {path}");
        assert!(!contains(bytes, carried.as_bytes()), "base64 in {path}");
        assert!(
            !contains(bytes, &encoded.as_bytes()[..16]),
            "base64 in {path}"
        );
    }
    assert!(written.len() > 5, "{written:?}");
}

#[test]
fn jobs_that_misuse_secrets_are_refused_before_anything_runs() {
    let fixture = common::Fixture::with_files(&[("README", "hello\n")]);
    let key = format!("sk-test-{}", ulid::Ulid::new());
    std::fs::write(fixture.path("model.key"), &key).unwrap();
    let config = fixture.path("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[egress]\npermit = [\"model.test:443\", \"other.test:443\"]\n\n\
             [secrets.MODEL_KEY]\nfile = {:?}\nhosts = [\"model.test\"]\n\n\
             [secrets.UNSET_KEY]\nenv = \"KILN_TEST_UNSET_SECRET\"\nhosts = [\"model.test\"]\n",
            fixture.path("model.key")
        ),
    )
    .unwrap();
    for (prompt, network, says) in [
        (
            format!("use the key {key}"),
            "allow = [\"model.test:443\"]",
            "holds the value of the operator's secret MODEL_KEY",
        ),
        (
            "x".to_string(),
            "allow = [\"model.test:443\"]\nsecrets = [\"NOPE\"]",
            "secret `NOPE` is not in the operator config's [secrets]",
        ),
        (
            "x".to_string(),
            "allow = [\"other.test:443\"]\nsecrets = [\"MODEL_KEY\"]",
            "secret `MODEL_KEY` is for model.test, none of which is on `allow`",
        ),
        (
            "x".to_string(),
            "allow = [\"model.test:443\"]\nsecrets = [\"UNSET_KEY\"]",
            "environment variable `KILN_TEST_UNSET_SECRET` is not set",
        ),
    ] {
        let job = fixture.job(
            &format!("branch = \"factory/secret\"\nprompt = {prompt:?}"),
            "true",
            "true",
            "",
        );
        fixture.edit_job(
            &job,
            "[test]",
            &format!("[generate.network]\n{network}\n\n[test]"),
        );
        let ran = fixture.run_configured(&config, &job);
        assert_eq!(ran.code, 2, "{}", ran.stderr);
        assert!(ran.stderr.contains(says), "{says} in {}", ran.stderr);
        assert!(!ran.stderr.contains(&key), "{}", ran.stderr);
        assert!(!fixture.artifacts_root().exists(), "nothing ran");
    }
}
