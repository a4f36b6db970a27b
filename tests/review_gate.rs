//! The review gate and what follows it: test protection, the reviewer, escalation, publishing
//! and the merge queue, against the real binary, real Docker and real git repositories.

mod common;

use std::path::Path;

use common::{Fixture, HELLO_FILES, default_bundle, file_on, require_busybox};

const PROTECT_TEST: &str = "[test]\nprotect = [\"test.sh\"]";

#[test]
fn a_test_weakening_generator_is_stopped_by_protect() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    // Leaves greet.sh wrong and makes the test always pass.
    let job = fixture.job(
        "branch = \"factory/weaken\"\nprompt = \"make the test pass\"",
        "echo 'exit 0' > /kiln/workspace/test.sh",
        "sh test.sh",
        "",
    );
    fixture.edit_job(&job, "[test]", PROTECT_TEST);
    let out = fixture.path("out.git");
    let ran = fixture.run(&job, &["--out", out.to_str().unwrap()]);
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    let report = ran.report();
    assert_ne!(report["status"], "succeeded");
    assert_eq!(report["attempts"][0]["protected_reverted"][0], "test.sh");
    assert_eq!(report["attempts"][0]["passed"], false);
    assert!(
        ran.stderr
            .contains("protected paths put back for the tests: test.sh")
    );
    assert!(!out.exists(), "nothing was published");
}

#[test]
fn a_protected_path_is_published_as_it_was_tested() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    // Fixes greet.sh, and also edits the protected test.
    let job = fixture.job(
        "branch = \"factory/fix\"\nprompt = \"greet kiln\"",
        "cd /kiln/workspace && echo 'echo \"Hello, kiln!\"' > greet.sh && echo '# weakened' >> test.sh",
        "sh test.sh",
        "",
    );
    fixture.edit_job(&job, "[test]", PROTECT_TEST);
    let out = fixture.path("out.git");
    let ran = fixture.run(&job, &["--out", out.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.report()["attempts"][0]["protected_reverted"][0],
        "test.sh"
    );
    // The branch holds the fix and the base test, the tree the tests ran on.
    let refname = "refs/heads/factory/fix";
    assert_eq!(
        file_on(&out, refname, "greet.sh"),
        "echo \"Hello, kiln!\"\n"
    );
    assert_eq!(file_on(&out, refname, "test.sh"), HELLO_FILES[1].1);
}

#[test]
fn protect_on_the_generator_is_refused() {
    let fixture = Fixture::with_git(HELLO_FILES);
    let job = fixture.job("branch = \"factory/x\"\nprompt = \"p\"", "true", "true", "");
    fixture.edit_job(&job, "[generate]", "[generate]\nprotect = [\"tests/**\"]");
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("generate.protect"), "{}", ran.stderr);
}

#[test]
fn reviewer_request_changes_starts_a_new_attempt_with_its_comments() {
    require_busybox();
    let fixture = Fixture::with_files(&[]);
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/review/job.toml");
    let out = fixture.path("out.git");
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
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let report = ran.report();
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["passed"], true);
    assert_eq!(
        attempts[0]["review"]["verdict"]["verdict"],
        "request_changes"
    );
    assert_eq!(attempts[1]["review"]["verdict"]["verdict"], "approve");
    // Attempt 2 was given the reviewer's comment at its path and line.
    let input: serde_json::Value = serde_json::from_str(&ran.attempt_file(2, "job.json")).unwrap();
    let comment = &input["previous"]["review"]["comments"][0];
    assert_eq!(comment["path"], "greet.sh");
    assert_eq!(comment["line"], 2);
    assert_eq!(comment["message"], "remove the TODO");
    // The reviewer's approval reached the policies: every auto-merge condition holds.
    assert_eq!(
        report["gate"]["auto_merge"]["eligible"], true,
        "{}",
        report["gate"]
    );
    let greet = file_on(&out, "refs/heads/factory/hello-reviewed", "greet.sh");
    assert!(!greet.contains("TODO"), "{greet}");
}

/// A job on the greeting repository whose generator fixes greet.sh and whose reviewer runs
/// `review` (sh -c).
fn reviewed_job(fixture: &Fixture, review: &str) -> std::path::PathBuf {
    fixture.job(
        "branch = \"factory/reviewed\"\nprompt = \"greet kiln\"",
        "echo 'echo \"Hello, kiln!\"' > /kiln/workspace/greet.sh",
        "sh test.sh",
        &format!(
            "[review]\nimage = \"{}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", {review:?}]\n",
            common::BUSYBOX
        ),
    )
}

#[test]
fn the_reviewer_reads_its_input_and_cannot_write_the_tree() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    // Reports what it could do as its verdict's summary, and escalates.
    let review = r#"
        w=writable; touch /kiln/workspace/greet.sh 2>/dev/null || w=read-only
        p=$(grep -c '"verdict_path": "/kiln/out/verdict.json"' "$KILN_JOB_INPUT")
        d=$(grep -c 'Hello, kiln' /kiln/review.json)
        printf '{"verdict":"escalate","summary":"%s %s %s"}' "$w" "$p" "$d" > /kiln/out/verdict.json"#;
    let job = reviewed_job(&fixture, review);
    let out = fixture.path("out.git");
    let ran = fixture.run(&job, &["--out", out.to_str().unwrap()]);
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    let report = ran.report();
    assert_eq!(report["status"], "review_escalated");
    let verdict = &report["attempts"][0]["review"]["verdict"];
    assert_eq!(verdict["verdict"], "escalate");
    assert_eq!(verdict["summary"], "read-only 1 1", "{verdict}");
    assert!(!out.exists(), "nothing was published");
}

#[test]
fn missing_malformed_linked_or_failing_verdicts_escalate() {
    require_busybox();
    for (review, why) in [
        ("true", "no kiln/verdict.json was written"),
        ("echo 'lgtm' > /kiln/out/verdict.json", "malformed"),
        (
            "ln -s /etc/passwd /kiln/out/verdict.json",
            "not a regular file",
        ),
        (
            "echo '{\"verdict\":\"approve\"}' > /kiln/out/verdict.json; exit 3",
            "exited with 3",
        ),
        (
            "head -c 70000 /dev/zero | tr '\\0' ' ' > /kiln/out/verdict.json",
            "over the 65536-byte limit",
        ),
    ] {
        let fixture = Fixture::with_git(HELLO_FILES);
        let job = reviewed_job(&fixture, review);
        let ran = fixture.run(&job, &[]);
        assert_eq!(ran.code, 10, "{review}: {}", ran.stderr);
        let verdict = &ran.report()["attempts"][0]["review"]["verdict"];
        assert_eq!(verdict["verdict"], "escalate", "{review}");
        let invalid = verdict["invalid"].as_str().unwrap_or_default();
        assert!(invalid.contains(why), "{review}: {invalid}");
    }
}

#[test]
fn without_a_reviewer_the_reviewer_approval_condition_fails() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let job = fixture.job(
        "branch = \"factory/unreviewed\"\nprompt = \"greet kiln\"",
        "echo 'echo \"Hello, kiln!\"' > /kiln/workspace/greet.sh",
        "sh test.sh",
        "",
    );
    let bundle = default_bundle();
    let ran = fixture.run(&job, &["--policies", bundle.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let auto_merge = &ran.report()["gate"]["auto_merge"];
    assert_eq!(auto_merge["eligible"], false);
    assert_eq!(auto_merge["failed_conditions"][0], "reviewer_approval");
}
