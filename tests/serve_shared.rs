//! Two `kiln serve` processes (two state folders, standing in for two hosts) sharing one real
//! PostgreSQL store: every job runs once, a killed server's job moves to the other when its
//! lease runs out, the `touches` rule holds across servers, and either server cancels, reports
//! and approves a job the other ran.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::serve::{Jobs, Server};
use common::{kiln, left_by, leftovers, require_busybox};
use serde_json::Value;

/// A shared store, migrated, and the token its servers share.
struct Shared {
    pg: Postgres,
    token_file: PathBuf,
    jobs: Jobs,
}

impl Shared {
    fn new() -> Shared {
        require_busybox();
        let pg = Postgres::start();
        let migrate = kiln()
            .args(["store", "migrate", "--store", &pg.url()])
            .output()
            .unwrap();
        assert!(
            migrate.status.success(),
            "{}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        let jobs = Jobs::new();
        let token_file = jobs.dir.path().join("shared-token");
        std::fs::write(&token_file, "a".repeat(24) + &"b".repeat(24)).unwrap();
        Shared {
            pg,
            token_file,
            jobs,
        }
    }

    /// A server with its own state folder `name`, on the shared store.
    fn server(&self, name: &str, extra: &[&str]) -> Server {
        let state = self.jobs.dir.path().join(name);
        std::fs::create_dir_all(&state).unwrap();
        // The client reads the token from the state folder; the server, from the shared file.
        std::fs::copy(&self.token_file, state.join("token")).unwrap();
        let url = self.pg.url();
        let mut args = vec![
            "--store",
            &url,
            "--token-file",
            self.token_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Server::start_with_repos(&state, &[self.jobs.dir.path()], &args)
    }
}

impl std::ops::Deref for Shared {
    type Target = Jobs;
    fn deref(&self) -> &Jobs {
        &self.jobs
    }
}

/// The `job.state` records of the shared audit chain, per job, in chain order: (to, server).
fn states(pg: &Postgres) -> HashMap<String, Vec<(String, String)>> {
    let rows = pg.psql(
        "SELECT job, data::json->>'to', coalesce(data::json->>'server', '') FROM audit
         WHERE kind = 'job.state' ORDER BY seq",
    );
    let mut by_job: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for line in rows.lines() {
        let mut parts = line.split('|');
        let (job, to, server) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        by_job
            .entry(job.to_string())
            .or_default()
            .push((to.to_string(), server.to_string()));
    }
    by_job
}

/// No job is `running` twice without leaving that state between: never on two servers at once.
fn assert_never_twice_at_once(by_job: &HashMap<String, Vec<(String, String)>>) {
    for (job, moves) in by_job {
        let mut running: Option<&str> = None;
        for (to, server) in moves {
            if to == "running" {
                assert!(
                    running.is_none(),
                    "job {job} ran on {server} while it ran on {running:?}: {moves:?}"
                );
                assert!(!server.is_empty(), "job {job}: a run names its server");
                running = Some(server);
            } else {
                running = None;
            }
        }
    }
}

fn verify_chain(pg: &Postgres) {
    let out = kiln()
        .args(["audit", "verify", "--store", &pg.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn forty_jobs_through_two_servers_each_succeed_exactly_once() {
    let shared = Shared::new();
    let a = shared.server("a", &["--per-repo", "4"]);
    let b = shared.server("b", &["--per-repo", "4"]);
    let ids: Vec<String> = (0..40)
        .map(|i| {
            let job = shared.write(&format!("j{i}"), 0, &format!("touches = [\"j{i}/**\"]"));
            if i % 2 == 0 {
                a.submit(&job)
            } else {
                b.submit(&job)
            }
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        // Waited for through the server it was not submitted to.
        let other = if i % 2 == 0 { &b } else { &a };
        assert_eq!(other.wait(id), 0, "job {id}: {}", other.job(id));
    }
    assert_eq!(
        shared
            .pg
            .psql("SELECT count(*) FROM jobs WHERE state = 'succeeded' AND runs = 1"),
        "40"
    );
    assert_eq!(
        shared.pg.psql("SELECT count(DISTINCT server) FROM jobs"),
        "2"
    );
    let by_job = states(&shared.pg);
    assert_never_twice_at_once(&by_job);
    for id in &ids {
        let ends = by_job[id]
            .iter()
            .filter(|(to, _)| to == "succeeded")
            .count();
        assert_eq!(ends, 1, "job {id}: {:?}", by_job[id]);
    }
    verify_chain(&shared.pg);
    // A job's report and logs through both servers, one of which did not run it.
    let id = &ids[0];
    for server in [&a, &b] {
        let token = server.token.clone();
        let (code, body) = server.http(
            "GET",
            &format!("/jobs/{id}/report"),
            Some(&token),
            None,
            false,
        );
        assert_eq!(code, 200, "{body}");
        let report: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["status"], "succeeded");
        let (code, body) = server.http(
            "GET",
            &format!("/jobs/{id}/logs"),
            Some(&token),
            None,
            false,
        );
        assert_eq!(code, 200);
        assert!(body.contains("==> attempt 1 test.log <=="), "{body}");
    }
}

/// The id a server goes by in the store.
fn id_of(server: &Server) -> String {
    std::fs::read_to_string(server.state.join("server-id"))
        .unwrap()
        .trim()
        .to_string()
}

/// Of `a` and `b`, the one that is not server `id`.
fn other_than<'s>(id: &str, a: &'s Server, b: &'s Server) -> &'s Server {
    if id == id_of(a) { b } else { a }
}

#[test]
fn a_killed_server_s_job_is_finished_by_the_other_after_its_lease() {
    let shared = Shared::new();
    let lease = ["--lease", "3s"];
    let a = shared.server("a", &lease);
    let b = shared.server("b", &lease);
    let id = a.submit(&shared.write("slow", 4, ""));
    a.wait_until_generating(&id);
    let owner = a.job(&id)["server"].as_str().unwrap().to_string();
    let (victim, survivor) = if owner == id_of(&a) { (a, b) } else { (b, a) };
    let victim_state = victim.state.clone();
    let victim_pid = victim.child.id();
    // While its server lives nothing else removes them; once it is dead, any kiln on this engine
    // may (a server's start reaps what dead processes left), so they are looked for now.
    assert!(
        !left_by(victim_pid).is_empty(),
        "the running job has containers of its server"
    );
    victim.kill();
    assert_eq!(survivor.wait(&id), 0, "{}", survivor.job(&id));
    let job = survivor.job(&id);
    assert_eq!(job["runs"], 2, "{job}");
    assert_eq!(job["state"], "succeeded");
    assert_ne!(job["server"].as_str().unwrap(), owner);
    let by_job = states(&shared.pg);
    assert_never_twice_at_once(&by_job);
    assert!(
        by_job[&id].iter().any(|(to, _)| to == "queued"),
        "the lease's end handed it back: {:?}",
        by_job[&id]
    );
    // The killed server, started again, reaps what its killed run left in Docker (if another
    // test's server on this engine has not done so first).
    let restarted = shared.server(victim_state.file_name().unwrap().to_str().unwrap(), &lease);
    wait_for(
        "the restarted server reaps",
        Duration::from_secs(20),
        || left_by(victim_pid).is_empty(),
    );
    assert_eq!(restarted.job(&id)["state"], "succeeded");
    verify_chain(&shared.pg);
}

#[test]
fn overlapping_jobs_wait_across_servers_and_the_other_server_cancels_and_approves() {
    let shared = Shared::new();
    let out = shared.dir.path().join("out.git");
    git2::Repository::init_bare(&out).unwrap();
    let bundle = common::default_bundle();
    let extra = [
        "--per-repo",
        "4",
        "--policies",
        bundle.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let a = shared.server("a", &extra);
    let b = shared.server("b", &extra);
    let same: Vec<String> = (0..4)
        .map(|i| {
            let job = shared.write(&format!("same{i}"), 1, "touches = [\"greet.sh\"]");
            if i % 2 == 0 {
                a.submit(&job)
            } else {
                b.submit(&job)
            }
        })
        .collect();
    for id in &same {
        assert_eq!(a.wait(id), 0);
    }
    let mut spans: Vec<(i64, i64, String)> = same
        .iter()
        .map(|id| {
            let job = a.job(id);
            (
                job["started_ms"].as_i64().unwrap(),
                job["finished_ms"].as_i64().unwrap(),
                job["server"].to_string(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "overlapping jobs ran at once: {spans:?}"
        );
    }

    // Cancel through the server that does not run the job.
    let id = a.submit(&shared.write("long", 60, ""));
    a.wait_until_generating(&id);
    let owner = a.job(&id)["server"].as_str().unwrap().to_string();
    let other = other_than(&owner, &a, &b);
    let started = Instant::now();
    let cancel = other.client().args(["cancel", &id]).output().unwrap();
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    assert_eq!(other.job(&id)["state"], "cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    wait_for(
        "the running server removes its containers",
        Duration::from_secs(10),
        || leftovers(&id).is_empty(),
    );

    // An escalated job, approved through the server that did not run it.
    let job = shared.write("auth", 0, "");
    let text = std::fs::read_to_string(&job).unwrap().replace(
        "> /kiln/workspace/greet.sh",
        "> /kiln/workspace/greet.sh; mkdir -p /kiln/workspace/src/auth; echo x > /kiln/workspace/src/auth/a.sh",
    );
    std::fs::write(&job, text).unwrap();
    let id = a.submit(&job);
    assert_eq!(a.wait(&id), 10);
    let ran = a.job(&id)["server"].as_str().unwrap().to_string();
    let other = other_than(&ran, &a, &b);
    let token = other.token.clone();
    let (code, body) = other.http("GET", "/escalations", Some(&token), None, false);
    assert_eq!(code, 200);
    assert!(body.contains(&id), "{body}");
    let (code, body) = other.http(
        "POST",
        &format!("/jobs/{id}/approve"),
        Some(&token),
        Some(b"{\"by\": \"alice\"}"),
        true,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(a.job(&id)["state"], "succeeded");
    let (code, body) = a.http(
        "POST",
        &format!("/jobs/{id}/reject"),
        Some(&token),
        Some(b"{\"by\": \"bob\", \"note\": \"no\"}"),
        true,
    );
    assert_eq!(code, 400, "already decided: {body}");
    let published = git2::Repository::open(&out).unwrap();
    assert!(published.find_reference("refs/heads/factory/auth").is_ok());
    verify_chain(&shared.pg);
}

#[test]
fn an_unreachable_store_exits_3_naming_it_and_a_newer_schema_is_refused() {
    let jobs = Jobs::new();
    let dead = "postgres://kiln@127.0.0.1:9/kiln";
    let out = kiln()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            dead,
            "--state-dir",
        ])
        .arg(jobs.state())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    let out = kiln()
        .args([
            "serve",
            "--store",
            "postgres://kiln:pw@127.0.0.1/kiln",
            "--state-dir",
        ])
        .arg(jobs.state())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a password on the command line is refused"
    );

    let pg = Postgres::start();
    let unmigrated = kiln()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &pg.url(),
            "--state-dir",
        ])
        .arg(jobs.state())
        .output()
        .unwrap();
    assert_eq!(unmigrated.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unmigrated.stderr).contains("kiln store migrate"));
    let migrate = kiln()
        .args(["store", "migrate", "--store", &pg.url()])
        .output()
        .unwrap();
    assert!(migrate.status.success());
    pg.psql("UPDATE kiln_schema SET version = version + 1");
    let newer = kiln()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &pg.url(),
            "--state-dir",
        ])
        .arg(jobs.state())
        .output()
        .unwrap();
    assert_eq!(newer.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&newer.stderr).contains("newer than this kiln"));
}

#[test]
fn a_store_lost_mid_job_holds_the_job_s_end_until_the_store_is_back() {
    let shared = Shared::new();
    let a = shared.server("a", &[]);
    let id = a.submit(&shared.write("outage", 2, ""));
    a.wait_until_generating(&id);
    shared.pg.stop();
    // The job's stages end while the store is gone (its generator sleeps 2 s, then the tests
    // run); every answer about it meanwhile is an error or a job not yet ended.
    let label = format!("label=kiln.job={id}");
    let lost_at = Instant::now();
    let mut answers = Vec::new();
    while Instant::now() < lost_at + Duration::from_secs(8) {
        let (code, body) = a.http(
            "GET",
            &format!("/jobs/{id}"),
            Some(a.token.as_str()),
            None,
            false,
        );
        answers.push(code);
        if code == 200 {
            let job: Value = serde_json::from_str(&body).unwrap();
            assert_ne!(
                job["state"], "succeeded",
                "reported before the store held it"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        answers.iter().any(|&code| code >= 500),
        "the lost store shows: {answers:?}"
    );
    assert!(
        common::docker_ids(Command::new("docker").args(["ps", "-q", "--filter", &label]))
            .is_empty(),
        "the job's stages ended during the outage"
    );
    shared.pg.run();
    assert_eq!(a.wait(&id), 0, "{}", a.job(&id));
    let job = a.job(&id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["runs"], 1, "kept, not run again: {job}");
    assert_never_twice_at_once(&states(&shared.pg));
    verify_chain(&shared.pg);
}
