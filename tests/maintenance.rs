//! `kiln gc` and `kiln image`: cleaning up after crashed runs, and the images built from nothing.

mod common;

use std::process::Command;

use common::{Fixture, kiln, require_busybox};

/// A pid that cannot belong to a live process (above the kernel's pid_max ceiling).
const DEAD_PID: &str = "4194305";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn gc_removes_what_a_dead_run_left_and_spares_live_runs() {
    require_busybox();
    let dead_job = format!("01gcdead{}", &ulid_like());
    let live_job = format!("01gclive{}", &ulid_like());
    let run = |job: &str, pid: &str| {
        docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &format!("kiln.job={job}"),
            "--label",
            &format!("kiln.pid={pid}"),
            common::BUSYBOX,
            "sleep",
            "300",
        ])
    };
    let dead = run(&dead_job, DEAD_PID);
    let live = run(&live_job, &std::process::id().to_string());
    docker(&[
        "volume",
        "create",
        "--label",
        &format!("kiln.job={dead_job}"),
        "--label",
        &format!("kiln.pid={DEAD_PID}"),
        &format!("kiln-{dead_job}-test"),
    ]);
    let stale = std::env::temp_dir().join(format!("kiln-ws-{dead_job}-x"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("owner.pid"), DEAD_PID).unwrap();

    let out = kiln().arg("gc").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let exists = |id: &str| {
        Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!exists(&dead), "the dead run's container survived gc");
    assert!(exists(&live), "gc removed a live run's container");
    assert!(
        docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=kiln.job={dead_job}")
        ])
        .is_empty()
    );
    assert!(!stale.exists(), "the dead run's workspace survived gc");
    docker(&["rm", "-f", &live]);
}

fn ulid_like() -> String {
    let id = std::process::id();
    format!("{id:018}")
        .chars()
        .map(|c| (b'a' + c.to_digit(10).unwrap() as u8) as char)
        .collect()
}

#[test]
fn image_list_shows_the_busybox_image_current() {
    require_busybox();
    let out = kiln().args(["image", "list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let busybox = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "busybox")
        .unwrap();
    assert_eq!(busybox["state"], "current", "{busybox}");
}

#[test]
fn unknown_image_recipe_exits_2() {
    let out = kiln().args(["image", "build", "alpine"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("busybox, debian"));
}

#[test]
fn the_debian_image_runs_a_job_with_git_and_a_shell() {
    let inspect = Command::new("docker")
        .args(["image", "inspect", "kiln/debian:bookworm"])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "kiln/debian:bookworm is missing: run `cargo run -- image build debian` (as .ci/run does)"
    );
    let fixture = Fixture::with_files(&[("README", "x\n")]);
    let job = fixture.job(
        "branch = \"factory/debian\"\nprompt = \"p\"",
        "git --version > version.txt; bash -c 'echo from bash' >> version.txt",
        "grep -q 'git version' version.txt",
        "",
    );
    fixture.edit_job(&job, common::BUSYBOX, "kiln/debian:bookworm");
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let patch = ran.attempt_file(1, "diff.patch");
    assert!(
        patch.contains("+git version 2.") && patch.contains("+from bash"),
        "{patch}"
    );
}

#[test]
fn a_leftover_check_fails_when_docker_itself_fails() {
    let unreachable = std::panic::catch_unwind(|| {
        common::docker_ids(
            Command::new("docker")
                .env("DOCKER_HOST", "unix:///nonexistent/kiln-test.sock")
                .args(["ps", "-a", "-q"]),
        )
    });
    assert!(
        unreachable.is_err(),
        "an unreachable engine read as nothing left"
    );
}
