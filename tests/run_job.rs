//! `kiln run` end to end: the retry loop, early stops, artifacts, exit codes and cleanup.

mod common;

use common::{Fixture, HELLO_FILES, kiln, left_by, leftovers, require_busybox};

#[test]
fn example_job_passes_on_attempt_two_with_feedback() {
    require_busybox();
    let fixture = Fixture::with_files(&[]);
    let out = fixture.path("out.git");
    let job = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/job.toml");
    let ran = fixture.run(&job, &["--out", out.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["schema"], "kiln.report/v1");
    assert_eq!(report["status"], "succeeded");
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["passed"], false);
    assert_eq!(attempts[1]["passed"], true);
    for n in 1..=2 {
        for file in [
            "job.json",
            "generate.log",
            "diff.patch",
            "diff.json",
            "test.log",
        ] {
            assert!(
                !ran.attempt_file(n, file).is_empty() || file == "generate.log",
                "attempt {n} {file} empty"
            );
        }
    }
    // Attempt 2 was fed attempt 1's diff and the tail of its failing test output.
    let input: serde_json::Value = serde_json::from_str(&ran.attempt_file(2, "job.json")).unwrap();
    assert_eq!(input["attempt"], 2);
    assert!(
        input["previous"]["test_output_tail"]
            .as_str()
            .unwrap()
            .contains("EXPECTED_GREETING=Hello, kiln!")
    );
    assert!(
        input["previous"]["diff"]
            .as_str()
            .unwrap()
            .contains("+echo \"Hello, Kiln!\"")
    );
    assert!(
        ran.attempt_file(2, "diff.patch")
            .contains("+echo \"Hello, kiln!\"")
    );

    // Only the work branch was written to the output repository, holding the passing tree.
    let repo = git2::Repository::open(&out).unwrap();
    let refs: Vec<String> = repo
        .references()
        .unwrap()
        .map(|r| r.unwrap().name().unwrap().to_string())
        .collect();
    assert_eq!(refs, ["refs/heads/factory/hello"]);
    let commit = repo
        .find_reference("refs/heads/factory/hello")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    assert_eq!(
        commit.id().to_string(),
        report["commit"]["oid"].as_str().unwrap()
    );
    assert!(commit.message().unwrap().contains(&ran.job_id()));
    let blob = commit
        .tree()
        .unwrap()
        .get_path(std::path::Path::new("greet.sh"))
        .unwrap()
        .to_object(&repo)
        .unwrap();
    assert!(String::from_utf8_lossy(blob.as_blob().unwrap().content()).contains("Hello, kiln!"));
    assert!(leftovers(&ran.job_id()).is_empty());
    assert!(left_by(ran.pid).is_empty(), "{:?}", left_by(ran.pid));
}

#[test]
fn tests_failing_after_the_last_attempt_exit_12_with_every_attempt_kept() {
    require_busybox();
    let fixture = Fixture::with_files(HELLO_FILES);
    let job = fixture.job(
        "branch = \"factory/fail\"\nprompt = \"p\"",
        "echo \"try $KILN_ATTEMPT\" >> notes.txt",
        "echo nope; exit 1",
        "",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["status"], "tests_failed");
    assert_eq!(report["attempts"].as_array().unwrap().len(), 3);
    assert!(report["commit"].is_null());
    for n in 1..=3 {
        assert!(ran.attempt_file(n, "test.log").contains("nope"));
        assert!(
            ran.attempt_file(n, "diff.patch")
                .contains(&format!("+try {n}"))
        );
    }
    assert!(leftovers(&ran.job_id()).is_empty());
    assert!(left_by(ran.pid).is_empty(), "{:?}", left_by(ran.pid));
}

#[test]
fn a_repeated_diff_stops_early_as_not_converging() {
    require_busybox();
    let fixture = Fixture::with_files(HELLO_FILES);
    let job = fixture.job(
        "branch = \"factory/same\"\nprompt = \"p\"",
        "echo same > notes.txt",
        "exit 1",
        "",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["status"], "not_converging");
    assert_eq!(
        report["reason"],
        "attempt 2 produced the same change as attempt 1"
    );
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1]["test"].is_null(),
        "tests are not run again on a repeated change"
    );
}

#[test]
fn a_generator_that_changes_nothing_is_never_committed() {
    require_busybox();
    let fixture = Fixture::with_files(HELLO_FILES);
    let job = fixture.job(
        "branch = \"factory/idle\"\nprompt = \"p\"",
        "/no/such/agent",
        "true",
        "",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["attempts"][0]["generate"]["exit_code"], 127);
    assert!(
        report["attempts"][0]["test"].is_null(),
        "an unchanged tree was tested"
    );
    assert_eq!(
        report["reason"],
        "attempt 2 produced the same change as attempt 1"
    );
    assert!(report["commit"].is_null());
    let input: serde_json::Value = serde_json::from_str(&ran.attempt_file(2, "job.json")).unwrap();
    assert_eq!(input["previous"]["untested_because"], "changed nothing");
}

#[test]
fn an_attempt_that_reverts_an_earlier_one_stops_early() {
    require_busybox();
    let fixture = Fixture::with_files(HELLO_FILES);
    let script = r#"if [ "$KILN_ATTEMPT" = 1 ]; then sed -i s/world/one/ greet.sh; else sed -i s/one/world/ greet.sh; echo x > other.txt; fi"#;
    let job = fixture.job(
        "branch = \"factory/revert\"\nprompt = \"p\"",
        script,
        "exit 1",
        "",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    assert_eq!(
        ran.report()["reason"],
        "attempt 2 reverts attempt 1's change to greet.sh"
    );
}

#[test]
fn git_source_with_tag_base_and_seed_json_record() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let record = serde_json::json!({
        "job_id": "factory-20260615-001",
        "type": "code_generation",
        "payload": {
            "repo": "repo", "base": "v1", "branch": "factory/seed",
            "prompt": "Greet kiln", "context_files": ["*.sh"],
            "test_requirements": "test.sh passes", "review_agent": "jazz"
        },
        "priority": 2, "assigned_worker": null, "status": "queued",
        "generate": {"image": common::BUSYBOX, "command": ["sh", "-c", "sed -i s/world/kiln/ greet.sh"]},
        "test": {"image": common::BUSYBOX, "command": ["sh", "test.sh"]}
    });
    let job = fixture.path("job.json");
    std::fs::write(&job, record.to_string()).unwrap();
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["job"]["seed"]["job_id"], "factory-20260615-001");
    assert_eq!(
        report["job"]["context_files"],
        serde_json::json!(["greet.sh", "test.sh"])
    );
    let source = git2::Repository::open(fixture.path("repo")).unwrap();
    let base = source.revparse_single("v1").unwrap().id().to_string();
    assert_eq!(report["job"]["base_commit"], base.as_str());
    // The source repository itself is untouched: no new branch appears there.
    assert!(source.find_reference("refs/heads/factory/seed").is_err());
}

#[test]
fn refused_branches_exit_2_before_anything_runs() {
    let fixture = Fixture::with_files(HELLO_FILES);
    for branch in [
        "main",
        "refs/heads/main",
        "factory/",
        "factory/../main",
        "factory/a..b",
        "factory/x@{1}",
        "factory//x",
        "factory/x.lock",
        "factory/a\u{1}b",
        "release",
        &format!("factory/{}", "x".repeat(300)),
        &format!("factory/{}", "x".repeat(5000)),
        "factory/fix\u{202E}nigol",
        "factory/a\u{200B}b",
    ] {
        let quoted = toml::Value::String(branch.into()).to_string();
        let job = fixture.job(
            &format!("branch = {quoted}\nprompt = \"p\""),
            "true",
            "true",
            "",
        );
        let ran = fixture.run(&job, &[]);
        assert_eq!(ran.code, 2, "{branch}: {}", ran.stderr);
        assert!(ran.stderr.contains("`branch`"), "{branch}: {}", ran.stderr);
        assert!(
            !fixture.artifacts_root().exists(),
            "{branch} left artifacts"
        );
    }
}

#[test]
fn unknown_job_keys_exit_2_naming_the_key() {
    let fixture = Fixture::with_files(HELLO_FILES);
    let job = fixture.job(
        "branch = \"factory/x\"\nprompt = \"p\"\npromt = \"typo\"",
        "true",
        "true",
        "",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("promt"), "{}", ran.stderr);
    let job = fixture.job(
        "branch = \"factory/x\"\nprompt = \"p\"",
        "true",
        "true",
        "[limits]\nmemory = \"lots\"",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("lots"), "{}", ran.stderr);
    assert!(!fixture.artifacts_root().exists());
}

#[test]
fn out_repository_that_already_has_the_branch_exits_2() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let repo = git2::Repository::open(fixture.path("repo")).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    repo.branch("factory/taken", &head, false).unwrap();
    let job = fixture.job(
        "branch = \"factory/taken\"\nprompt = \"p\"",
        "true",
        "true",
        "",
    );
    let ran = fixture.run(&job, &["--out", fixture.path("repo").to_str().unwrap()]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("exists already"), "{}", ran.stderr);
    assert!(!fixture.artifacts_root().exists());
}

#[test]
fn a_missing_image_exits_3_naming_how_to_get_it() {
    require_busybox();
    let fixture = Fixture::with_files(HELLO_FILES);
    let job = fixture.job("branch = \"factory/x\"\nprompt = \"p\"", "true", "true", "");
    fixture.edit_job(&job, common::BUSYBOX, "kiln-test/absent:1");
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 3, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("kiln-test/absent:1") && ran.stderr.contains("never pulls"),
        "{}",
        ran.stderr
    );
    assert!(!fixture.artifacts_root().exists());
    // The workspace volumes made ahead while preflight ran went with the process.
    assert!(left_by(ran.pid).is_empty(), "{:?}", left_by(ran.pid));
}

#[test]
fn an_unreachable_docker_engine_exits_3() {
    let fixture = Fixture::with_files(HELLO_FILES);
    let job = fixture.job("branch = \"factory/x\"\nprompt = \"p\"", "true", "true", "");
    let ran = fixture.run_with(
        kiln()
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .arg("run")
            .arg(&job),
        &[],
    );
    assert_eq!(ran.code, 3, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("cannot reach the Docker engine"),
        "{}",
        ran.stderr
    );
}

#[test]
fn an_interrupted_run_exits_130_and_leaves_nothing_behind() {
    require_busybox();
    let fixture = Fixture::with_files(HELLO_FILES);
    let job = fixture.job(
        "branch = \"factory/int\"\nprompt = \"p\"",
        "sleep 300",
        "true",
        "",
    );
    let mut child = kiln()
        .arg("run")
        .arg(&job)
        .arg("--artifacts")
        .arg(fixture.artifacts_root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    let job_id = first
        .trim()
        .strip_prefix("job ")
        .expect("first line names the job")
        .to_string();
    // Wait until the generator container runs, then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=kiln.job={job_id}"),
                "--filter",
                "label=kiln.stage=generate",
            ])
            .output()
            .unwrap();
        if !out.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generator never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let prepared = prepared_test_stage(&job_id);
    let interrupted = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        interrupted.elapsed() < std::time::Duration::from_secs(10),
        "stopped and cleaned up within seconds: {:?}",
        interrupted.elapsed()
    );
    let gone = std::process::Command::new("docker")
        .args(["inspect", &prepared])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the test stage made ahead is gone");
    assert!(leftovers(&job_id).is_empty(), "{:?}", leftovers(&job_id));
    assert!(left_by(pid).is_empty(), "{:?}", left_by(pid));
    let workspaces = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("kiln-ws-{job_id}"))
        })
        .count();
    assert_eq!(workspaces, 0, "the job's workspace folder survived");
}

/// The test stage's container made ahead while job `job`'s generator runs: created, never
/// started, labelled for this job's first attempt alone, on a volume that holds nothing yet
/// (no other job's tree, nothing of the image's). Returns its id.
fn prepared_test_stage(job: &str) -> String {
    let label = format!("label=kiln.job={job}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let id = loop {
        let ids = common::docker_ids(std::process::Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &label,
            "--filter",
            "label=kiln.stage=test",
        ]));
        if let [id] = ids.as_slice() {
            break id.clone();
        }
        assert!(ids.len() < 2, "one test stage made ahead: {ids:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "no test stage was made ahead"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &id])
        .output()
        .unwrap();
    let container: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let container = &container[0];
    assert_eq!(container["State"]["Status"], "created", "never started");
    let labels = container["Config"]["Labels"].as_object().unwrap();
    assert_eq!(labels["kiln.job"], job);
    assert_eq!(labels["kiln.stage"], "test");
    assert_eq!(labels["kiln.attempt"], "1");
    let env = container["Config"]["Env"].to_string();
    assert!(env.contains(&format!("KILN_JOB_ID={job}")), "{env}");
    let mounts = container["HostConfig"]["Mounts"].as_array().unwrap();
    let volume = mounts
        .iter()
        .find(|m| m["Type"] == "volume")
        .and_then(|m| m["Source"].as_str())
        .expect("the stage's workspace volume");
    let listed = std::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v"])
        .arg(format!("{volume}:/w:ro"))
        .args([common::BUSYBOX, "find", "/w", "-mindepth", "1"])
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "",
        "the volume made ahead holds nothing (not even the image's working directory) before its tree is put in"
    );
    id
}

#[test]
fn a_job_cannot_ask_for_more_than_the_operators_limits() {
    let fixture = Fixture::with_files(HELLO_FILES);
    let config = fixture.path("kiln.toml");
    std::fs::write(
        &config,
        "[limits]\nmemory = \"128MiB\"\npids = 64\nworkspace = \"16MiB\"\n",
    )
    .unwrap();
    for (asked, field, ceiling) in [
        ("memory = \"100GiB\"", "limits.memory", "128MiB"),
        ("pids = 1000000", "limits.pids", "64"),
        ("workspace = \"16GiB\"", "limits.workspace", "16MiB"),
        ("tmp = \"1000GiB\"", "limits.tmp", "64MiB"),
        ("cpus = 64.0", "limits.cpus", "1"),
    ] {
        let job = fixture.job(
            "branch = \"factory/greedy\"\nprompt = \"p\"",
            "true",
            "true",
            &format!("[limits]\n{asked}"),
        );
        let ran = fixture.run_configured(&config, &job);
        assert_eq!(ran.code, 2, "{asked}: {}", ran.stderr);
        assert!(
            ran.stderr.contains(field) && ran.stderr.contains(&format!("ceiling of {ceiling} ")),
            "{asked}: {}",
            ran.stderr
        );
        assert!(!fixture.artifacts_root().exists(), "{asked} ran");
    }
    // At or under the ceiling, the job runs with what it asked.
    require_busybox();
    let job = fixture.job(
        "branch = \"factory/modest\"\nprompt = \"p\"",
        "echo 'echo \"Hello, kiln!\"' > greet.sh",
        "sh test.sh",
        "[limits]\nmemory = \"64MiB\"\npids = 64",
    );
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.report()["sandbox"]["limits"]["memory"], 64 << 20);
}

#[test]
fn a_fifo_as_prompt_file_is_refused_without_hanging() {
    let fixture = Fixture::with_files(HELLO_FILES);
    nix::unistd::mkfifo(&fixture.path("prompt.fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let job = fixture.job(
        "branch = \"factory/fifo\"\nprompt_file = \"prompt.fifo\"",
        "true",
        "true",
        "",
    );
    let mut child = kiln()
        .arg("run")
        .arg(&job)
        .arg("--artifacts")
        .arg(fixture.artifacts_root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kiln hung on a FIFO prompt_file");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("prompt_file") && stderr.contains("not a regular file"),
        "{stderr}"
    );
    assert!(!fixture.artifacts_root().exists());
}
