//! One test per sandbox default, each trying to break it from inside a real container.
//! Every probe runs as a job's generator through the real `kiln` binary, so the spec under test
//! is the one kiln really uses.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, Ran, kiln, require_busybox};
use serde_json::Value;

/// Runs `script` as the generator of a one-attempt job and returns the run and its generator log.
fn probe(script: &str, extra: &str) -> (Ran, String) {
    probe_with(script, extra, &[])
}

fn probe_with(script: &str, extra: &str, env: &[(&str, &str)]) -> (Ran, String) {
    require_busybox();
    let fixture = Fixture::with_files(&[("README", "probe\n")]);
    let head = "branch = \"factory/probe\"\nprompt = \"probe\"";
    let job = fixture.job(
        head,
        script,
        "true",
        &format!("[retry]\nmax_attempts = 1\n{extra}"),
    );
    let mut cmd = kiln();
    cmd.args(["run"]).arg(&job);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let ran = fixture.run_with(&mut cmd, &[]);
    assert!(
        ran.code == 0 || ran.code == 12,
        "kiln failed: {}",
        ran.stderr
    );
    let log = ran.attempt_file(1, "generate.log");
    (ran, log)
}

fn generate(ran: &Ran) -> &Value {
    &ran.report()["attempts"][0]["generate"]
}

#[test]
fn network_is_loopback_only_and_the_host_loopback_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "echo IFACES=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)\n\
         if nc -w 2 127.0.0.1 {port} </dev/null; then echo TCP=connected; else echo TCP=refused; fi\n\
         if wget -q -T 2 -O /dev/null http://127.0.0.1:{port}/; then echo HTTP=connected; else echo HTTP=refused; fi"
    );
    let (_, log) = probe(&script, "");
    assert!(log.contains("IFACES=lo,"), "{log}");
    assert!(
        log.contains("TCP=refused") && log.contains("HTTP=refused"),
        "{log}"
    );
    assert!(
        listener.accept().is_err(),
        "a container reached the host's loopback listener"
    );
}

#[test]
fn capabilities_are_dropped_and_privileges_cannot_be_gained() {
    let (_, log) = probe(
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; echo UID=$(id -u)",
        "",
    );
    for line in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "UID=1000",
    ] {
        // gVisor's /proc shows no NoNewPrivs line; the flag is in the OCI spec it is given, and
        // `privileged_operations_are_refused_even_when_root_is_permitted` holds under it.
        if line.starts_with("NoNewPrivs") && common::pass_runtime().is_some() {
            continue;
        }
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
}

#[test]
fn privileged_operations_are_refused_even_when_root_is_permitted() {
    // The operator lets this job run as root: the dropped capabilities must still hold.
    let fixture_config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        fixture_config.path(),
        "permit_loosening = [\"root_user\"]\n",
    )
    .unwrap();
    let script = "echo UID=$(id -u)\n\
        touch /tmp/f && chown 1000 /tmp/f && echo CHOWN=allowed || echo CHOWN=refused\n\
        mknod /tmp/null c 1 3 && echo MKNOD=allowed || echo MKNOD=refused\n\
        mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo MOUNT=allowed || echo MOUNT=refused\n\
        arping -c 1 -w 1 -I lo 127.0.0.1 && echo RAW=allowed || echo RAW=refused";
    let config = fixture_config.path().to_str().unwrap().to_string();
    let (ran, log) = probe_with(
        script,
        "[sandbox]\nroot_user = true",
        &[("KILN_CONFIG", &config)],
    );
    assert_eq!(
        ran.report()["sandbox"]["loosened"],
        serde_json::json!(["root_user"])
    );
    assert!(log.contains("UID=0"), "{log}");
    for refused in [
        "CHOWN=refused",
        "MKNOD=refused",
        "MOUNT=refused",
        "RAW=refused",
    ] {
        assert!(log.contains(refused), "missing {refused} in:\n{log}");
    }
    // And as the default user, chown to root is refused too.
    let (_, log) = probe(
        "touch f && chown 0 f && echo CHOWN=allowed || echo CHOWN=refused; rm -f f",
        "",
    );
    assert!(log.contains("CHOWN=refused"), "{log}");
}

#[test]
fn the_root_filesystem_is_read_only() {
    let (_, log) = probe(
        "touch /bin/evil 2>&1; grep ' / ' /proc/mounts; echo ok > /tmp/fine && echo TMP=writable",
        "",
    );
    // gVisor refuses the write with EACCES before its read-only mount would say EROFS.
    let refused = match common::pass_runtime() {
        None => "touch: /bin/evil: Read-only file system",
        Some(_) => "touch: /bin/evil: ",
    };
    assert!(log.contains(refused), "{log}");
    let root = log
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        root.split_whitespace()
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );
    assert!(log.contains("TMP=writable"), "{log}");
}

#[test]
fn a_fork_bomb_is_contained_by_the_pids_limit() {
    // The bomb runs in a subshell (busybox sh exits when a fork fails); the parent counts the
    // processes with builtins only, since it cannot fork either while the bomb's children live.
    let script = "(i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done)\n\
        set -- /proc/[0-9]*; echo PROCS=$#";
    let started = Instant::now();
    let (ran, log) = probe(script, "[limits]\npids = 32");
    if let Some(runtime) = common::pass_runtime() {
        // Under gVisor's ptrace platform each process inside is a task of the sandbox on the
        // host; when the cgroup's limit stops one more, the sandbox itself ends: the bomb ends
        // its stage (a failed attempt), never anything outside it.
        let generate = &ran.report()["attempts"][0]["generate"];
        assert_eq!(ran.code, 12, "{runtime}: {}", ran.stderr);
        assert_ne!(generate["exit_code"], 0, "{generate}");
        assert!(started.elapsed() < Duration::from_secs(30));
        return;
    }
    let procs: usize = log
        .split("PROCS=")
        .nth(1)
        .and_then(|s| s.lines().next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    assert!(procs <= 32, "{procs} processes ran under a limit of 32");
    assert!(
        procs >= 16,
        "the bomb barely started ({procs}); the probe is broken"
    );
    assert!(log.contains("can't fork"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "kiln waited for the bomb's children"
    );
}

#[test]
fn a_memory_bomb_is_killed_and_reported() {
    let (ran, _) = probe("tail /dev/zero", "[limits]\nmemory = \"32MiB\"");
    let generate = generate(&ran);
    assert_eq!(generate["oom_killed"], true, "{generate}");
    assert_eq!(generate["exit_code"], 137, "{generate}");
    assert!(
        ran.report()["attempts"][0]["test"].is_null(),
        "tests ran on a tree left by a killed generator"
    );
}

#[test]
fn disk_fill_stops_at_the_workspace_and_tmp_caps() {
    let script = "dd if=/dev/zero of=big bs=1M count=64 2>&1; echo WS=$(wc -c < big); rm big\n\
        dd if=/dev/zero of=/tmp/big bs=1M count=64 2>&1; echo TMP=$(wc -c < /tmp/big)\n\
        dd if=/dev/zero of=/dev/shm/big bs=1M count=64 2>&1; echo SHM=$(wc -c < /dev/shm/big)";
    let (_, log) = probe(script, "[limits]\nworkspace = \"16MiB\"\ntmp = \"8MiB\"");
    let figure = |key: &str| -> u64 {
        log.split(&format!("{key}="))
            .nth(1)
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {log}"))
    };
    assert!(figure("WS") <= 16 << 20, "{log}");
    assert!(figure("TMP") <= 8 << 20, "{log}");
    assert!(figure("SHM") <= 8 << 20, "{log}");
    assert!(log.matches("No space left on device").count() >= 3, "{log}");
}

#[test]
fn an_output_flood_is_capped_and_kiln_memory_stays_bounded() {
    require_busybox();
    let fixture = Fixture::with_files(&[("README", "probe\n")]);
    let job = fixture.job(
        "branch = \"factory/flood\"\nprompt = \"p\"",
        "yes kiln-flood | head -c 300000000; echo flooded > flood.txt",
        "true",
        "[retry]\nmax_attempts = 1\n[limits]\noutput = \"64KiB\"",
    );
    let (status, stderr, peak_kib) = common::peak_memory(
        kiln()
            .arg("run")
            .arg(&job)
            .arg("--artifacts")
            .arg(fixture.artifacts_root())
            .arg("--report")
            .arg(fixture.path("report.json")),
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(fixture.path("report.json")).unwrap()).unwrap();
    let generate = &report["attempts"][0]["generate"];
    assert_eq!(generate["output_bytes"], 300_000_000u64, "{generate}");
    assert!(generate["output_dropped_bytes"].as_u64().unwrap() >= 300_000_000 - (64 << 10));
    let log = std::fs::metadata(
        std::path::Path::new(report["attempts"][0]["artifacts"].as_str().unwrap())
            .join("generate.log"),
    )
    .unwrap();
    assert!(log.len() <= (64 << 10) + 100, "kept {} bytes", log.len());
    assert!(
        peak_kib > 0 && peak_kib < 100 << 10,
        "kiln peaked at {peak_kib} KiB while a 300 MB flood streamed"
    );
}

#[test]
fn a_command_that_never_ends_is_killed_at_the_timeout() {
    require_busybox();
    let fixture = Fixture::with_files(&[("README", "probe\n")]);
    let job = fixture.job(
        "branch = \"factory/slow\"\nprompt = \"p\"",
        "sleep 3600",
        "true",
        "[retry]\nmax_attempts = 1",
    );
    fixture.edit_job(&job, "timeout = \"60s\"", "timeout = \"2s\"");
    let started = Instant::now();
    let ran = fixture.run(&job, &[]);
    assert_eq!(ran.code, 12, "{}", ran.stderr);
    let generate = generate(&ran);
    assert_eq!(generate["timed_out"], true);
    assert!(generate["exit_code"].is_null());
    assert!(
        generate["duration_ms"].as_u64().unwrap() < 10_000,
        "{generate}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn host_environment_variables_are_invisible() {
    let secret = "kiln-test-host-secret-7f3a";
    let (_, log) = probe_with(
        "env; tr '\\0' '\\n' < /proc/1/environ",
        "",
        &[
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("KILN_TEST_SECRET", secret),
        ],
    );
    assert!(!log.contains(secret), "{log}");
    assert!(
        log.contains("KILN_JOB_ID=") && log.contains("KILN_ATTEMPT=1"),
        "{log}"
    );
}

#[test]
fn no_docker_socket_and_no_host_path_is_mounted() {
    let (_, log) = probe(
        "ls /var/run/docker.sock /run/docker.sock 2>&1; echo MOUNTS; cat /proc/mounts",
        "",
    );
    assert_eq!(log.matches("No such file or directory").count(), 2, "{log}");
    assert!(!log.contains("docker.sock "), "{log}");
    let mounts = log.split("MOUNTS\n").nth(1).unwrap();
    // Docker's own per-container files (hosts, hostname, resolv.conf) and its read-only init
    // binary are the only file mounts besides the workspace volume and /tmp.
    let allowed = [
        "/",
        "/kiln",
        "/tmp",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/sbin/docker-init",
    ];
    for line in mounts.lines().filter(|l| !l.is_empty()) {
        let target = line.split_whitespace().nth(1).unwrap();
        let kernel = ["/proc", "/dev", "/sys"]
            .iter()
            .any(|p| target == *p || target.starts_with(&format!("{p}/")));
        assert!(
            kernel || allowed.contains(&target),
            "unexpected mount {line}"
        );
        if target == "/sbin/docker-init" {
            assert!(
                line.split_whitespace().nth(3).unwrap().starts_with("ro"),
                "docker-init is writable: {line}"
            );
        }
    }
    // Under gVisor the volume is the same host tmpfs, served to the sandbox by its gofer.
    let workspace = match common::pass_runtime() {
        None => "tmpfs /kiln tmpfs",
        Some(_) => "none /kiln 9p",
    };
    assert!(mounts.lines().any(|l| l.starts_with(workspace)), "{mounts}");
}

const DEBIAN: &str = "kiln/debian:bookworm";

/// Runs `script` as the generator in kiln/debian (the tests: `test`), one attempt; the fixture
/// holds the artifacts the run left.
fn in_debian(script: &str, test: &str) -> (Fixture, Ran) {
    common::require_image(DEBIAN, "debian");
    let fixture = Fixture::with_files(&[("README", "x\n")]);
    let job = fixture.job(
        "branch = \"factory/seccomp\"\nprompt = \"p\"",
        script,
        test,
        "[retry]\nmax_attempts = 1",
    );
    fixture.edit_job(&job, common::BUSYBOX, DEBIAN);
    let ran = fixture.run(&job, &[]);
    (fixture, ran)
}

#[test]
#[cfg(target_arch = "x86_64")]
fn each_call_the_seccomp_profile_refuses_fails_inside_the_container() {
    // x86_64 numbers; each call's errno is written down (1 is EPERM).
    let calls = [
        ("ptrace", "101, 0, 0, 0, 0"),
        ("bpf", "321, 0, 0, 0"),
        ("keyctl", "250, 0, 0, 0, 0, 0"),
        ("userfaultfd", "323, 0"),
        ("perf_event_open", "298, 0, 0, -1, -1, 0"),
        ("unshare", "272, 0x10000000"),
        ("setns", "308, 0, 0"),
        ("mount", "165, 0, 0, 0, 0, 0"),
        ("fsopen", "430, 0, 0"),
        ("fsmount", "432, 0, 0, 0"),
        ("move_mount", "429, 0, 0, 0, 0, 0"),
        ("open_tree", "428, 0, 0, 0"),
        ("io_uring_setup", "425, 1, 0"),
        ("io_uring_enter", "426, 0, 0, 0, 0, 0, 0"),
        ("clone_newuser", "56, 0x10000011, 0, 0, 0, 0"),
    ];
    let perl: String = calls
        .iter()
        .map(|(name, args)| format!("syscall({args}); print \"{name}=\", $!+0, \"\\n\";"))
        .collect();
    let script = format!("perl -e '{perl}' | tee refused.txt");
    let (_fixture, ran) = in_debian(&script, "true");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let log = ran.attempt_file(1, "generate.log");
    for (name, _) in calls {
        assert!(
            log.contains(&format!("{name}=1\n")),
            "{name} was not refused:\n{log}"
        );
    }
}

#[test]
fn a_build_and_test_workload_runs_under_the_profile() {
    let script = r#"set -e
cat > sum.c <<'C'
#include <pthread.h>
#include <stdio.h>
static long total;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *add(void *arg) { pthread_mutex_lock(&lock); total += (long)arg; pthread_mutex_unlock(&lock); return 0; }
int main(void) {
  pthread_t t[4];
  for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, add, (void *)(i + 1));
  for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
  printf("%ld\n", total);
  return total == 10 ? 0 : 1;
}
C
printf 'test: sum\n\t./sum\nsum: sum.c\n\tcc -O2 -pthread -o sum sum.c\n' > Makefile
git init -q /tmp/history && git -C /tmp/history -c user.name=k -c user.email=k@k commit -q --allow-empty -m start
git -C /tmp/history log --oneline
"#;
    let (_fixture, ran) = in_debian(script, "make -s test && rm -f sum && echo BUILT_AND_TESTED");
    let test_log = ran.attempt_file(1, "test.log");
    assert_eq!(ran.code, 0, "{}\n{test_log}", ran.stderr);
    assert!(test_log.contains("10\nBUILT_AND_TESTED"), "{test_log}");
}

/// The kernel release the host runs: a container under runc sees the same, one under gVisor
/// sees gVisor's own.
fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn kernel_in(log: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix("KERNEL="))
        .unwrap_or_else(|| panic!("no KERNEL= in {log}"))
        .trim()
        .to_string()
}

#[test]
fn stages_run_under_the_runtime_of_the_pass() {
    // Under the gVisor pass (`KILN_TEST_CONFIG=.ci/runsc.toml`) every suite's stages run on
    // gVisor's kernel, not the host's: this is what shows the pass is not runc again.
    let (_, log) = probe("echo KERNEL=$(uname -r)", "");
    let seen = kernel_in(&log);
    match common::pass_runtime() {
        Some(runtime) => assert_ne!(seen, host_kernel(), "{runtime} ran on the host's kernel"),
        None => assert_eq!(seen, host_kernel(), "runc shares the host's kernel"),
    }
}

#[test]
fn the_operator_puts_every_stage_under_gvisor_and_a_missing_runtime_is_exit_3() {
    require_busybox();
    common::require_runtime("runsc");
    common::require_runtime("runsc-net");
    let fixture = Fixture::with_files(&[("README", "gvisor\n")]);
    let job = fixture.job(
        "branch = \"factory/gvisor\"\nprompt = \"p\"",
        "echo KERNEL=$(uname -r) && echo changed >> README",
        "echo KERNEL=$(uname -r)",
        "[retry]\nmax_attempts = 1",
    );
    let config = fixture.path("kiln.toml");
    std::fs::write(
        &config,
        "[sandbox]\nruntime = \"runsc\"\nnetwork_runtime = \"runsc-net\"\n",
    )
    .unwrap();
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for stage in ["generate.log", "test.log"] {
        let seen = kernel_in(&ran.attempt_file(1, stage));
        assert_ne!(seen, host_kernel(), "{stage} ran on the host's kernel");
    }
    // Configured but not registered: refused before anything is made, naming it.
    std::fs::write(&config, "[sandbox]\nruntime = \"kiln-no-such-runtime\"\n").unwrap();
    std::fs::remove_dir_all(fixture.artifacts_root()).unwrap();
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 3, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("`kiln-no-such-runtime` is not registered"),
        "{}",
        ran.stderr
    );
    assert!(!fixture.artifacts_root().exists());
    assert!(common::left_by(ran.pid).is_empty());
}
