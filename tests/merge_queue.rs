//! The merge queue against real bare remotes in temp folders: independent and conflicting jobs,
//! a target another writer moves (compare-and-swap), and the refs kiln refuses to write.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BUSYBOX, Fixture, Ran, kiln, require_busybox};
use kiln::config::Config;
use kiln::publish::merge::{Landed, Merged, fetch_tip, land, merge_onto};
use kiln::publish::{Destination, PublishError, guard};
use serde_json::Value;

/// A repository whose tests pass while `a.txt` exists, with `main` at the base.
const FILES: &[(&str, &str)] = &[("a.txt", "a\n"), ("b.txt", "b\n")];

/// A bare clone of the fixture's repository: the remote the merge queue lands on.
fn remote(fixture: &Fixture) -> PathBuf {
    let out = fixture.path("remote.git");
    let source = fixture.path("repo");
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&format!("file://{}", source.display()), &out)
        .unwrap();
    out
}

/// A bundle that lets a change merge by itself when its tests pass and nothing escalates.
fn auto_merge_bundle(fixture: &Fixture) -> PathBuf {
    let size = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies/target/wasm32-unknown-unknown/release/size.wasm");
    let pin = kiln::policy::sha256_hex(&std::fs::read(&size).expect("the policies are built"));
    let path = fixture.path("bundle.toml");
    std::fs::write(
        &path,
        format!(
            "auto_merge_allowed = true\nauto_merge_conditions = [\"all_tests_pass\", \"no_escalation_patterns\"]\n\n\
             [[policy]]\nname = \"size\"\nmodule = {:?}\nsha256 = \"{pin}\"\n",
            size.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// A job file `name` whose generator runs `script` and whose change merges into `main`.
fn merging_job(fixture: &Fixture, name: &str, script: &str, extra: &str) -> PathBuf {
    let path = fixture.path(&format!("{name}.toml"));
    let text = format!(
        "repo = \"repo\"\nbranch = \"factory/{name}\"\nprompt = \"{name}\"\n\n\
         [generate]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", {script:?}]\n\n\
         [test]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", \"test -f a.txt && sleep 1\"]\n\n\
         [merge]\ntarget = \"main\"\n\n{extra}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run(fixture: &Fixture, job: &Path, out: &Path, bundle: &Path, report: &str) -> Command {
    let mut cmd = kiln();
    cmd.arg("run")
        .arg(job)
        .arg("--out")
        .arg(out)
        .arg("--policies")
        .arg(bundle)
        .arg("--artifacts")
        .arg(fixture.artifacts_root())
        .arg("--report")
        .arg(fixture.path(report));
    cmd
}

fn report(fixture: &Fixture, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture.path(name)).unwrap()).unwrap()
}

fn file_on_main(repo: &Path, path: &str) -> String {
    common::file_on(repo, "refs/heads/main", path)
}

/// The `/kiln/job.json` attempt `n` of the job `report` describes was given.
fn attempt_input(report: &Value, n: u32) -> Value {
    let artifacts = PathBuf::from(report["artifacts"].as_str().unwrap());
    let path = artifacts.join(format!("attempt-{n}/job.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn two_independent_jobs_both_land_the_second_retested_on_the_first() {
    require_busybox();
    let fixture = Fixture::with_git(FILES);
    let out = remote(&fixture);
    let bundle = auto_merge_bundle(&fixture);
    let one = merging_job(&fixture, "one", "echo one >> /kiln/workspace/a.txt", "");
    let two = merging_job(&fixture, "two", "echo two >> /kiln/workspace/b.txt", "");
    let mut first = run(&fixture, &one, &out, &bundle, "one.json")
        .spawn()
        .unwrap();
    let mut second = run(&fixture, &two, &out, &bundle, "two.json")
        .spawn()
        .unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(second.wait().unwrap().code(), Some(0));
    let (one, two) = (report(&fixture, "one.json"), report(&fixture, "two.json"));
    let base = one["job"]["base_commit"].as_str().unwrap().to_string();
    let landed = |r: &Value| r["commit"]["merged"].clone();
    // One landed on the base; the other was merged onto the first's landing and re-tested there.
    let (early, late) = if landed(&one)["onto"] == base.as_str() {
        (landed(&one), landed(&two))
    } else {
        (landed(&two), landed(&one))
    };
    assert_eq!(early["onto"], base.as_str());
    assert_eq!(late["onto"], early["commit"]);
    let repo = git2::Repository::open(&out).unwrap();
    let main = repo
        .find_reference("refs/heads/main")
        .unwrap()
        .target()
        .unwrap();
    assert_eq!(main.to_string(), late["commit"].as_str().unwrap());
    assert_eq!(file_on_main(&out, "a.txt"), "a\none\n");
    assert_eq!(file_on_main(&out, "b.txt"), "b\ntwo\n");
    for branch in ["refs/heads/factory/one", "refs/heads/factory/two"] {
        assert!(repo.find_reference(branch).is_ok(), "{branch} is published");
    }
}

#[test]
fn a_conflicting_job_gets_a_new_attempt_on_the_new_tip() {
    require_busybox();
    let fixture = Fixture::with_git(FILES);
    let out = remote(&fixture);
    let bundle = auto_merge_bundle(&fixture);
    let one = merging_job(&fixture, "one", "echo one > /kiln/workspace/a.txt", "");
    // Rewrites a.txt, which conflicts with job one; told of the conflict, appends instead.
    let script = "cd /kiln/workspace; if grep -q '\"conflicts\"' \"$KILN_JOB_INPUT\"; then echo two >> a.txt; else echo two > a.txt; fi";
    let two = merging_job(&fixture, "two", script, "");
    assert_eq!(
        run(&fixture, &one, &out, &bundle, "one.json")
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    let ran = run(&fixture, &two, &out, &bundle, "two.json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(0), "{stderr}");
    let two = report(&fixture, "two.json");
    assert_eq!(two["attempts"].as_array().unwrap().len(), 2);
    let one = report(&fixture, "one.json");
    let tip = one["commit"]["merged"]["commit"].as_str().unwrap();
    let input = attempt_input(&two, 2);
    assert_eq!(input["previous"]["merge"]["conflicts"][0], "a.txt");
    assert_eq!(input["previous"]["merge"]["tip"], tip);
    assert!(
        stderr.contains("attempt 2 starts again on main"),
        "{stderr}"
    );
    assert_eq!(file_on_main(&out, "a.txt"), "one\ntwo\n");
}

#[test]
fn a_conflict_with_no_attempts_left_escalates_and_approval_retries_the_merge() {
    require_busybox();
    let fixture = Fixture::with_git(FILES);
    let out = remote(&fixture);
    let bundle = auto_merge_bundle(&fixture);
    let one = merging_job(&fixture, "one", "echo one > /kiln/workspace/a.txt", "");
    let two = merging_job(
        &fixture,
        "two",
        "echo two > /kiln/workspace/a.txt",
        "[retry]\nmax_attempts = 1",
    );
    assert_eq!(
        run(&fixture, &one, &out, &bundle, "one.json")
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    let ran = run(&fixture, &two, &out, &bundle, "two.json")
        .output()
        .unwrap();
    assert_eq!(
        ran.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let two = report(&fixture, "two.json");
    assert_eq!(two["status"], "merge_escalated");
    let id = two["job"]["id"].as_str().unwrap();
    let git = git2::Repository::open(&out).unwrap();
    assert!(
        git.find_reference("refs/heads/factory/two").is_err(),
        "nothing published"
    );
    // A human approves: the branch is published; the merge still conflicts, so main keeps job one's.
    let approve = kiln()
        .args(["approve", id, "--by", "alice", "--artifacts"])
        .arg(fixture.artifacts_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&approve.stderr);
    assert_eq!(approve.status.code(), Some(12), "{stderr}");
    assert!(
        stderr.contains("not merged: it conflicts with main on a.txt"),
        "{stderr}"
    );
    assert!(git.find_reference("refs/heads/factory/two").is_ok());
    assert_eq!(file_on_main(&out, "a.txt"), "one\n");
}

#[test]
fn an_approved_change_is_merged_by_the_queue() {
    require_busybox();
    let fixture = Fixture::with_git(FILES);
    let out = remote(&fixture);
    // The default bundle wants a reviewer's approval; without one, merging waits for a human.
    let bundle = common::default_bundle();
    let job = merging_job(&fixture, "one", "echo one >> /kiln/workspace/a.txt", "");
    let ran = run(&fixture, &job, &out, &bundle, "one.json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(13), "{stderr}");
    assert!(
        stderr.contains(
            "merging into main needs a human: auto-merge conditions not met: reviewer_approval"
        ),
        "{stderr}"
    );
    assert_eq!(file_on_main(&out, "a.txt"), "a\n");
    let id = report(&fixture, "one.json")["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Under an operator config tightened since the job ran, the re-test the record asks for is
    // refused before anything is published or decided.
    let tight = fixture.path("tight.toml");
    std::fs::write(&tight, "[limits]\nmemory = \"64MiB\"\n").unwrap();
    let refused = kiln()
        .arg("--config")
        .arg(&tight)
        .args(["approve", &id, "--by", "mallory", "--artifacts"])
        .arg(fixture.artifacts_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("limits.memory") && stderr.contains("64MiB"),
        "{stderr}"
    );
    assert_eq!(file_on_main(&out, "a.txt"), "a\n");
    let approve = kiln()
        .args(["approve", &id, "--by", "alice", "--artifacts"])
        .arg(fixture.artifacts_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&approve.stderr);
    assert_eq!(approve.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("merged into main"), "{stderr}");
    assert_eq!(file_on_main(&out, "a.txt"), "a\none\n");
}

#[test]
fn a_target_moved_by_another_writer_is_never_overwritten() {
    let fixture = Fixture::with_git(FILES);
    let out = remote(&fixture);
    let dest = Destination::Local(out.clone());
    let config = Config::default();
    // kiln's private repository, with a change on top of the base.
    let private = fixture.path("private.git");
    let repo = git2::Repository::init_bare(&private).unwrap();
    let sig = git2::Signature::now("t", "t@localhost").unwrap();
    let base = fetch_tip(&private, "main", &dest, &config).unwrap();
    let change = commit_with(&repo, base, "b.txt", "b\nkiln\n", &sig);
    let Merged::Clean { tip, commit, .. } =
        merge_onto(&private, change, base, &config.commit, "merge").unwrap()
    else {
        panic!("a clean merge")
    };
    // While the merged tree is being tested, someone else moves main.
    let remote_repo = git2::Repository::open(&out).unwrap();
    let theirs = commit_with(&remote_repo, base, "a.txt", "a\nthem\n", &sig);
    remote_repo
        .reference("refs/heads/main", theirs, true, "another writer")
        .unwrap();
    assert_eq!(
        land(&private, commit, tip, "main", &dest, &config).unwrap(),
        Landed::Moved
    );
    assert_eq!(
        remote_repo.refname_to_id("refs/heads/main").unwrap(),
        theirs,
        "not overwritten"
    );
    // The next round merges onto their commit and lands on it.
    let tip = fetch_tip(&private, "main", &dest, &config).unwrap();
    assert_eq!(tip, theirs);
    let Merged::Clean { commit, .. } =
        merge_onto(&private, change, tip, &config.commit, "merge").unwrap()
    else {
        panic!("a clean merge")
    };
    assert_eq!(
        land(&private, commit, tip, "main", &dest, &config).unwrap(),
        Landed::Updated
    );
    let main = remote_repo
        .find_reference("refs/heads/main")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    assert_eq!(main.parent_ids().collect::<Vec<_>>(), [theirs, change]);
}

fn commit_with(
    repo: &git2::Repository,
    parent: git2::Oid,
    path: &str,
    text: &str,
    sig: &git2::Signature,
) -> git2::Oid {
    let parent = repo.find_commit(parent).unwrap();
    let blob = repo.blob(text.as_bytes()).unwrap();
    let mut tree = repo.treebuilder(Some(&parent.tree().unwrap())).unwrap();
    tree.insert(path, blob, 0o100644).unwrap();
    let tree = repo.find_tree(tree.write().unwrap()).unwrap();
    repo.commit(None, sig, sig, "change", &tree, &[&parent])
        .unwrap()
}

#[test]
fn kiln_writes_no_ref_but_the_work_branch_and_listed_targets() {
    let config = Config::default();
    for refname in [
        "refs/heads/main",
        "main",
        "refs/heads/factory/../main",
        "refs/tags/v1",
    ] {
        assert!(
            matches!(
                guard(refname, &config, false),
                Err(PublishError::Refused { .. })
            ),
            "{refname}"
        );
    }
    let fixture = Fixture::with_git(FILES);
    let job = merging_job(&fixture, "x", "true", "");
    fixture.edit_job(&job, "target = \"main\"", "target = \"production\"");
    let ran: Ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("merge_targets"), "{}", ran.stderr);
}

#[test]
fn a_remote_url_gets_the_branch_by_push_and_the_target_by_fast_forward_only() {
    let fixture = Fixture::with_git(FILES);
    let out = remote(&fixture);
    // A URL goes through git2's push, as an https or ssh remote would (file:// needs no credentials).
    let dest = Destination::Url(format!("file://{}", out.display()));
    let config = Config::default();
    let private = fixture.path("private.git");
    let repo = git2::Repository::init_bare(&private).unwrap();
    let sig = git2::Signature::now("t", "t@localhost").unwrap();
    let base = fetch_tip(&private, "main", &dest, &config).unwrap();
    let change = commit_with(&repo, base, "b.txt", "b\nkiln\n", &sig);
    let branch = kiln::job::BranchName::parse("factory/remote", "factory/", &[]).unwrap();
    kiln::publish::publish_branch(&private, change, &branch, &dest, &config).unwrap();
    let remote_repo = git2::Repository::open(&out).unwrap();
    assert_eq!(
        remote_repo
            .refname_to_id("refs/heads/factory/remote")
            .unwrap(),
        change
    );
    // Once there, the branch is never overwritten.
    let again = kiln::publish::publish_branch(&private, base, &branch, &dest, &config);
    assert!(
        matches!(again, Err(PublishError::Exists { .. })),
        "{again:?}"
    );
    // A target another writer moved is refused as a non-fast-forward, then landed on its new tip.
    let theirs = commit_with(&remote_repo, base, "a.txt", "a\nthem\n", &sig);
    remote_repo
        .reference("refs/heads/main", theirs, true, "another writer")
        .unwrap();
    assert_eq!(
        land(&private, change, base, "main", &dest, &config).unwrap(),
        Landed::Moved
    );
    assert_eq!(
        remote_repo.refname_to_id("refs/heads/main").unwrap(),
        theirs
    );
    let tip = fetch_tip(&private, "main", &dest, &config).unwrap();
    let Merged::Clean { commit, .. } =
        merge_onto(&private, change, tip, &config.commit, "merge").unwrap()
    else {
        panic!("a clean merge")
    };
    assert_eq!(
        land(&private, commit, tip, "main", &dest, &config).unwrap(),
        Landed::Updated
    );
    assert_eq!(
        remote_repo.refname_to_id("refs/heads/main").unwrap(),
        commit
    );
}

#[test]
fn a_merge_whose_tests_fail_gives_a_new_attempt_with_the_test_output() {
    require_busybox();
    let fixture = Fixture::with_git(&[("a.txt", "1\n2\n3\n4\n5\n")]);
    let out = remote(&fixture);
    let bundle = auto_merge_bundle(&fixture);
    // Each change alone keeps a.txt within six lines; both together do not.
    let limit = "test \"$(wc -l < a.txt)\" -le 6 || { echo \"a.txt is too long\"; exit 1; }";
    let one = merging_job(&fixture, "one", "echo one >> /kiln/workspace/a.txt", "");
    let script = "cd /kiln/workspace; if grep -q '\"merge\"' \"$KILN_JOB_INPUT\"; then sed -i 's/^3$/two/' a.txt; else sed -i '1i two' a.txt; fi";
    let two = merging_job(&fixture, "two", script, "");
    for job in [&one, &two] {
        // The test command sits in a TOML string: escape its quotes.
        fixture.edit_job(job, "test -f a.txt && sleep 1", &limit.replace('"', "\\\""));
    }
    assert_eq!(
        run(&fixture, &one, &out, &bundle, "one.json")
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    let ran = run(&fixture, &two, &out, &bundle, "two.json")
        .output()
        .unwrap();
    assert_eq!(
        ran.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let two = report(&fixture, "two.json");
    assert_eq!(two["attempts"].as_array().unwrap().len(), 2);
    let input = attempt_input(&two, 2);
    let merge = &input["previous"]["merge"];
    assert_eq!(merge["conflicts"].as_array().unwrap().len(), 0);
    assert_eq!(merge["test_exit_code"], 1);
    assert!(
        merge["test_output_tail"]
            .as_str()
            .unwrap()
            .contains("a.txt is too long"),
        "{merge}"
    );
    assert_eq!(file_on_main(&out, "a.txt"), "1\n2\ntwo\n4\n5\none\n");
}
