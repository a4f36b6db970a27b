//! `kiln context` through the real binary, on repositories the test builds: the files a prompt
//! names, seeds first, tests beside what they test, the budget kept, and hostile trees read
//! without following links or reading what is too large.

mod common;

use std::path::Path;
use std::process::Output;

use common::kiln;
use serde_json::Value;

fn repo(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = folder(files);
    common::commit_folder(dir.path());
    dir
}

fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn context(repo: &Path, args: &[&str]) -> Output {
    kiln()
        .arg("context")
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_files_a_prompt_names_come_first_with_their_tests_and_why() {
    let dir = repo(&[
        (
            "shop/payments/refund.py",
            b"def refund(intent):\n    return gateway.refund(intent)\n",
        ),
        (
            "shop/payments/charge.py",
            b"def charge(intent):\n    return gateway.charge(intent)\n",
        ),
        (
            "tests/test_refund.py",
            b"from shop.payments.refund import refund\n",
        ),
        ("shop/catalog/items.py", b"ITEMS = []\n"),
        ("README.md", b"A shop.\n"),
    ]);
    let out = context(
        dir.path(),
        &[
            "--prompt",
            "Retry a refund when the gateway times out",
            "--format",
            "json",
        ],
    );
    let selection = json(&out);
    let files = selection["files"].as_array().unwrap();
    assert_eq!(files[0]["path"], "shop/payments/refund.py", "{selection}");
    assert_eq!(
        files[0]["why"][0], "names `refund`, `gateway` from the prompt",
        "{selection}"
    );
    let test = files
        .iter()
        .find(|f| f["path"] == "tests/test_refund.py")
        .unwrap_or_else(|| panic!("{selection}"));
    assert!(
        test["why"]
            .as_array()
            .unwrap()
            .contains(&Value::from("test of shop/payments/refund.py")),
        "{test}"
    );
    assert!(!files.iter().any(|f| f["path"] == "shop/catalog/items.py"));
    assert_eq!(selection["budget"], 64 << 10);
    let used: u64 = files.iter().map(|f| f["bytes"].as_u64().unwrap()).sum();
    assert_eq!(selection["used"], used);

    // A seed comes first; a budget too small for the rest keeps it alone.
    let out = context(
        dir.path(),
        &[
            "--prompt",
            "Retry a refund",
            "--seed",
            "shop/catalog/items.py",
            "--budget",
            "20",
            "--format",
            "json",
        ],
    );
    let selection = json(&out);
    let paths = paths_of(&selection);
    assert_eq!(paths, ["shop/catalog/items.py"]);

    // Text: one line per file, then the total against the budget.
    let out = context(dir.path(), &["--prompt", "refund"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shop/payments/refund.py"), "{text}");
    assert!(text.contains("of 64KiB budget"), "{text}");
}

#[test]
fn a_hostile_tree_is_read_without_following_links_or_reading_what_is_too_large() {
    let big = vec![b'r'; 2 << 20];
    let dir = folder(&[
        ("src/refund.py", b"def refund(): pass\n"),
        ("huge_refund.txt", &big),
        ("bad.py", b"def refund(): return '\xff\xfe'\n"),
    ]);
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("refund_link")).unwrap();
    common::commit_folder(dir.path());
    let out = context(dir.path(), &["--prompt", "refund", "--format", "json"]);
    let selection = json(&out);
    let files = selection["files"].as_array().unwrap();
    assert!(
        !files.iter().any(|f| f["path"] == "refund_link"),
        "{selection}"
    );
    assert!(files.iter().any(|f| f["path"] == "bad.py"), "{selection}");
    let notes = selection["notes"].to_string();
    assert!(
        notes.contains("huge_refund.txt") && notes.contains("indexed by its path only"),
        "{notes}"
    );
}

#[test]
fn bad_requests_exit_2_naming_what_is_wrong() {
    let dir = repo(&[("a.py", b"x = 1\n")]);
    for (args, says) in [
        (
            &["--prompt", "x", "--seed", "nope.py"][..],
            "seed `nope.py`",
        ),
        (
            &["--prompt", "x", "--base", "no-such-branch"][..],
            "`no-such-branch`",
        ),
        (&["--prompt", "x", "--budget", "0"][..], "--budget"),
        (&["--prompt", "x", "--budget", "lots"][..], "lots"),
    ] {
        let out = context(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let plain = tempfile::tempdir().unwrap();
    let out = context(plain.path(), &["--prompt", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read repository"));
}

/// The `why` of `path` in a selection, or a panic showing the selection.
/// The paths of a selection's files, in its order.
fn paths_of(selection: &Value) -> Vec<&str> {
    selection["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect()
}

fn why_of(selection: &Value, path: &str) -> Vec<String> {
    selection["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not selected: {selection:#}"))["why"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn imports_and_definitions_are_followed_in_each_language() {
    // Words of the prompt name none of the files reached: only the graph can find them.
    let dir = repo(&[
        // Python: a package, a relative import, a name defined elsewhere.
        ("app/views.py", b"from .billing import charge\nfrom app.models import Ledger\n\ndef checkout():\n    return charge(Ledger())\n"),
        ("app/billing.py", b"def charge(ledger):\n    return ledger\n"),
        ("app/models/__init__.py", b"class Ledger:\n    pass\n"),
        // TypeScript: a relative path without extension, an index file.
        ("web/page.ts", b"import { render } from './widgets';\nexport function page() { return render(); }\n"),
        ("web/widgets/index.ts", b"export function render() { return 1; }\n"),
        // Rust: `mod` and `use crate::`.
        ("core/src/lib.rs", b"mod engine;\nuse crate::engine::Turbine;\npub fn spin(t: Turbine) {}\n"),
        ("core/src/engine.rs", b"pub struct Turbine;\n"),
        // Go: a package of the module.
        ("go.mod", b"module example.com/plant\n\ngo 1.22\n"),
        ("cmd/main.go", b"package main\nimport \"example.com/plant/pump\"\nfunc main() { pump.Start() }\n"),
        ("pump/pump.go", b"package pump\nfunc Start() {}\n"),
        ("unrelated/noise.py", b"x = 1\n"),
    ]);
    let select = |seed: &str| {
        json(&context(
            dir.path(),
            &[
                "--prompt",
                "tidy things up",
                "--seed",
                seed,
                "--format",
                "json",
            ],
        ))
    };
    let python = select("app/views.py");
    assert!(why_of(&python, "app/billing.py").contains(&"imported by app/views.py".into()));
    assert!(why_of(&python, "app/models/__init__.py").contains(&"imported by app/views.py".into()));
    assert!(
        !python["files"].to_string().contains("unrelated/noise.py"),
        "{python:#}"
    );
    let ts = select("web/page.ts");
    assert!(why_of(&ts, "web/widgets/index.ts").contains(&"imported by web/page.ts".into()));
    let rust = select("core/src/lib.rs");
    assert!(why_of(&rust, "core/src/engine.rs").contains(&"imported by core/src/lib.rs".into()));
    let go = select("cmd/main.go");
    assert!(why_of(&go, "pump/pump.go").contains(&"imported by cmd/main.go".into()));
    // Back along an import: what imports a seed is about it too.
    let back = select("app/billing.py");
    assert!(why_of(&back, "app/views.py").contains(&"imports app/billing.py".into()));
}

/// Commits `files` (path, content) on top of `repo`'s head with `message`.
fn commit_more(repo: &git2::Repository, files: &[(&str, &str)], message: &str) {
    let root = repo.workdir().unwrap();
    let mut index = repo.index().unwrap();
    for (path, text) in files {
        std::fs::write(root.join(path), text).unwrap();
        index.add_path(Path::new(path)).unwrap();
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let parent = repo.head().unwrap().peel_to_commit().unwrap();
    let sig = git2::Signature::now("test", "test@localhost").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])
        .unwrap();
}

/// Deletes the loose object `id` of the repository at `root`, as a shallow or partial clone
/// would lack it.
fn lose_object(root: &Path, id: git2::Oid) {
    let id = id.to_string();
    let loose = root.join(".git/objects").join(&id[..2]).join(&id[2..]);
    std::fs::remove_file(loose).unwrap();
}

#[test]
fn files_the_history_changed_together_are_chosen_together_and_say_so() {
    // No import, no shared name: only the history ties the handler to its route table.
    let dir = folder(&[
        ("api/handlers.py", b"def refund(): pass\n"),
        ("api/routes.py", b"TABLE = []\n"),
        ("api/other.py", b"X = 1\n"),
        ("api/more.py", b"Y = 1\n"),
    ]);
    let (repo, _) = common::commit_folder(dir.path());
    for n in 0..3 {
        let handler = format!("def refund(): pass\ndef step{n}(): pass\n");
        let table = format!("TABLE = [{n}]\n");
        commit_more(
            &repo,
            &[("api/handlers.py", &handler), ("api/routes.py", &table)],
            "a new step",
        );
    }
    commit_more(&repo, &[("api/other.py", "X = 2\n")], "alone");
    let selection = json(&context(
        dir.path(),
        &[
            "--prompt",
            "tidy",
            "--seed",
            "api/handlers.py",
            "--budget",
            "60",
            "--format",
            "json",
        ],
    ));
    let paths = paths_of(&selection);
    assert_eq!(
        paths[..2],
        ["api/handlers.py", "api/routes.py"],
        "{selection:#}"
    );
    assert!(
        why_of(&selection, "api/routes.py")
            .contains(&"changed with api/handlers.py in 3 recent commits".into()),
        "{selection:#}"
    );
    // A tree given by its id has no history: the same seed finds nothing to tie it to.
    let tree = repo
        .head()
        .unwrap()
        .peel_to_tree()
        .unwrap()
        .id()
        .to_string();
    let bare = json(&context(
        dir.path(),
        &[
            "--prompt",
            "tidy",
            "--seed",
            "api/handlers.py",
            "--base",
            &tree,
            "--format",
            "json",
        ],
    ));
    assert!(!bare.to_string().contains("changed with"), "{bare:#}");

    // A history kiln cannot read (here the first commit's object is gone, as beyond a shallow
    // clone's depth) leaves the selection to the rest, noted.
    lose_object(dir.path(), repo.revparse_single("HEAD~4").unwrap().id());
    commit_more(&repo, &[("api/more.py", "Y = 2\n")], "after the loss");
    let cut = json(&context(
        dir.path(),
        &[
            "--prompt",
            "tidy",
            "--seed",
            "api/handlers.py",
            "--format",
            "json",
        ],
    ));
    assert_eq!(paths_of(&cut)[0], "api/handlers.py", "{cut:#}");
    assert!(!cut.to_string().contains("changed with"), "{cut:#}");
    assert!(
        cut["notes"]
            .to_string()
            .contains("the history cannot be read"),
        "{cut:#}"
    );

    // A file whose content is gone (as in a partial clone) is left out, noted; the rest answers.
    lose_object(
        dir.path(),
        repo.revparse_single("HEAD:api/more.py").unwrap().id(),
    );
    let partial = json(&context(
        dir.path(),
        &[
            "--prompt",
            "more",
            "--seed",
            "api/handlers.py",
            "--format",
            "json",
        ],
    ));
    assert_eq!(paths_of(&partial)[0], "api/handlers.py", "{partial:#}");
    assert!(!paths_of(&partial).contains(&"api/more.py"), "{partial:#}");
    assert!(
        partial["notes"].to_string().contains("api/more.py")
            && partial["notes"]
                .to_string()
                .contains("its content is not in the repository"),
        "{partial:#}"
    );
}

#[test]
fn go_files_of_one_package_and_typescript_path_aliases_are_linked() {
    let dir = repo(&[
        ("go.mod", b"module example.com/shop\n"),
        ("pay/pay.go", b"package pay\nfunc Charge() { audit() }\n"),
        ("pay/log.go", b"package pay\nfunc x() {}\n"),
        ("pay/pay_test.go", b"package pay\n"),
        ("ship/ship.go", b"package ship\nfunc Send() {}\n"),
        (
            "web/tsconfig.json",
            b"{\n  // aliases\n  \"compilerOptions\": {\"paths\": {\"@shop/*\": [\"./lib/*\"],},},\n}\n",
        ),
        ("web/pages/cart.ts", b"import { total } from '@shop/money';\nexport const c = total;\n"),
        ("web/lib/money.ts", b"export const total = 1;\n"),
        ("web/lib/other.ts", b"export const z = 1;\n"),
    ]);
    let select = |seed: &str| {
        json(&context(
            dir.path(),
            &["--prompt", "x", "--seed", seed, "--format", "json"],
        ))
    };
    let go = select("pay/pay.go");
    assert!(
        why_of(&go, "pay/log.go").contains(&"in the package of pay/pay.go".into()),
        "{go:#}"
    );
    let ts = select("web/pages/cart.ts");
    assert!(
        why_of(&ts, "web/lib/money.ts").contains(&"imported by web/pages/cart.ts".into()),
        "{ts:#}"
    );
}

#[test]
fn a_definition_is_found_through_a_reference_without_an_import() {
    let dir = repo(&[
        (
            "lib/routes.js",
            b"export function route(req) { return handleRefund(req); }\n",
        ),
        (
            "lib/handlers.js",
            b"function handleRefund(req) { return req; }\nmodule.exports = { handleRefund };\n",
        ),
        ("lib/other.js", b"function unrelatedThing() {}\n"),
    ]);
    let selection = json(&context(
        dir.path(),
        &[
            "--prompt",
            "x",
            "--seed",
            "lib/routes.js",
            "--format",
            "json",
        ],
    ));
    assert!(
        why_of(&selection, "lib/handlers.js")
            .contains(&"defines `handleRefund` used by lib/routes.js".into()),
        "{selection:#}"
    );
}

#[test]
fn a_job_in_auto_mode_gives_the_generator_kiln_s_choice_and_adds_what_the_tests_name() {
    common::require_busybox();
    let fixture = common::Fixture::with_git(&[
        (
            "app/views.py",
            "from .billing import charge\n\ndef checkout():\n    return charge()\n",
        ),
        ("app/billing.py", "def charge():\n    return 1\n"),
        ("app/models.py", "class Ledger:\n    pass\n"),
        ("docs/notes.md", "nothing here\n"),
    ]);
    // Attempt 1's tests fail naming app/models.py; attempt 2's pass.
    let job = fixture.job(
        "branch = \"factory/auto\"\nprompt = \"Make checkout retry\"",
        "cat /kiln/job.json; echo \"# $KILN_ATTEMPT\" >> app/views.py",
        "grep -q '# 2' app/views.py || { echo 'FAILED in app/models.py line 1'; exit 1; }",
        "[context]\nmode = \"auto\"\nbudget = \"4KiB\"",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let input =
        |n: u32| -> Value { serde_json::from_str(&ran.attempt_file(n, "job.json")).unwrap() };
    let first = input(1);
    let context = first["context"].as_array().unwrap();
    let path_why = |c: &Value| {
        (
            c["path"].as_str().unwrap().to_string(),
            c["why"].to_string(),
        )
    };
    let chosen: Vec<(String, String)> = context.iter().map(path_why).collect();
    assert_eq!(chosen[0].0, "app/views.py", "{chosen:?}");
    assert!(chosen[0].1.contains("names `checkout`"), "{chosen:?}");
    let billing = chosen
        .iter()
        .find(|(p, _)| p == "app/billing.py")
        .expect("billing chosen");
    assert!(billing.1.contains("imported by app/views.py"), "{chosen:?}");
    assert!(
        first["agent_prompt"]
            .as_str()
            .unwrap()
            .contains("- app/billing.py")
    );
    // On the retry, the file the failing tests named is added.
    let second = input(2);
    let models = second["context"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "app/models.py")
        .unwrap_or_else(|| panic!("{second:#}"));
    assert!(
        models["why"]
            .to_string()
            .contains("named by the failing tests of attempt 1"),
        "{models}"
    );
    // The report records the choice.
    let recorded = &ran.report()["job"]["context"]["files"];
    assert!(
        recorded.to_string().contains("app/billing.py"),
        "{recorded}"
    );
}

#[test]
fn a_tree_of_100_000_files_and_a_50_mib_one_leaves_kiln_bounded_with_notes() {
    // One blob under 100,001 names, and a 50 MiB file: built straight into git, fast.
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init(dir.path()).unwrap();
    let small = repo.blob(b"def refund(): pass\n").unwrap();
    let big = repo.blob(&vec![b'x'; 50 << 20]).unwrap();
    let mut index = git2::Index::new().unwrap();
    let mut add = |path: String, id: git2::Oid| {
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: 0,
            id,
            flags: path.len() as u16,
            flags_extended: 0,
            path: path.into_bytes(),
        };
        index.add(&entry).unwrap();
    };
    add("a/huge.txt".into(), big);
    for i in 0..100_001 {
        add(format!("m/{:03}/f{i}.py", i % 500), small);
    }
    let tree = index.write_tree_to(&repo).unwrap();
    let tree = repo.find_tree(tree).unwrap();
    let sig = git2::Signature::now("t", "t@localhost").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "many", &tree, &[])
        .unwrap();
    let started = std::time::Instant::now();
    let answer = dir.path().join("answer.json");
    let (status, stderr, peak_kib) = common::peak_memory_with(
        kiln()
            .arg("context")
            .arg("--repo")
            .arg(dir.path())
            .args(["--prompt", "refund", "--format", "json"]),
        std::fs::File::create(&answer).unwrap().into(),
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    assert!(peak_kib < 1 << 20, "kiln peaked at {peak_kib} KiB");
    let selection: Value = serde_json::from_slice(&std::fs::read(&answer).unwrap()).unwrap();
    let notes = selection["notes"].to_string();
    assert!(notes.contains("more than 100000 files"), "{notes}");
    assert!(notes.contains("a/huge.txt"), "{notes}");
}

#[test]
fn what_a_tree_says_is_kept_in_a_private_cache_and_a_cache_others_could_write_is_not_read() {
    let dir = repo(&[
        ("app/views.py", b"from .billing import charge\n"),
        ("app/billing.py", b"def charge(): pass\n"),
        ("lib/noise.py", b"x = 1\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let ask = || {
        let out = kiln()
            .env("KILN_CACHE_DIR", cache.path())
            .arg("context")
            .arg("--repo")
            .arg(dir.path())
            .args([
                "--prompt",
                "x",
                "--seed",
                "app/views.py",
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        json(&out)
    };
    let first = ask();
    assert!(why_of(&first, "app/billing.py").contains(&"imported by app/views.py".into()));
    let folder = cache.path().join("context");
    let mut kept: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kept.sort();
    // What the tree's sources say, and what its history changed together.
    assert_eq!(kept.len(), 2, "{kept:?}");
    kept.retain(|p| p.to_string_lossy().contains("-parsed-"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&folder), mode(&kept[0])), (0o700, 0o600));
    // The kept answer is what the next query reads: a changed one shows through...
    std::fs::write(
        &kept[0],
        r#"{"app/views.py": {"imports": [{"module": "lib.noise"}], "defines": [], "uses": []}}"#,
    )
    .unwrap();
    let planted = ask();
    assert!(why_of(&planted, "lib/noise.py").contains(&"imported by app/views.py".into()));
    // ...unless another user could have written it: then it is parsed again.
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    let reparsed = ask();
    assert!(why_of(&reparsed, "app/billing.py").contains(&"imported by app/views.py".into()));
    assert!(
        !reparsed["files"].to_string().contains("lib/noise.py"),
        "{reparsed:#}"
    );
    // Nothing new was written where others could have put it.
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 2);
}
