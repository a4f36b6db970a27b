//! `kiln serve` through its real HTTP API and the real binary: tokens, malformed and oversized
//! requests, submit and wait, kill -9 of the server mid-job, overlap and priority scheduling.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::{Jobs, Server};
use common::{kiln, left_by, leftovers, require_busybox};
use serde_json::Value;

/// The times a job ran, from its record.
fn span(job: &Value) -> (i64, i64) {
    (
        job["started_ms"].as_i64().unwrap(),
        job["finished_ms"].as_i64().unwrap(),
    )
}

#[test]
fn requests_without_the_token_or_malformed_or_oversized_are_refused() {
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &[]);
    let token = server.token.clone();
    let mode = std::fs::metadata(jobs.state().join("token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert_eq!(server.http("GET", "/health", None, None, false).0, 200);
    assert_eq!(server.http("GET", "/jobs", None, None, false).0, 401);
    assert_eq!(
        server.http("GET", "/jobs", Some("wrong"), None, false).0,
        401
    );
    assert_eq!(
        server
            .http("GET", "/metrics", Some(&token[1..]), None, false)
            .0,
        401
    );
    assert_eq!(
        server.http("GET", "/jobs", Some(&token), None, false).0,
        200
    );
    let (code, body) = server.http("POST", "/jobs", Some(&token), Some(b"repo = ["), false);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let job = std::fs::read_to_string(jobs.write("x", 0, "")).unwrap();
    let unknown = format!("{job}\nbogus = 1\n");
    let (code, body) = server.http(
        "POST",
        "/jobs",
        Some(&token),
        Some(unknown.as_bytes()),
        false,
    );
    assert_eq!(code, 400);
    assert!(body.contains("bogus"), "{body}");
    let relative = job.replace(&jobs.dir.path().join("repo").display().to_string(), "repo");
    let (code, body) = server.http(
        "POST",
        "/jobs",
        Some(&token),
        Some(relative.as_bytes()),
        false,
    );
    assert_eq!(code, 400);
    assert!(
        body.contains("`repo`") && body.contains("relative"),
        "{body}"
    );
    let (code, _) = server.http(
        "POST",
        "/jobs",
        Some(&token),
        Some(b"{\"job_id\": 1}"),
        true,
    );
    assert_eq!(code, 400);
    let huge = vec![b'#'; 2 << 20];
    assert_eq!(
        server
            .http("POST", "/jobs", Some(&token), Some(&huge), false)
            .0,
        413
    );
    assert_eq!(
        server
            .http("GET", "/jobs/01nope", Some(&token), None, false)
            .0,
        404
    );
    assert_eq!(
        server
            .http("GET", "/jobs?state=nope", Some(&token), None, false)
            .0,
        400
    );
    // A submitted job may not name a file for the server to read into its prompt.
    let reads_host = job.replace("prompt = \"greet kiln\"", "prompt_file = \"/etc/passwd\"");
    let (code, body) = server.http(
        "POST",
        "/jobs",
        Some(&token),
        Some(reads_host.as_bytes()),
        false,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("prompt_file"), "{body}");
    // A job may name only repositories under the operator's --repos folders, links resolved.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("secret.txt"), "not yours\n").unwrap();
    let link = jobs.dir.path().join("link");
    std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
    let repo = jobs.dir.path().join("repo").display().to_string();
    for outside in [elsewhere.path().to_path_buf(), link, PathBuf::from("/")] {
        let named = job.replace(&repo, &outside.display().to_string());
        let (code, body) =
            server.http("POST", "/jobs", Some(&token), Some(named.as_bytes()), false);
        assert_eq!(code, 403, "{}: {body}", outside.display());
        assert!(
            body.contains("`repo`") && body.contains("not under"),
            "{body}"
        );
    }
    let closed = Server::start_with_repos(&jobs.dir.path().join("closed"), &[], &[]);
    let (code, body) = closed.http(
        "POST",
        "/jobs",
        Some(&closed.token),
        Some(job.as_bytes()),
        false,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--repos"), "{body}");
    let (code, body) = server.http("GET", "/openapi.json", None, None, false);
    assert_eq!(code, 200);
    assert!(body.contains("\"openapi\""));
    // Nothing was accepted.
    let (_, list) = server.http("GET", "/jobs", Some(&token), None, false);
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_submitted_job_runs_and_wait_exits_as_kiln_run_would() {
    require_busybox();
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &[]);
    let id = server.submit(&jobs.write("ok", 0, ""));
    assert_eq!(server.wait(&id), 0);
    let job = server.job(&id);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempt"], 1);
    let report = server.http(
        "GET",
        &format!("/jobs/{id}/report"),
        Some(&server.token.clone()),
        None,
        false,
    );
    assert_eq!(report.0, 200);
    assert!(report.1.contains("kiln.report/v1"));
    let (code, metrics) = server.http("GET", "/metrics", Some(&server.token.clone()), None, false);
    assert_eq!(code, 200);
    for line in [
        "kiln_jobs{state=\"succeeded\"} 1",
        "kiln_attempts_total 1",
        "kiln_stage_duration_seconds_count{stage=\"test\"} 1",
        "kiln_container_start_seconds_count{stage=\"generate\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // A container's start is measured, not assumed: it takes some time, and less than a minute.
    let start_sum: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiln_container_start_seconds_sum{stage=\"test\"} "))
        .and_then(|v| v.parse().ok())
        .expect("a start latency sum for the test stage");
    assert!(start_sum > 0.0 && start_sum < 60.0, "{start_sum}");
    // An artifact path cannot leave the job's folder, written or percent-encoded.
    let token = server.token.clone();
    for escape in ["../../token", "..%2F..%2Ftoken", "attempt-1/../../../token"] {
        let path = format!("/jobs/{id}/artifacts/{escape}");
        let (code, body) = server.http("GET", &path, Some(&token), None, false);
        assert_eq!(code, 400, "{escape}: {body}");
        assert!(!body.contains(&token), "{escape}");
    }
    let path = format!("/jobs/{id}/artifacts/report.json");
    assert_eq!(server.http("GET", &path, Some(&token), None, false).0, 200);
    // A link among the artifacts is not followed, and a file over the cap is refused unread.
    let dir = jobs.state().join("jobs").join(&id);
    std::os::unix::fs::symlink(jobs.state().join("token"), dir.join("link")).unwrap();
    let path = format!("/jobs/{id}/artifacts/link");
    let (code, body) = server.http("GET", &path, Some(&token), None, false);
    assert_eq!(code, 404, "{body}");
    assert!(!body.contains(&token));
    // Sparse: over 1 GiB long, no disk used.
    let huge = std::fs::File::create(dir.join("huge.bin")).unwrap();
    huge.set_len((1 << 30) + 1).unwrap();
    let path = format!("/jobs/{id}/artifacts/huge.bin");
    let (code, body) = server.http("GET", &path, Some(&token), None, false);
    assert_eq!(code, 413, "{body}");
    assert!(
        body.contains("read it from the server's state folder"),
        "{body}"
    );
    let logs = server.client().args(["logs", &id]).output().unwrap();
    assert!(String::from_utf8_lossy(&logs.stdout).contains("==> attempt 1 test.log <=="));
    // A job whose tests never pass ends as kiln run would: exit 12.
    let failing = jobs.write("failing", 0, "");
    let text = std::fs::read_to_string(&failing)
        .unwrap()
        .replace("Hello, kiln!", "Hello, nobody!");
    std::fs::write(&failing, text).unwrap();
    let id = server.submit(&failing);
    // Following its logs ends when the job does, each stage's log sent as it ended.
    let followed = server
        .client()
        .args(["logs", "--follow", &id])
        .output()
        .unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.contains("==> attempt 1 test.log <=="),
        "{followed}"
    );
    assert!(followed.contains("EXPECTED_GREETING"), "{followed}");
    assert_ne!(server.job(&id)["state"], "running");
    assert_eq!(server.wait(&id), 12);
    let verify = kiln()
        .args(["audit", "verify"])
        .arg(jobs.state().join("audit.jsonl"))
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn a_running_stage_s_output_streams_as_it_comes() {
    require_busybox();
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &[]);
    let path = jobs.write("live", 4, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("sleep 4;", "echo first-line; sleep 4; echo second-line;");
    std::fs::write(&path, text).unwrap();
    let id = server.submit(&path);
    let mut follower = server
        .client()
        .args(["logs", "--follow", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The first line arrives while the generator still sleeps, before its second line exists.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l: &String| l == "first-line") {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .expect("first-line streamed before the deadline");
        seen.push(line);
    }
    assert_eq!(server.job(&id)["stage"], "generate", "{seen:?}");
    assert!(!seen.iter().any(|l| l == "second-line"), "{seen:?}");
    // The rest follows, each line once, and the stream ends with the job.
    let status = follower.wait().unwrap();
    assert!(status.success());
    seen.extend(received.try_iter());
    let count = |want: &str| seen.iter().filter(|l| *l == want).count();
    assert_eq!(count("first-line"), 1, "{seen:?}");
    assert_eq!(count("second-line"), 1, "{seen:?}");
    assert_eq!(count("==> attempt 1 generate.log <=="), 1, "{seen:?}");
    assert_eq!(count("==> attempt 1 test.log <=="), 1, "{seen:?}");
    assert_eq!(server.wait(&id), 0);
}

#[test]
fn a_server_killed_mid_job_loses_nothing_and_leaves_no_container() {
    require_busybox();
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &[]);
    let id = server.submit(&jobs.write("slow", 4, ""));
    server.wait_until_generating(&id);
    let dead = server.child.id();
    server.kill(); // SIGKILL: no cleanup runs
    assert!(
        !left_by(dead).is_empty(),
        "the dead server left its containers"
    );
    let server = Server::start(&jobs.state(), &[]);
    // The restart reaped them before it took requests.
    assert!(left_by(dead).is_empty(), "{:?}", left_by(dead));
    assert_eq!(server.wait(&id), 0);
    let job = server.job(&id);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(
        job["runs"], 2,
        "started once before the kill and once after"
    );
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

#[test]
fn overlapping_jobs_run_one_after_the_other_and_disjoint_ones_together() {
    require_busybox();
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &["--concurrency", "4", "--per-repo", "4"]);
    let a = server.submit(&jobs.write("a", 2, "touches = [\"greet.sh\"]"));
    let b = server.submit(&jobs.write("b", 2, "touches = [\"greet.sh\"]"));
    for id in [&a, &b] {
        assert_eq!(server.wait(id), 0);
    }
    let (a_span, b_span) = (span(&server.job(&a)), span(&server.job(&b)));
    assert!(
        b_span.0 >= a_span.1 || a_span.0 >= b_span.1,
        "overlapping jobs ran together: {a_span:?} {b_span:?}"
    );
    let c = server.submit(&jobs.write("c", 2, "touches = [\"greet.sh\"]"));
    let d = server.submit(&jobs.write("d", 2, "touches = [\"docs/**\"]"));
    for id in [&c, &d] {
        assert_eq!(server.wait(id), 0);
    }
    let (c_span, d_span) = (span(&server.job(&c)), span(&server.job(&d)));
    assert!(
        c_span.0 < d_span.1 && d_span.0 < c_span.1,
        "disjoint jobs ran apart: {c_span:?} {d_span:?}"
    );
}

#[test]
fn urgent_jobs_start_before_older_less_urgent_ones() {
    require_busybox();
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &["--concurrency", "1"]);
    let blocker = server.submit(&jobs.write("blocker", 2, ""));
    let low = server.submit(&jobs.write("low", 0, "priority = 9"));
    let high = server.submit(&jobs.write("high", 0, "priority = 0"));
    for id in [&blocker, &low, &high] {
        assert_eq!(server.wait(id), 0);
    }
    assert!(
        span(&server.job(&high)).0 < span(&server.job(&low)).0,
        "the urgent job started first"
    );
}

#[test]
fn a_low_priority_job_is_not_starved_by_newer_urgent_ones() {
    require_busybox();
    let jobs = Jobs::new();
    // Each second a job waits makes it one level more urgent.
    let server = Server::start(&jobs.state(), &["--concurrency", "1", "--aging", "1s"]);
    let blocker = server.submit(&jobs.write("blocker", 14, "priority = 0"));
    server.wait_until_generating(&blocker);
    let low = server.submit(&jobs.write("low", 0, "priority = 9"));
    // Ten seconds on, the low job has aged nine levels and more: it now outranks fresh urgent work.
    // (Not a wait for something to happen: the scheduler's aging is what is tested, and it
    // counts the time a job has waited.)
    std::thread::sleep(Duration::from_secs(10));
    let urgent = server.submit(&jobs.write("urgent", 0, "priority = 0"));
    assert_eq!(
        server.job(&blocker)["state"],
        "running",
        "the test's timing held"
    );
    for id in [&blocker, &low, &urgent] {
        assert_eq!(server.wait(id), 0);
    }
    assert!(
        span(&server.job(&low)).0 < span(&server.job(&urgent)).0,
        "the long-waiting job started before the newer urgent one"
    );
}

#[test]
fn cancelling_a_running_job_removes_its_containers_within_seconds() {
    require_busybox();
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &[]);
    let id = server.submit(&jobs.write("long", 60, ""));
    server.wait_until_generating(&id);
    assert!(!leftovers(&id).is_empty());
    let started = Instant::now();
    let cancel = server.client().args(["cancel", &id]).output().unwrap();
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    assert_eq!(server.job(&id)["state"], "cancelled");
    assert_eq!(server.wait(&id), 130);
}

#[test]
fn an_escalated_job_is_approved_through_the_api() {
    require_busybox();
    let jobs = Jobs::new();
    let bundle = common::default_bundle();
    let server = Server::start(&jobs.state(), &["--policies", bundle.to_str().unwrap()]);
    let job = jobs.write("auth", 0, "");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("> /kiln/workspace/greet.sh", "> /kiln/workspace/greet.sh; mkdir -p /kiln/workspace/src/auth; echo x > /kiln/workspace/src/auth/a.sh");
    std::fs::write(&job, text).unwrap();
    let id = server.submit(&job);
    assert_eq!(server.wait(&id), 10);
    assert_eq!(server.job(&id)["state"], "escalated");
    let token = server.token.clone();
    let (code, body) = server.http("GET", "/escalations", Some(&token), None, false);
    assert_eq!(code, 200);
    assert!(body.contains(&id), "{body}");
    let (code, body) = server.http(
        "POST",
        &format!("/jobs/{id}/approve"),
        Some(&token),
        Some(b"{\"by\": 1}"),
        true,
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = server.http(
        "POST",
        &format!("/jobs/{id}/approve"),
        Some(&token),
        Some(b"{\"by\": \"alice\"}"),
        true,
    );
    assert_eq!(code, 200, "{body}");
    let job = server.job(&id);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["exit_code"], 0);
    let (code, body) = server.http(
        "POST",
        &format!("/jobs/{id}/reject"),
        Some(&token),
        Some(b"{\"by\": \"bob\", \"note\": \"no\"}"),
        true,
    );
    assert_eq!(code, 400, "already decided: {body}");
    let published = jobs.state().join(format!("jobs/{id}/repo.git"));
    assert!(
        git2::Repository::open(published)
            .unwrap()
            .find_reference("refs/heads/factory/auth")
            .is_ok()
    );
}

#[test]
fn the_operator_chooses_where_every_job_publishes() {
    require_busybox();
    let jobs = Jobs::new();
    let remote = jobs.dir.path().join("remote.git");
    let server = Server::start(&jobs.state(), &["--out", remote.to_str().unwrap()]);
    let id = server.submit(&jobs.write("published", 0, ""));
    assert_eq!(server.wait(&id), 0);
    let repo = git2::Repository::open(&remote).unwrap();
    assert!(repo.find_reference("refs/heads/factory/published").is_ok());
    // A second job naming the same branch is refused before it runs: nothing is overwritten.
    let again = server.submit(&jobs.write("published", 0, ""));
    assert_eq!(server.wait(&again), 2);
    assert!(
        server.job(&again)["reason"]
            .as_str()
            .unwrap()
            .contains("exists already")
    );
}

#[test]
fn an_approval_runs_to_its_end_when_the_client_goes_away() {
    require_busybox();
    let jobs = Jobs::new();
    // The jobs' repository is a git one, and the operator's remote holds its `main`.
    common::commit_folder(&jobs.dir.path().join("repo"));
    let remote = jobs.dir.path().join("remote.git");
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(jobs.dir.path().join("repo").to_str().unwrap(), &remote)
        .unwrap();
    let base = git2::Repository::open_bare(&remote)
        .unwrap()
        .refname_to_id("refs/heads/main")
        .unwrap();
    let server = Server::start(&jobs.state(), &["--out", remote.to_str().unwrap()]);
    // With no bundle to judge it, a [merge] waits for a human; the merge queue's re-test of the
    // approved change takes a few seconds.
    let job = jobs.write("held", 0, "[merge]\ntarget = \"main\"");
    let text = std::fs::read_to_string(&job).unwrap().replace(
        "command = [\"sh\", \"test.sh\"]",
        "command = [\"sh\", \"-c\", \"[ \\\"$KILN_STAGE\\\" = merge-test ] && sleep 4; sh test.sh\"]",
    );
    std::fs::write(&job, text).unwrap();
    let id = server.submit(&job);
    assert_eq!(server.wait(&id), 13);
    // The client gives up after a second, long before the re-test ends.
    let gave_up = Command::new("curl")
        .args(["-s", "--max-time", "1", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {}", server.token)])
        .args(["-H", "Content-Type: application/json"])
        .args(["--data-binary", "{\"by\": \"alice\"}"])
        .arg(format!("{}/jobs/{id}/approve", server.url))
        .status()
        .unwrap();
    assert_eq!(gave_up.code(), Some(28), "curl timed out, as meant");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.job(&id)["state"] == "awaiting_review" {
        assert!(Instant::now() < deadline, "the approval never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    let job = server.job(&id);
    assert_eq!(job["state"], "succeeded", "{job}");
    let landed = git2::Repository::open_bare(&remote)
        .unwrap()
        .refname_to_id("refs/heads/main")
        .unwrap();
    assert_ne!(landed, base, "the approved change was merged into main");
}

#[test]
fn a_server_told_to_stop_hands_its_jobs_back_and_leaves_nothing() {
    require_busybox();
    let jobs = Jobs::new();
    let mut server = Server::start(&jobs.state(), &["--grace", "1s"]);
    let id = server.submit(&jobs.write("long", 60, ""));
    server.wait_until_generating(&id);
    let pid = server.child.id();
    assert!(!left_by(pid).is_empty(), "the job's containers run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
    assert!(left_by(pid).is_empty(), "{:?}", left_by(pid));
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    // The job waits in the queue for the next start, its run counted.
    let db = rusqlite::Connection::open(jobs.state().join("kiln.db")).unwrap();
    let (state, runs): (String, i64) = db
        .query_row("SELECT state, runs FROM jobs WHERE id = ?1", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((state.as_str(), runs), ("queued", 1));
}

#[test]
fn a_server_whose_runtime_the_engine_lacks_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, "[sandbox]\nruntime = \"kiln-no-such-runtime\"\n").unwrap();
    let state = dir.path().join("state");
    let out = kiln()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .arg("--repos")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("`kiln-no-such-runtime`"), "{stderr}");
    assert!(!state.join("address").exists(), "it listened");
}
