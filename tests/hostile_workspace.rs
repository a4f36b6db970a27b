//! A hostile generator plants everything a host-side git might obey or follow: hooks, an
//! fsmonitor, a hooksPath, a filter driver wired up by .gitattributes, config includes, and
//! symlinks to a host secret. The host must execute nothing and leak no host file.

mod common;

use common::{Fixture, require_busybox};

const SECRET: &str = "TOPSECRET-host-only-5d1c";

#[test]
fn the_host_obeys_nothing_and_follows_no_link_the_generator_planted() {
    require_busybox();
    let fixture = Fixture::with_git(&[("README", "hostile\n")]);
    let secret = fixture.path("host-secret.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let marker = fixture.path("PWNED");
    let payload = format!("#!/bin/sh\ntouch {}\n", marker.display());
    let script = format!(
        r#"set -e
mkdir -p .git/hooks hooks sub/.git
for h in pre-commit post-commit post-checkout post-merge reference-transaction pre-push; do
  printf '%s' '{payload}' > .git/hooks/$h; chmod +x .git/hooks/$h
  printf '%s' '{payload}' > hooks/$h; chmod +x hooks/$h
done
cat > .git/config <<'CFG'
[core]
	fsmonitor = touch {marker}
	hooksPath = /kiln/workspace/hooks
[filter "evil"]
	clean = touch {marker}
	smudge = touch {marker}
	process = touch {marker}
[include]
	path = {secret}
CFG
cp .git/config sub/.git/config
echo '* filter=evil' > .gitattributes
ln -s {secret} leak
ln -s / root-link
echo changed >> README
"#,
        marker = marker.display(),
        secret = secret.display(),
    );
    let out = fixture.path("out.git");
    let job = fixture.job(
        "branch = \"factory/hostile\"\nprompt = \"p\"",
        &script,
        "[ ! -e .git ] && [ ! -e sub/.git ] && echo NO_GIT_DIRS",
        "",
    );
    let ran = fixture.run(&job, &["--out", out.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);

    assert!(!marker.exists(), "a payload ran on the host");
    // The tests ran on the tree kiln diffed: no .git folder reached them.
    assert!(ran.attempt_file(1, "test.log").contains("NO_GIT_DIRS"));
    let ignored = ran.report()["attempts"][0]["ignored_paths"].to_string();
    assert!(
        ignored.contains("workspace/.git/config") && ignored.contains("workspace/sub/.git/config"),
        "{ignored}"
    );

    // No host file's content reached anything kiln wrote.
    let mut files = vec![fixture.path("report.json")];
    let mut dirs = vec![ran.artifacts.clone().unwrap(), out.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "{} holds the host secret",
            file.display()
        );
    }
    // Links are committed as links: their blob is the target's path, never its content.
    let repo = git2::Repository::open(&out).unwrap();
    let tree = repo
        .find_reference("refs/heads/factory/hostile")
        .unwrap()
        .peel_to_tree()
        .unwrap();
    for (name, target) in [("leak", secret.to_str().unwrap()), ("root-link", "/")] {
        let entry = tree.get_name(name).unwrap();
        assert_eq!(entry.filemode(), 0o120000);
        assert_eq!(
            repo.find_blob(entry.id()).unwrap().content(),
            target.as_bytes()
        );
    }
    assert!(tree.get_name(".git").is_none());
    // Nothing the generator wrote became config or hooks of the repository kiln wrote.
    let config = std::fs::read_to_string(out.join("config")).unwrap();
    assert!(
        !config.contains("fsmonitor")
            && !config.contains("filter")
            && !config.contains("hooksPath"),
        "{config}"
    );
    let hooks: Vec<_> = std::fs::read_dir(out.join("hooks"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        hooks
            .iter()
            .all(|h| h.to_string_lossy().ends_with(".sample")),
        "{hooks:?}"
    );
}

#[test]
fn a_sparse_file_far_larger_than_the_workspace_is_not_taken() {
    require_busybox();
    let fixture = Fixture::with_files(&[("README", "sparse\n")]);
    // 100 GiB that occupy no space in the 16 MiB tmpfs, but would stream as 100 GiB of zeros.
    let job = fixture.job(
        "branch = \"factory/sparse\"\nprompt = \"p\"",
        "truncate -s 100G huge && ls -l huge",
        "true",
        "[retry]\nmax_attempts = 1\n[limits]\nworkspace = \"16MiB\"",
    );
    let started = std::time::Instant::now();
    let ran = fixture.run(&job, &[]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "kiln streamed the sparse file"
    );
    assert!(
        ran.attempt_file(1, "generate.log").contains("107374182400"),
        "the probe did not make the file"
    );
    let ignored = &ran.report()["attempts"][0]["ignored_paths"][0];
    assert_eq!(
        ignored["reason"], "archive larger than twice the workspace limit",
        "{ignored}"
    );
    assert_eq!(ran.report()["attempts"][0]["diff"]["files_changed"], 0);
    // An unread tree is never tested or committed.
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    assert!(ran.report()["attempts"][0]["test"].is_null());
    assert!(ran.report()["commit"].is_null());
}

#[test]
fn a_link_climbing_above_the_workspace_is_dropped_not_an_infrastructure_error() {
    require_busybox();
    // The repository itself holds such a link: the generator's copy leaves it out.
    let fixture = Fixture::with_files(common::HELLO_FILES);
    std::os::unix::fs::symlink("../../../../outside", fixture.path("repo/climbs")).unwrap();
    let job = fixture.job(
        "branch = \"factory/climb\"\nprompt = \"p\"",
        "ln -s ../../../../../../x leak && echo 'echo \"Hello, kiln!\"' > greet.sh",
        "sh test.sh",
        "",
    );
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let attempts = ran.report()["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 1);
    let ignored = attempts[0]["ignored_paths"].to_string();
    assert!(
        ignored.contains("leak") && ignored.contains("symlink pointing above the workspace"),
        "{ignored}"
    );
}

#[test]
fn a_large_workspace_is_read_back_tested_and_published_in_bounded_memory() {
    require_busybox();
    let fixture = Fixture::with_git(&[("README", "large\n")]);
    // 300 MB in one file of text and 80 MB in 2,000 more: far more than kiln may hold.
    let script = "yes 'a line the generator wrote, again and again' | head -c 300000000 > big.txt \
        && mkdir many && i=0 && while [ $i -lt 2000 ]; do head -c 40000 big.txt > many/f$i.txt; \
        i=$((i+1)); done";
    let job = fixture.job(
        "branch = \"factory/large\"\nprompt = \"p\"",
        script,
        "[ \"$(wc -c < big.txt)\" -eq 300000000 ] && [ \"$(ls many | wc -l)\" -eq 2000 ] && echo ALL_THERE",
        "[retry]\nmax_attempts = 1\n[limits]\nworkspace = \"768MiB\"\nmemory = \"1GiB\"",
    );
    let config = fixture.path("kiln.toml");
    let ceilings = "[limits]\nworkspace = \"1GiB\"\nmemory = \"2GiB\"\n";
    std::fs::write(&config, common::operator_config(ceilings)).unwrap();
    let out = fixture.path("out.git");
    let (status, stderr, peak_kib) = common::peak_memory(
        common::kiln()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .arg(&job)
            .arg("--out")
            .arg(&out)
            .arg("--artifacts")
            .arg(fixture.artifacts_root())
            .arg("--report")
            .arg(fixture.path("report.json")),
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.path("report.json")).unwrap()).unwrap();
    let attempt = &report["attempts"][0];
    assert_eq!(attempt["diff"]["files_changed"], 2001, "{attempt}");
    // The tests saw every byte: the tree went into their volume whole.
    let test_log = std::fs::read_to_string(format!(
        "{}/test.log",
        attempt["artifacts"].as_str().unwrap()
    ))
    .unwrap();
    assert!(test_log.contains("ALL_THERE"), "{test_log}");
    // The big file is in the typed diff without its lines: more than the gate would read.
    let diff: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!(
            "{}/diff.json",
            attempt["artifacts"].as_str().unwrap()
        ))
        .unwrap(),
    )
    .unwrap();
    let big = diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "big.txt")
        .unwrap();
    assert!(
        big["omitted"].as_str().unwrap().contains("larger than"),
        "{big}"
    );
    // Published whole.
    let published = git2::Repository::open(&out).unwrap();
    let tree = published
        .revparse_single("factory/large")
        .unwrap()
        .peel_to_tree()
        .unwrap();
    let odb = published.odb().unwrap();
    let size = |path: &str| {
        let id = tree.get_path(std::path::Path::new(path)).unwrap().id();
        odb.read_header(id).unwrap().0
    };
    assert_eq!(size("big.txt"), 300_000_000);
    assert_eq!(size("many/f1999.txt"), 40_000);
    assert!(
        peak_kib > 0 && peak_kib < 100 << 10,
        "kiln peaked at {peak_kib} KiB reading back, testing and publishing 380 MB"
    );
}
