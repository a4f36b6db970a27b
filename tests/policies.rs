//! The policy gate through the real binary: standard policies on their fixture cases, the
//! default bundle on the seed article's cases, pins, reproducible builds, SARIF, and a new policy
//! made from the template.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::kiln;

const STANDARD: [&str; 5] = [
    "escalation-patterns",
    "protected-paths",
    "test-integrity",
    "secrets",
    "size",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the standard policies (quick when up to date) and returns the module of `name`.
fn module(name: &str) -> PathBuf {
    let out = kiln()
        .args(["policy", "build"])
        .arg(root().join("policies"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln policy build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    root()
        .join("policies/target/wasm32-unknown-unknown/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn eval(bundle: &Path, patch: &str, extra: &[&str]) -> Output {
    module("size");
    let patch = root().join("policies").join(patch);
    kiln()
        .args(["policy", "eval", "--bundle"])
        .arg(bundle)
        .arg("--diff")
        .arg(patch)
        .args(extra)
        .output()
        .unwrap()
}

fn default_bundle() -> PathBuf {
    root().join("policies/bundles/default.toml")
}

#[test]
fn every_standard_policy_passes_its_cases() {
    for name in STANDARD {
        let out = kiln()
            .args(["policy", "test"])
            .arg(root().join("policies").join(name))
            .arg("--module")
            .arg(module(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}:\n{}", text(&out));
        assert!(
            text(&out).contains(" passed, 0 failed"),
            "{name}:\n{}",
            text(&out)
        );
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cases")).unwrap();
    std::fs::copy(
        root().join("policies/escalation-patterns/cases/auth.patch"),
        dir.path().join("cases/auth.patch"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cases/wrong.json"),
        r#"{"diff": "auth.patch", "expect": {"decision": "allow", "findings": [{"rule": "content_match"}]}}"#,
    )
    .unwrap();
    let out = kiln()
        .args(["policy", "test"])
        .arg(dir.path())
        .arg("--module")
        .arg(module("escalation-patterns"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("FAIL wrong"), "{report}");
    assert!(
        report.contains("decision: expected allow, got escalate"),
        "{report}"
    );
    assert!(
        report.contains("- expected finding not found: rule content_match"),
        "{report}"
    );
    assert!(
        report.contains("+ unexpected finding: rule path_match"),
        "{report}"
    );
    assert!(report.contains("0 passed, 1 failed"), "{report}");
}

#[test]
fn the_default_bundle_judges_the_seed_article_cases() {
    let bundle = default_bundle();
    for (patch, code, decision) in [
        ("escalation-patterns/cases/auth.patch", 10, "escalate"),
        ("escalation-patterns/cases/migration.patch", 10, "escalate"),
        ("escalation-patterns/cases/env.patch", 10, "escalate"),
        ("escalation-patterns/cases/clean.patch", 0, "allow"),
        ("secrets/cases/leak.patch", 11, "deny"),
        ("test-integrity/cases/weakened.patch", 10, "escalate"),
    ] {
        let out = eval(&bundle, patch, &["--format", "json"]);
        assert_eq!(out.status.code(), Some(code), "{patch}:\n{}", text(&out));
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["decision"], decision, "{patch}");
        assert_eq!(result["policies"].as_array().unwrap().len(), 5);
        // No tests ran and no reviewer approved: auto-merge says which conditions failed.
        assert_eq!(result["auto_merge"]["eligible"], false);
        let failed = result["auto_merge"]["failed_conditions"].to_string();
        assert!(
            failed.contains("all_tests_pass") && failed.contains("reviewer_approval"),
            "{failed}"
        );
        if decision == "escalate" {
            assert_eq!(result["escalation"]["channel"], "#factory-reviews");
            assert!(failed.contains("no_escalation_patterns"), "{failed}");
        }
    }
}

#[test]
fn sarif_puts_findings_at_file_and_line() {
    let out = eval(
        &default_bundle(),
        "escalation-patterns/cases/migration.patch",
        &["--format", "sarif"],
    );
    assert_eq!(out.status.code(), Some(10));
    let sarif: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    let content = results
        .iter()
        .find(|r| r["ruleId"] == "escalation-patterns/content_match")
        .expect("content finding");
    let location = &content["locations"][0]["physicalLocation"];
    assert_eq!(
        location["artifactLocation"]["uri"],
        "db/migrations/002_drop_sessions.sql"
    );
    assert_eq!(location["region"]["startLine"], 2);
    assert_eq!(content["level"], "warning");
    let rules = sarif["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["id"] == "escalation-patterns/path_match")
    );
}

#[test]
fn a_tampered_module_under_a_pin_exits_2_with_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(module("size")).unwrap();
    let pinned = kiln::policy::sha256_hex(&bytes);
    bytes.extend_from_slice(&[0, 4, b'e', b'v', b'i', b'l', 0]);
    std::fs::write(dir.path().join("size.wasm"), &bytes).unwrap();
    let bundle = dir.path().join("bundle.toml");
    std::fs::write(
        &bundle,
        format!("[[policy]]\nname = \"size\"\nmodule = \"size.wasm\"\nsha256 = \"{pinned}\"\n"),
    )
    .unwrap();
    let out = eval(&bundle, "escalation-patterns/cases/clean.patch", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains(&pinned) && message.contains(&kiln::policy::sha256_hex(&bytes)),
        "{message}"
    );
    assert!(out.stdout.is_empty(), "a refused bundle printed a verdict");
}

#[test]
fn a_failing_module_in_a_bundle_denies() {
    let dir = tempfile::tempdir().unwrap();
    let looping = wat::parse_str(
        r#"(module (memory (export "memory") 1)
            (data (i32.const 64) "{\"name\":\"t\",\"version\":\"1\"}")
            (func (export "kiln_abi_version") (result i32) (i32.const 1))
            (func (export "kiln_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "kiln_evaluate") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))
            (func (export "kiln_metadata") (result i64) (i64.const 274877906970)))"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("loop.wasm"), &looping).unwrap();
    let bundle = dir.path().join("bundle.toml");
    let pin = kiln::policy::sha256_hex(&looping);
    std::fs::write(&bundle, format!("[[policy]]\nname = \"loop\"\nmodule = \"loop.wasm\"\nsha256 = \"{pin}\"\nfuel = 10000000\n")).unwrap();
    let out = eval(
        &bundle,
        "escalation-patterns/cases/clean.patch",
        &["--format", "json"],
    );
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["policies"][0]["findings"][0]["rule"],
        "kiln.policy-failure"
    );
    assert!(
        result["policies"][0]["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ran out of fuel")
    );
}

#[test]
fn eval_reads_a_repository_between_two_revisions() {
    let fixture = common::Fixture::with_git(&[("src/app.rs", "fn main() {}\n")]);
    let repo = git2::Repository::open(fixture.path("repo")).unwrap();
    std::fs::create_dir_all(fixture.path("repo/src/payments")).unwrap();
    std::fs::write(
        fixture.path("repo/src/payments/charge.rs"),
        "pub fn charge() {}\n",
    )
    .unwrap();
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@localhost").unwrap();
    let parent = repo.head().unwrap().peel_to_commit().unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "payments", &tree, &[&parent])
        .unwrap();
    module("size");
    let out = kiln()
        .args(["policy", "eval", "--bundle"])
        .arg(default_bundle())
        .arg("--repo")
        .arg(fixture.path("repo"))
        .args(["--base", "v1", "--head", "main"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    assert!(
        text(&out).contains("src/payments/charge.rs"),
        "{}",
        text(&out)
    );
}

#[test]
fn standard_builds_are_reproducible_and_match_the_default_pins() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("policies");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(root().join("policies"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(copy.join("target")).ok();
    let out = kiln()
        .args(["policy", "build"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let bundle = std::fs::read_to_string(default_bundle()).unwrap();
    for name in STANDARD {
        let rebuilt = kiln::policy::sha256_hex(
            &std::fs::read(copy.join(format!(
                "target/wasm32-unknown-unknown/release/{}.wasm",
                name.replace('-', "_")
            )))
            .unwrap(),
        );
        let here = kiln::policy::sha256_hex(&std::fs::read(module(name)).unwrap());
        assert_eq!(rebuilt, here, "{name} built twice gave two modules");
        assert!(
            bundle.contains(&here),
            "the default bundle's pin for {name} is stale: rebuild and pin {here}"
        );
    }
}

#[test]
fn inspect_shows_metadata_exports_and_the_pin() {
    let out = kiln()
        .args(["policy", "inspect", "--json"])
        .arg(module("secrets"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["name"], "secrets");
    assert_eq!(
        info["abi_version"], 2,
        "the SDK's policies read the binary input"
    );
    assert_eq!(info["imports"], serde_json::json!([]));
    for export in [
        "memory",
        "kiln_abi_version",
        "kiln_alloc",
        "kiln_evaluate",
        "kiln_metadata",
    ] {
        assert!(
            info["exports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == export),
            "{export}"
        );
    }
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), b"\0asm\x01\0\0\0").unwrap();
    let out = kiln()
        .args(["policy", "inspect"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not a kiln policy"), "{}", text(&out));
}

#[test]
fn a_new_policy_from_the_template_builds_and_passes_its_cases() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln()
        .args(["policy", "new", "no-todos", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let made = dir.path().join("no-todos");
    let out = kiln().args(["policy", "test"]).arg(&made).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 passed, 0 failed"), "{}", text(&out));
    // A real Rust panic aborts, traps, and fails every case closed, with the policy's log shown.
    let lib = made.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap().replace(
        "    let mut output = Output::new(Decision::Allow);",
        "    kiln_policy_sdk::log(\"about to panic\");\n    panic!(\"boom\");\n    #[allow(unreachable_code)]\n    let mut output = Output::new(Decision::Allow);",
    );
    std::fs::write(&lib, source).unwrap();
    let out = kiln().args(["policy", "test"]).arg(&made).output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", text(&out));
    let report = text(&out);
    assert!(
        report.contains("the policy failed: module trapped"),
        "{report}"
    );
    assert!(report.contains("log: about to panic"), "{report}");
    assert!(report.contains("0 passed, 2 failed"), "{report}");
    let again = kiln()
        .args(["policy", "new", "no-todos", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let bad = kiln()
        .args(["policy", "new", "Bad Name", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// Runs a one-attempt job whose generator runs `script`, judged by `bundle`.
fn run_gated(script: &str, bundle: &Path) -> (common::Fixture, common::Ran) {
    common::require_busybox();
    module("size");
    let fixture = common::Fixture::with_files(&[
        ("README", "gated\n"),
        ("src/auth/login.sh", "echo login\n"),
    ]);
    let job = fixture.job(
        "branch = \"factory/gated\"\nprompt = \"p\"",
        script,
        "true",
        "[retry]\nmax_attempts = 1",
    );
    let sarif = fixture.path("gate.sarif");
    let out = fixture.path("out.git");
    let ran = fixture.run(
        &job,
        &[
            "--policies",
            bundle.to_str().unwrap(),
            "--sarif",
            sarif.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    (fixture, ran)
}

fn published(fixture: &common::Fixture) -> bool {
    git2::Repository::open(fixture.path("out.git"))
        .is_ok_and(|r| r.find_reference("refs/heads/factory/gated").is_ok())
}

#[test]
fn run_with_policies_publishes_only_what_the_gate_allows() {
    let (fixture, ran) = run_gated("echo more >> README", &default_bundle());
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.report()["gate"]["decision"], "allow");
    assert!(published(&fixture));
    let sarif: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.path("gate.sarif")).unwrap()).unwrap();
    assert_eq!(sarif["runs"][0]["results"], serde_json::json!([]));
    assert!(ran.artifacts.as_ref().unwrap().join("gate.json").is_file());

    let (fixture, ran) = run_gated("echo 'echo bypass' >> src/auth/login.sh", &default_bundle());
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    assert_eq!(ran.report()["status"], "policy_escalated");
    assert!(ran.report()["commit"].is_null());
    assert!(!published(&fixture), "an escalated change was published");
    let sarif: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.path("gate.sarif")).unwrap()).unwrap();
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "escalation-patterns/path_match");
    assert_eq!(
        result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "src/auth/login.sh"
    );

    let (fixture, ran) = run_gated(
        "echo 'TOKEN = \"ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\"' > creds.py",
        &default_bundle(),
    );
    assert_eq!(ran.code, 11, "{}", ran.stderr);
    assert_eq!(ran.report()["status"], "policy_denied");
    assert!(!published(&fixture));
}

#[test]
fn run_with_a_review_decision_awaits_review_with_exit_13() {
    let dir = tempfile::tempdir().unwrap();
    let size = module("size");
    let pin = kiln::policy::sha256_hex(&std::fs::read(&size).unwrap());
    let bundle = dir.path().join("review.toml");
    std::fs::write(&bundle, format!("[[policy]]\nname = \"size\"\nmodule = {:?}\nsha256 = \"{pin}\"\n[policy.config]\nmax_files = 0\n", size.display().to_string())).unwrap();
    let (fixture, ran) = run_gated("echo more >> README", &bundle);
    assert_eq!(ran.code, 13, "{}", ran.stderr);
    assert_eq!(ran.report()["status"], "awaiting_review");
    assert!(!published(&fixture));
}

#[test]
fn run_refuses_a_bundle_with_a_bad_pin_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bad.toml");
    let module = module("size");
    std::fs::write(
        &bundle,
        format!(
            "[[policy]]\nname = \"size\"\nmodule = {:?}\nsha256 = \"{}\"\n",
            module.display().to_string(),
            "0".repeat(64)
        ),
    )
    .unwrap();
    let fixture = common::Fixture::with_files(&[("README", "x\n")]);
    let job = fixture.job(
        "branch = \"factory/pin\"\nprompt = \"p\"",
        "true",
        "true",
        "",
    );
    let ran = fixture.run(&job, &["--policies", bundle.to_str().unwrap()]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("does not match its pin"),
        "{}",
        ran.stderr
    );
    assert!(!fixture.artifacts_root().exists());
}

/// A bundle in `dir` holding `wat` as the module of policy `name`, with `extra` lines in its
/// `[[policy]]` table.
fn hostile_bundle(dir: &Path, name: &str, wat: &str, extra: &str) -> PathBuf {
    let bytes = wat::parse_str(wat).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), &bytes).unwrap();
    let pin = kiln::policy::sha256_hex(&bytes);
    let bundle = dir.join("bundle.toml");
    std::fs::write(
        &bundle,
        format!(
            "[[policy]]\nname = \"{name}\"\nmodule = \"{name}.wasm\"\nsha256 = \"{pin}\"\n{extra}\n"
        ),
    )
    .unwrap();
    bundle
}

/// Good metadata for [`allowing`]: the JSON at 64, 26 bytes long.
const METADATA: &str = "(i64.const 274877906970)";

/// A module whose evaluation allows, with `metadata` as its `kiln_metadata` body.
fn allowing(metadata: &str) -> String {
    format!(
        r#"(module (memory (export "memory") 1)
            (data (i32.const 0) "{{\"decision\":\"allow\",\"findings\":[]}}")
            (data (i32.const 64) "{{\"name\":\"t\",\"version\":\"1\"}}")
            (func (export "kiln_abi_version") (result i32) (i32.const 1))
            (func (export "kiln_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "kiln_evaluate") (param i32 i32) (result i64) (i64.const 34))
            (func (export "kiln_metadata") (result i64) {metadata}))"#
    )
}

#[test]
fn a_module_whose_metadata_fails_is_denied_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let fine = hostile_bundle(dir.path(), "meta", &allowing(METADATA), "");
    let out = eval(&fine, "escalation-patterns/cases/clean.patch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (what, metadata) in [
        ("traps", "(unreachable)"),
        ("answers nothing", "(i64.const 0)"),
        ("loops", "(loop $l (br $l)) (i64.const 0)"),
    ] {
        let bundle = hostile_bundle(dir.path(), "meta", &allowing(metadata), "");
        let out = eval(
            &bundle,
            "escalation-patterns/cases/clean.patch",
            &["--format", "json"],
        );
        assert_eq!(out.status.code(), Some(11), "{what}: {}", text(&out));
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["policies"][0]["failed"], true, "{what}: {result}");
        let inspected = kiln()
            .args(["policy", "inspect"])
            .arg(dir.path().join("meta.wasm"))
            .output()
            .unwrap();
        assert!(!inspected.status.success(), "{what}: {}", text(&inspected));
    }
}

#[test]
fn a_failing_module_denies_in_warn_mode_too() {
    let dir = tempfile::tempdir().unwrap();
    // The module allows when it does not trap: in warn mode, only its trap can deny.
    let allows = hostile_bundle(dir.path(), "fine", &allowing(METADATA), "mode = \"warn\"");
    let out = eval(&allows, "escalation-patterns/cases/clean.patch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let trapping =
        allowing(METADATA).replace("(result i64) (i64.const 34)", "(result i64) (unreachable)");
    let bundle = hostile_bundle(dir.path(), "trap", &trapping, "mode = \"warn\"");
    let out = eval(&bundle, "escalation-patterns/cases/clean.patch", &[]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
}

#[test]
fn bundles_that_would_make_evaluation_unbounded_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let patch = "escalation-patterns/cases/clean.patch";
    // No policy: nothing would judge.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "auto_merge_allowed = false\n").unwrap();
    let out = eval(&empty, patch, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("names no policy"), "{}", text(&out));
    // More fuel than the operator's ceiling.
    let greedy = hostile_bundle(
        dir.path(),
        "greedy",
        &allowing(METADATA),
        "fuel = 18446744073709551615",
    );
    let out = eval(&greedy, patch, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("max_fuel"), "{}", text(&out));
    // A module that is not a regular file is refused before it is read: no endless read, no
    // wait on a FIFO.
    nix::unistd::mkfifo(&dir.path().join("fifo.wasm"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for module in ["/dev/zero", "fifo.wasm"] {
        let bundle = dir.path().join("special.toml");
        std::fs::write(
            &bundle,
            format!(
                "[[policy]]\nname = \"special\"\nmodule = \"{module}\"\nsha256 = \"{}\"\n",
                "0".repeat(64)
            ),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let out = eval(&bundle, patch, &[]);
        assert_eq!(out.status.code(), Some(2), "{module}: {}", text(&out));
        assert!(
            text(&out).contains("not a regular file"),
            "{module}: {}",
            text(&out)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
}

#[test]
fn a_change_larger_than_the_gate_reads_is_denied_whatever_the_policies_say() {
    let fixture = common::Fixture::with_git(&[("src/app.rs", "fn main() {}\n")]);
    let repo = git2::Repository::open(fixture.path("repo")).unwrap();
    // 100 KB of text: over a 64 KiB `max_diff`, under the default 4 MiB.
    std::fs::write(fixture.path("repo/data.txt"), "row\n".repeat(25_000)).unwrap();
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@localhost").unwrap();
    let parent = repo.head().unwrap().peel_to_commit().unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "data", &tree, &[&parent])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Memory for the whole input: this module allows whatever it reads.
    let roomy = allowing(METADATA).replace("\"memory\") 1)", "\"memory\") 32)");
    let allows = hostile_bundle(dir.path(), "fine", &roomy, "");
    let eval = |config: &str| {
        let cfg = dir.path().join("kiln.toml");
        std::fs::write(&cfg, config).unwrap();
        kiln()
            .arg("--config")
            .arg(&cfg)
            .args(["policy", "eval", "--format", "json", "--bundle"])
            .arg(&allows)
            .arg("--repo")
            .arg(fixture.path("repo"))
            .args(["--base", "v1", "--head", "main"])
            .output()
            .unwrap()
    };
    let out = eval("");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = eval("[policy]\nmax_diff = \"64KiB\"\n");
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kiln_own = &result["policies"][1];
    assert_eq!(kiln_own["name"], "kiln.diff-budget", "{result}");
    assert_eq!(kiln_own["decision"], "deny", "{result}");
    assert_eq!(kiln_own["findings"][0]["path"], "data.txt", "{result}");
    // The allowing module still gave its word; it just cannot outvote what it never saw.
    assert_eq!(result["policies"][0]["decision"], "allow", "{result}");
    let out = eval("[policy]\nmax_diff = \"1KiB\"\n");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("max_diff"), "{}", text(&out));
}

/// A module of ABI `version` that allows only when its input is framed as that version's
/// encoding says (`first` its first byte, `last` its last bytes: the config, `{}`), and denies
/// otherwise.
fn framed(version: i32, first: u8, last: &[u8]) -> Vec<u8> {
    let mut checks = format!("(i32.eq (i32.load8_u (local.get $p)) (i32.const {first}))");
    for (back, byte) in last.iter().rev().enumerate() {
        checks = format!(
            "(i32.and {checks} (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.sub (local.get $n) (i32.const {})))) (i32.const {byte})))",
            back + 1
        );
    }
    // allow: 34 bytes at 0; deny: 33 bytes at 128 (128 << 32 | 33).
    wat::parse_str(format!(
        r#"(module (memory (export "memory") 4)
            (data (i32.const 0) "{{\"decision\":\"allow\",\"findings\":[]}}")
            (data (i32.const 64) "{{\"name\":\"t\",\"version\":\"1\"}}")
            (data (i32.const 128) "{{\"decision\":\"deny\",\"findings\":[]}}")
            (func (export "kiln_abi_version") (result i32) (i32.const {version}))
            (func (export "kiln_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "kiln_evaluate") (param $p i32) (param $n i32) (result i64)
              (if (result i64) {checks} (then (i64.const 34)) (else (i64.const 549755813921))))
            (func (export "kiln_metadata") (result i64) (i64.const 274877906970)))"#
    ))
    .unwrap()
}

#[test]
fn each_module_gets_the_input_in_its_abi_version_s_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut bundle = String::new();
    // Version 1: a JSON object ending in its config; version 2: the abi varint first, and the
    // config's JSON text last, its length (2) before it.
    for (name, bytes) in [
        ("json", framed(1, b'{', b"{}}")),
        ("binary", framed(2, 2, b"\x02{}")),
    ] {
        std::fs::write(dir.path().join(format!("{name}.wasm")), &bytes).unwrap();
        let pin = kiln::policy::sha256_hex(&bytes);
        bundle.push_str(&format!(
            "[[policy]]\nname = \"{name}\"\nmodule = \"{name}.wasm\"\nsha256 = \"{pin}\"\n"
        ));
    }
    // The same framing checks, crossed, deny: they can fail.
    for (name, bytes) in [
        ("json-as-binary", framed(1, 2, b"\x02{}")),
        ("binary-as-json", framed(2, b'{', b"{}}")),
    ] {
        std::fs::write(dir.path().join(format!("{name}.wasm")), &bytes).unwrap();
        let pin = kiln::policy::sha256_hex(&bytes);
        bundle.push_str(&format!(
            "[[policy]]\nname = \"{name}\"\nmodule = \"{name}.wasm\"\nsha256 = \"{pin}\"\n"
        ));
    }
    std::fs::write(dir.path().join("bundle.toml"), bundle).unwrap();
    let out = eval(
        &dir.path().join("bundle.toml"),
        "escalation-patterns/cases/clean.patch",
        &["--format", "json"],
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decisions: Vec<(String, String)> = result["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("json".to_string(), "allow".to_string()),
            ("binary".into(), "allow".into()),
            ("json-as-binary".into(), "deny".into()),
            ("binary-as-json".into(), "deny".into()),
        ],
        "{}",
        text(&out)
    );
}
