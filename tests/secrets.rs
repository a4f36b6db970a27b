//! A secret through the egress proxy, with a real sandbox: an HTTPS stand-in for a model API on
//! loopback (its certificate from a test CA the operator config trusts) records the
//! Authorization header it gets and echoes it back. The request arrives with the real key while
//! the container holds only a placeholder; the key the stand-in echoes is redacted from every
//! artifact, the report, the committed tree and the audit log. (Talks to loopback only.)

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEBIAN: &str = "kiln/debian:bookworm";

/// Starts the stand-in for `model.test` on loopback; returns its port, the test CA's PEM, and
/// the Authorization headers it has received.
fn https_stand_in() -> (u16, String, Arc<Mutex<Vec<String>>>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["model.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let authorization = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .or_else(|| head.lines().find_map(|l| l.strip_prefix("Authorization: ")))
                    .unwrap_or("(none)")
                    .to_string();
                recorded.lock().unwrap().push(authorization.clone());
                let body = format!("authorization: {authorization}\n");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
    });
    (port, ca_cert.pem(), seen)
}

fn require_debian() {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", DEBIAN])
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "{DEBIAN} is missing: run `cargo run -- image build debian` (as .ci/run does)"
    );
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
    require_debian();
    let (port, ca_pem, seen) = https_stand_in();
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
    let ran = fixture.run_with(
        common::kiln()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .arg(&job),
        &[],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);

    // The stand-in got the real key; the sandbox saw only the placeholder.
    assert_eq!(*seen.lock().unwrap(), vec![format!("Bearer {key}")]);
    let artifacts = ran.artifacts.clone().expect("artifacts");
    let log = std::fs::read_to_string(artifacts.join("attempt-1/generate.log")).unwrap();
    for line in [
        "answer: authorization: Bearer [REDACTED:MODEL_KEY]",
        "metadata: 403",
        "host: 403",
        "dns: 2",
    ] {
        assert!(log.lines().any(|l| l == line), "{line} in {log}");
    }
    assert!(
        log.contains("placeholder: kiln-placeholder-model-key-"),
        "{log}"
    );
    let repo = artifacts.join("repo.git");
    let branch = "refs/heads/factory/secret";
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
