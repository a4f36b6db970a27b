//! Escalation end to end: the bundle a human reads, notifications (a loopback webhook that
//! fails its first deliveries, a host command), and `kiln approve` / `kiln reject`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{Fixture, HELLO_FILES, default_bundle, kiln, require_busybox};
use serde_json::Value;

/// A webhook receiver on loopback that answers 500 to its first `failures` requests and 200
/// after; it keeps every body it received.
fn webhook(failures: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/secret-token",
        listener.local_addr().unwrap()
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let status = if n < failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

/// A job whose passing change adds `src/auth/login.sh` (escalation-patterns escalates it).
fn auth_job(fixture: &Fixture) -> PathBuf {
    fixture.job(
        "branch = \"factory/auth\"\nprompt = \"Greet kiln <b>& log in</b>\"",
        "cd /kiln/workspace && echo 'echo \"Hello, kiln!\"' > greet.sh && mkdir -p src/auth && \
         echo 'echo \"<script>alert(1)</script>\"' > src/auth/login.sh",
        "sh test.sh",
        "",
    )
}

/// Runs [`auth_job`] with the default bundle and the operator config `cfg`; returns the run and
/// the repository it publishes to.
fn run_auth_job(fixture: &Fixture, cfg: &Path) -> (common::Ran, PathBuf) {
    let job = auth_job(fixture);
    let out = fixture.path("out.git");
    let bundle = default_bundle();
    let ran = fixture.run_with(
        kiln().arg("--config").arg(cfg).arg("run").arg(&job),
        &[
            "--out",
            out.to_str().unwrap(),
            "--policies",
            bundle.to_str().unwrap(),
        ],
    );
    (ran, out)
}

fn config(fixture: &Fixture, text: &str) -> PathBuf {
    let path = fixture.path("kiln.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_policy_escalation_is_bundled_notified_with_retries_and_approved() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let (url, bodies) = webhook(2);
    let cfg = config(
        &fixture,
        &format!(
            "[notify]\nwebhook = \"{url}\"\nretries = 3\nbackoff = \"50ms\"\ntimeout = \"5s\"\n"
        ),
    );
    let (ran, out) = run_auth_job(&fixture, &cfg);
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["status"], "policy_escalated");
    assert!(!out.exists(), "nothing is published before a human decides");

    // Three deliveries: two refused, the third taken; the URL's path is never recorded.
    let deliveries = report["escalation"]["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    assert_eq!(deliveries[0]["ok"], false);
    assert_eq!(deliveries[0]["status"], 500);
    assert_eq!(deliveries[2]["ok"], true);
    assert!(!report.to_string().contains("secret-token"));
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[2]["schema"], "kiln.escalation-notice/v1");
    assert_eq!(bodies[2]["channel"], "#factory-reviews");
    assert_eq!(bodies[2]["kind"], "policy");

    // The bundle: everything a human needs, on one page that loads and runs nothing.
    let id = ran.job_id();
    let dir = ran.artifacts.clone().unwrap().join("escalation");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("escalation.json")).unwrap()).unwrap();
    assert_eq!(record["request"]["prompt"], "Greet kiln <b>& log in</b>");
    assert!(
        record["attempts"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("src/auth/login.sh")
    );
    assert!(record["candidate"]["commit"].as_str().is_some());
    let page = std::fs::read_to_string(dir.join("summary.html")).unwrap();
    assert!(page.contains("default-src 'none'"));
    assert!(
        !page.contains("<script") && !page.contains("<b>&"),
        "hostile text is escaped"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("path_match") && page.contains("src/auth/login.sh"));
    assert!(
        !page.contains("src=") && !page.contains("href="),
        "no external asset"
    );

    // Listed as open; approved once; published on the work branch; a second decision refused.
    let root = fixture.artifacts_root();
    let list = kiln()
        .args(["escalations", "list", "--json", "--artifacts"])
        .arg(&root)
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["state"], "open");
    let approve = kiln()
        .args([
            "approve",
            &id,
            "--by",
            "alice",
            "--note",
            "auth change reviewed",
            "--artifacts",
        ])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(
        approve.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    let repo = git2::Repository::open(&out).unwrap();
    let branch = repo
        .find_reference("refs/heads/factory/auth")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    assert_eq!(
        branch.id().to_string(),
        record["candidate"]["commit"].as_str().unwrap()
    );
    let again = kiln()
        .args(["reject", &id, "--by", "bob", "--note", "no", "--artifacts"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already approved by alice"));
    let show = kiln()
        .args(["escalations", "show", &id, "--artifacts"])
        .arg(&root)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["state"], "approved");
    assert_eq!(shown["decision"]["by"], "alice");
    assert_eq!(shown["decision"]["note"], "auth change reviewed");
    assert!(shown["decision"]["at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_rejected_escalation_publishes_nothing_and_exits_11() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    // The notice reaches a host command on its stdin.
    let notice = fixture.path("notice.json");
    let cfg = config(
        &fixture,
        &format!(
            "[notify]\ncommand = [\"sh\", \"-c\", \"cat > {}\"]\n",
            notice.display()
        ),
    );
    let (ran, out) = run_auth_job(&fixture, &cfg);
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    let sent: Value = serde_json::from_slice(&std::fs::read(&notice).unwrap()).unwrap();
    assert_eq!(sent["id"], ran.job_id().as_str());
    let root = fixture.artifacts_root();
    let id = ran.job_id();
    let no_note = kiln()
        .args(["reject", &id, "--by", "bob", "--note", " ", "--artifacts"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(no_note.status.code(), Some(2), "a rejection says why");
    let reject = kiln()
        .args([
            "reject",
            &id,
            "--by",
            "bob",
            "--note",
            "not in this sprint",
            "--artifacts",
        ])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(
        reject.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&reject.stderr)
    );
    let approve = kiln()
        .args(["approve", &id, "--by", "alice", "--artifacts"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(approve.status.code(), Some(2));
    assert!(!out.exists(), "nothing was published");
    let page = std::fs::read_to_string(
        ran.artifacts
            .clone()
            .unwrap()
            .join("escalation/summary.html"),
    )
    .unwrap();
    assert!(page.contains("rejected</span> by bob"));
}

#[test]
fn a_loop_that_stops_converging_escalates_with_nothing_to_approve() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let job = fixture.job(
        "branch = \"factory/stuck\"\nprompt = \"greet kiln\"",
        "echo 'echo wrong' > /kiln/workspace/greet.sh",
        "sh test.sh",
        "",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    assert_eq!(ran.report()["status"], "not_converging");
    let dir = ran.artifacts.clone().unwrap().join("escalation");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("escalation.json")).unwrap()).unwrap();
    assert_eq!(record["kind"], "not_converging");
    assert!(record["candidate"].is_null());
    assert!(
        record["attempts"][0]["test_log_tail"]
            .as_str()
            .unwrap()
            .contains("EXPECTED_GREETING")
    );
    let root = fixture.artifacts_root();
    let approve = kiln()
        .args(["approve", &ran.job_id(), "--by", "alice", "--artifacts"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(approve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&approve.stderr).contains("no tested change to approve"));
}

#[test]
fn notify_settings_are_checked_and_unknown_ids_refused() {
    let fixture = Fixture::with_git(HELLO_FILES);
    for bad in [
        "[notify]\nwebhook = \"ftp://x\"\n",
        "[notify]\nretries = 99\n",
        "[notify]\ncommand = []\n",
    ] {
        let cfg = config(&fixture, bad);
        let out = kiln()
            .arg("--config")
            .arg(&cfg)
            .args(["escalations", "list"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("[notify]"),
            "{bad}"
        );
    }
    let root = fixture.artifacts_root();
    for id in ["01nope", "../../etc", ""] {
        let out = kiln()
            .args(["approve", id, "--by", "a", "--artifacts"])
            .arg(&root)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{id}");
    }
}

#[test]
fn an_approval_whose_publish_fails_is_taken_back_and_can_be_made_again() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let job = auth_job(&fixture);
    let out = fixture.path("blocker/out.git");
    let bundle = default_bundle();
    let ran = fixture.run(
        &job,
        &[
            "--out",
            out.to_str().unwrap(),
            "--policies",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    // The destination cannot be made: a file stands where its parent folder should be.
    std::fs::write(fixture.path("blocker"), "not a folder").unwrap();
    let root = fixture.artifacts_root();
    let approve = || {
        kiln()
            .args(["approve", &ran.job_id(), "--by", "alice", "--artifacts"])
            .arg(&root)
            .output()
            .unwrap()
    };
    let failed = approve();
    assert_eq!(
        failed.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let show = kiln()
        .args(["escalations", "show", &ran.job_id(), "--artifacts"])
        .arg(&root)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["state"], "open", "the failed approval was taken back");
    std::fs::remove_file(fixture.path("blocker")).unwrap();
    let approved = approve();
    assert_eq!(
        approved.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    assert!(
        git2::Repository::open(&out)
            .unwrap()
            .find_reference("refs/heads/factory/auth")
            .is_ok()
    );
}
