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
    let paths: Vec<&str> = selection["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
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
