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

/// A tar of `workspace/` holding `files` (name, mode, bytes), owned by the sandbox user.
fn tar_of(files: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(1000);
    dir.set_gid(1000);
    dir.set_cksum();
    builder
        .append_data(&mut dir, "workspace", std::io::empty())
        .expect("tar in memory");
    for (name, mode, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("workspace/{name}"), bytes.as_slice())
            .expect("tar in memory");
    }
    builder.into_inner().expect("tar in memory")
}

/// Each regular file of an archive: name under `workspace/`, uid and bytes.
fn files_in(tar: &[u8]) -> Vec<(String, u64, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    let mut files: Vec<(String, u64, Vec<u8>)> = archive
        .entries()
        .expect("a tar")
        .filter_map(|e| {
            let mut e = e.expect("an entry");
            if e.header().entry_type() != tar::EntryType::Regular {
                return None;
            }
            let name = e.path().expect("a path").display().to_string();
            let uid = e.header().uid().expect("a uid");
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).expect("an entry reads");
            Some((name, uid, bytes))
        })
        .collect();
    files.sort();
    files
}

/// Bytes no text survives: every byte value, Docker's detach keys (ctrl-p ctrl-q) among them,
/// in a pseudo-random order, `len` of them.
fn binary(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut bytes: Vec<u8> = (0..=255u8).chain([0x10, 0x11, 0x10, 0x11]).collect();
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.push(state as u8);
    }
    bytes
}

// Copies go through the holder's own stdin and stdout; one test, as it shares the pool's labels.
#[test]
fn copies_through_the_holder_are_exact_and_nothing_in_a_volume_can_end_them_early() {
    common::require_busybox();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let sandbox = Sandbox::connect()
            .await
            .expect("the engine is up")
            .with_volumes_per_holder(2);
        let size = ByteSize::mib(16);
        let a = sandbox.workspace_volume(size).await.expect("a volume");
        let b = sandbox.workspace_volume(size).await.expect("a volume");
        assert_eq!(holders().len(), 1, "both volumes share one holder");

        // Binary bytes over many chunks, and files that look like the channel's end lines.
        let files = vec![
            ("blob.bin", 0o644, binary(3 << 20)),
            ("end.txt", 0o600, b"KILN-END-0123456789abcdef0123456789abcdef 0\n".to_vec()),
            ("ends.txt", 0o644, b"KILN-END-".repeat(10_000)),
            ("empty", 0o644, Vec::new()),
        ];
        a.upload(tar_of(&files)).await.expect("upload");
        let back = a
            .read_workspace(64 << 20, read_all)
            .await
            .expect("download")
            .expect("under the cap");
        let mut sent: Vec<(String, u64, &[u8])> = files
            .iter()
            .map(|(n, _, bytes)| (format!("workspace/{n}"), 1000, bytes.as_slice()))
            .collect();
        sent.sort();
        let got = files_in(&back);
        let names = |files: Vec<(&String, u64)>| format!("{files:?}");
        assert_eq!(
            names(got.iter().map(|(n, uid, _)| (n, *uid)).collect()),
            names(sent.iter().map(|(n, uid, _)| (n, *uid)).collect()),
            "the same files come back, the sandbox user's"
        );
        for ((name, _, back), (_, _, sent)) in got.iter().zip(&sent) {
            assert!(
                back.as_slice() == *sent,
                "{name}: {} bytes came back for {} sent, not the same",
                back.len(),
                sent.len()
            );
        }

        // What a stage writes (any bytes, unreadable to others, an end line with a made-up
        // nonce) comes back whole, and the channel goes on with the next copy.
        let stage = Command::new("docker")
            .args(["run", "--rm", "--network", "none", "--user", "1000:1000", "-v"])
            .arg(format!("{}:/kiln", a.name()))
            .args([
                common::BUSYBOX,
                "sh",
                "-c",
                "printf 'KILN-END-ffffffffffffffffffffffffffffffff 0\\nafter' > /kiln/workspace/forged \
                 && chmod 000 /kiln/workspace/forged",
            ])
            .output()
            .expect("docker CLI runs");
        assert!(stage.status.success(), "{}", String::from_utf8_lossy(&stage.stderr));
        let back = a
            .read_workspace(64 << 20, read_all)
            .await
            .expect("download")
            .expect("under the cap");
        let forged = files_in(&back)
            .into_iter()
            .find(|(n, _, _)| n == "workspace/forged")
            .expect("the stage's file is read although only its owner could");
        assert_eq!(forged.2, b"KILN-END-ffffffffffffffffffffffffffffffff 0\nafter");

        // A tar past its cap is refused, and the holder's other volume is served next.
        let over = a.read_workspace(1 << 20, read_all).await.expect("download");
        assert_eq!(over.map(|_| ()), Err(1 << 20));
        b.upload(tar_with("b.txt", "b")).await.expect("upload after a refused copy");
        let in_b = b
            .read_workspace(1 << 20, read_all)
            .await
            .expect("download")
            .expect("small");
        assert_eq!(names_in(&in_b), ["workspace/b.txt"]);

        // A holder gone fails the copy at once, and every later one, with the reason.
        let holder = holders().pop().expect("the holder");
        let killed = Command::new("docker")
            .args(["kill", &holder])
            .output()
            .expect("docker CLI runs");
        assert!(killed.status.success());
        let started = Instant::now();
        let lost = b.read_workspace(1 << 20, read_all).await;
        let error = lost.expect_err("a copy through a killed holder fails").to_string();
        assert!(error.contains("holder"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10), "it failed late");
        let again = b.upload(tar_with("c.txt", "c")).await;
        assert!(again.is_err(), "a broken channel is not used again");

        a.remove().await;
        b.remove().await;
        sandbox.release_spare_volumes().await;
        assert!(holders().is_empty(), "holders left: {:?}", holders());
        assert!(volumes().is_empty(), "volumes left: {:?}", volumes());
    });
}

/// What the volume `name` holds, as `find` lists it from a container of its own.
fn listing(name: &str) -> String {
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--user", "0:0", "-v"])
        .arg(format!("{name}:/v"))
        .args([common::BUSYBOX, "find", "/v", "-mindepth", "1"])
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// A used volume given up while its batch lives on is emptied then: its files do not hold
// memory until the batch's last volume goes.
#[test]
fn a_used_volume_is_emptied_as_it_is_given_up() {
    common::require_busybox();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let sandbox = Sandbox::connect()
            .await
            .expect("the engine is up")
            .with_volumes_per_holder(2);
        let a = sandbox
            .workspace_volume(ByteSize::mib(8))
            .await
            .expect("a volume");
        let b = sandbox
            .workspace_volume(ByteSize::mib(8))
            .await
            .expect("a volume");
        a.upload(tar_of(&[("a.txt", 0o644, b"a".to_vec())]))
            .await
            .expect("upload");
        // What a stage leaves: hidden files, a link out, a folder it made unreadable.
        let stage = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--user",
                "1000:1000",
                "-v",
            ])
            .arg(format!("{}:/kiln", a.name()))
            .args([
                common::BUSYBOX,
                "sh",
                "-c",
                "cd /kiln/workspace && touch .hidden ..twice && ln -s /etc out \
                 && mkdir -p deep/er && touch deep/er/f && chmod 000 deep",
            ])
            .output()
            .expect("docker CLI runs");
        assert!(
            stage.status.success(),
            "{}",
            String::from_utf8_lossy(&stage.stderr)
        );
        let name = a.name().to_string();
        assert!(listing(&name).contains("..twice"), "{}", listing(&name));
        a.remove().await;
        assert_eq!(holders().len(), 1, "the batch lives on with b");
        assert_eq!(listing(&name), "", "a volume given up still holds files");
        b.remove().await;
        assert!(holders().is_empty(), "holders left: {:?}", holders());
        assert!(volumes().is_empty(), "volumes left: {:?}", volumes());
    });
}

// A process whose runtime ends while removals are still handed over (an error path, a panic)
// must end: a removal dropped unrun once started another, under the lock it was spawned under.
#[test]
fn a_runtime_ending_with_removals_pending_ends() {
    common::require_busybox();
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            let sandbox = Sandbox::connect()
                .await
                .expect("the engine is up")
                .with_volumes_per_holder(1);
            let volume = sandbox
                .workspace_volume(ByteSize::mib(2))
                .await
                .expect("a volume");
            // Given up without `remove`: its batch's removal is handed to a task, which the
            // runtime drops unrun as it ends.
            drop(volume);
        });
        drop(runtime);
        let _ = done.send(());
    });
    let finished = ended.recv_timeout(Duration::from_secs(30));
    // What the dropped removal left is `kiln gc`'s to remove; here, the test's.
    for (kind, ids) in [(["rm", "-f"], holders()), (["volume", "rm"], volumes())] {
        if !ids.is_empty() {
            let _ = Command::new("docker").args(kind).args(&ids).output();
        }
    }
    assert!(finished.is_ok(), "the runtime did not end");
}
