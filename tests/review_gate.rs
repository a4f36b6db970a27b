//! The review gate and what follows it: test protection, the reviewer, escalation, publishing
//! and the merge queue, against the real binary, real Docker and real git repositories.

mod common;

use std::path::Path;

use common::{Fixture, HELLO_FILES, require_busybox};

/// The blob at `path` on `refname` of the repository at `repo`.
fn file_on(repo: &Path, refname: &str, path: &str) -> String {
    let repo = git2::Repository::open(repo).unwrap();
    let tree = repo
        .find_reference(refname)
        .unwrap()
        .peel_to_tree()
        .unwrap();
    let blob = tree
        .get_path(Path::new(path))
        .unwrap()
        .to_object(&repo)
        .unwrap();
    String::from_utf8_lossy(blob.as_blob().unwrap().content()).into_owned()
}

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
