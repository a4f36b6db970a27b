//! Workspace volumes made several to a holder container, on the real engine: each volume is its
//! own empty filesystem, the holder goes with its batch's last volume, and nothing is left
//! behind, whether volumes are given up, dropped mid-use, still mounted as they are given up,
//! asked for and abandoned while they are made, or never used.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use kiln::model::ByteSize;
use kiln::sandbox::Sandbox;

/// Names of containers (`ps`) or volumes (`volume ls`) this test process's pool made.
fn shared_objects(kind: &[&str]) -> Vec<String> {
    let pid = format!("label=kiln.pid={}", std::process::id());
    let out = Command::new("docker")
        .args(kind)
        .args(["-q", "--filter", "label=kiln.job=shared", "--filter", &pid])
        .output()
        .expect("docker CLI runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn holders() -> Vec<String> {
    shared_objects(&["ps", "-a"])
}

fn volumes() -> Vec<String> {
    shared_objects(&["volume", "ls"])
}

/// A tar holding `workspace/name` with `text`.
fn tar_with(name: &str, text: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, format!("workspace/{name}"), text.as_bytes())
        .expect("tar in memory");
    builder.into_inner().expect("tar in memory")
}

/// The file names under `workspace/` in a downloaded archive.
fn names_in(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    let mut names: Vec<String> = archive
        .entries()
        .expect("a tar")
        .map(|e| {
            e.expect("an entry")
                .path()
                .expect("a path")
                .display()
                .to_string()
        })
        .filter(|p| p != "workspace/" && p != "workspace")
        .collect();
    names.sort();
    names
}

// All three scenarios share the process's label, so they run one after the other in one test.
#[test]
fn pooled_volumes_are_separate_and_leave_nothing_behind() {
    common::require_busybox();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let sandbox = Sandbox::connect()
            .await
            .expect("the engine is up")
            .with_volumes_per_holder(3);
        let size = ByteSize::mib(8);

        // Three volumes of one size share one holder; each starts empty and keeps its own files.
        let a = sandbox.workspace_volume(size).await.expect("a volume");
        let b = sandbox.workspace_volume(size).await.expect("a volume");
        assert_eq!(holders().len(), 1, "one holder for the batch");
        assert_eq!(volumes().len(), 3, "the batch's three volumes");
        a.upload(tar_with("a.txt", "a")).await.expect("upload");
        b.upload(tar_with("b.txt", "b")).await.expect("upload");
        let in_a = a
            .read_workspace(1 << 20, read_all)
            .await
            .expect("download")
            .expect("small");
        let in_b = b
            .read_workspace(1 << 20, read_all)
            .await
            .expect("download")
            .expect("small");
        assert_eq!(names_in(&in_a), ["workspace/a.txt"]);
        assert_eq!(names_in(&in_b), ["workspace/b.txt"]);
        // Read as it streams, an archive past the cap is refused, not gathered.
        let over = a.read_workspace(1024, read_all).await.expect("download");
        assert_eq!(over.map(|_| ()), Err(1024));

        // Another size is another batch.
        let other = sandbox
            .workspace_volume(ByteSize::mib(4))
            .await
            .expect("a volume");
        assert_eq!(holders().len(), 2);

        // Giving up volumes keeps the holder while its batch has any left, spares included.
        a.remove().await;
        b.remove().await;
        other.remove().await;
        assert_eq!(holders().len(), 2, "each batch still has spares");
        sandbox.release_spare_volumes().await;
        assert!(holders().is_empty(), "holders left: {:?}", holders());
        assert!(volumes().is_empty(), "volumes left: {:?}", volumes());

        // A volume dropped mid-use (its job cancelled) takes its batch with it, in the background.
        let solo = Sandbox::connect()
            .await
            .expect("the engine is up")
            .with_volumes_per_holder(1);
        let dropped = solo.workspace_volume(size).await.expect("a volume");
        assert_eq!(holders().len(), 1);
        drop(dropped);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(holders().is_empty() && volumes().is_empty()) {
            assert!(Instant::now() < deadline, "a dropped batch was not removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A volume still mounted by a container on its way out (a cancelled stage's, removed
        // at the same moment) is removed once that container is gone, not left behind.
        let mounted = solo.workspace_volume(size).await.expect("a volume");
        let user = Command::new("docker")
            .args(["run", "-d", "--rm", "--network", "none", "-v"])
            .arg(format!("{}:/w", mounted.name()))
            .args([common::BUSYBOX, "sleep", "1"])
            .output()
            .expect("docker CLI runs");
        assert!(
            user.status.success(),
            "{}",
            String::from_utf8_lossy(&user.stderr)
        );
        mounted.remove().await;
        assert!(holders().is_empty(), "holders left: {:?}", holders());
        assert!(
            volumes().is_empty(),
            "a volume in use was given up: {:?}",
            volumes()
        );

        // Asking for a volume and giving up waiting while its batch is made (a job cancelled)
        // leaves the batch to be finished and released, not half made and unknown.
        for wait_ms in [5, 40, 120] {
            let asked = tokio::time::timeout(
                Duration::from_millis(wait_ms),
                solo.workspace_volume(ByteSize::mib(2)),
            )
            .await;
            drop(asked);
            solo.release_spare_volumes().await;
            assert!(holders().is_empty(), "holders left: {:?}", holders());
            assert!(volumes().is_empty(), "volumes left: {:?}", volumes());
        }
    });
}

fn read_all(mut tar: impl std::io::Read) -> Vec<u8> {
    let mut all = Vec::new();
    tar.read_to_end(&mut all).expect("a pipe reads to its end");
    all
}
