//! Helpers for the integration tests: they drive the real `kiln` binary against the real
//! Docker engine, real git repositories made in temp folders, and kiln's own images.
#![allow(dead_code)]

pub mod browser;
pub mod postgres;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const BUSYBOX: &str = "kiln/busybox:latest";

/// The images the tests need; `.ci/run` builds them. A missing one fails the test, never skips it.
pub fn require_busybox() {
    require_image(BUSYBOX, "busybox");
}

/// The binary under test, with no operator config from the caller's environment, except the
/// one a whole pass runs with: `KILN_TEST_CONFIG` (the gVisor pass of `.ci/run`).
pub fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env_remove("KILN_CONFIG");
    if let Some(pass) = std::env::var_os("KILN_TEST_CONFIG") {
        cmd.env("KILN_CONFIG", pass);
    }
    cmd
}

/// An operator config for a test that writes its own: `text`, then the pass's
/// (`KILN_TEST_CONFIG`: its `[sandbox]` runtimes), so the test runs under the pass's runtime.
pub fn operator_config(text: &str) -> String {
    match std::env::var_os("KILN_TEST_CONFIG") {
        Some(path) => format!(
            "{text}\n{}",
            std::fs::read_to_string(path).expect("KILN_TEST_CONFIG names a readable file")
        ),
        None => text.to_string(),
    }
}

/// The `[sandbox] runtime` this pass runs stages under (`KILN_TEST_CONFIG`); `None`: runc.
pub fn pass_runtime() -> Option<String> {
    let path = std::env::var_os("KILN_TEST_CONFIG")?;
    let text = std::fs::read_to_string(path).expect("KILN_TEST_CONFIG names a readable file");
    let config: toml::Value = toml::from_str(&text).expect("KILN_TEST_CONFIG is TOML");
    config
        .get("sandbox")?
        .get("runtime")?
        .as_str()
        .map(String::from)
}

/// Fails (never skips) unless dockerd has `runtime` registered; `.ci/setup` registers gVisor's.
pub fn require_runtime(runtime: &str) {
    let out = Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .expect("docker CLI runs");
    let runtimes: Value = serde_json::from_slice(&out.stdout).expect("docker info gives JSON");
    assert!(
        runtimes.get(runtime).is_some(),
        "dockerd has no runtime `{runtime}`: run `bash .ci/setup` (it installs and registers gVisor)"
    );
}

/// A temp folder holding a job file, its repository and its artifacts.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

pub struct Ran {
    pub code: i32,
    /// The kiln process's id: what it made is labelled `kiln.pid=<pid>`.
    pub pid: u32,
    pub stderr: String,
    pub report: Option<Value>,
    pub artifacts: Option<PathBuf>,
}

impl Ran {
    pub fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no report; stderr:\n{}", self.stderr))
    }

    pub fn job_id(&self) -> String {
        self.stderr
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("job "))
            .expect("first line names the job")
            .to_string()
    }

    /// A file from attempt `n`'s artifacts.
    pub fn attempt_file(&self, n: u32, name: &str) -> String {
        let path = self
            .artifacts
            .as_ref()
            .expect("artifacts exist")
            .join(format!("attempt-{n}"))
            .join(name);
        String::from_utf8_lossy(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .into_owned()
    }
}

impl Fixture {
    /// A fixture whose repository is a plain folder with `files`.
    pub fn with_files(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = dir.path().join("repo");
        for (path, content) in files {
            let path = repo.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        std::fs::create_dir_all(&repo).unwrap();
        Fixture { dir }
    }

    /// A fixture whose repository is a real git repository with `files` committed on `main`.
    pub fn with_git(files: &[(&str, &str)]) -> Self {
        let fixture = Self::with_files(files);
        let (repo, commit) = commit_folder(&fixture.path("repo"));
        repo.tag_lightweight("v1", &repo.find_object(commit, None).unwrap(), false)
            .unwrap();
        fixture
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn artifacts_root(&self) -> PathBuf {
        self.path("artifacts")
    }

    /// Writes `job.toml`: `head` (top-level keys) plus a generator running `script` and a test
    /// running `test` (both `sh -c`), and `extra` tables.
    pub fn job(&self, head: &str, script: &str, test: &str, extra: &str) -> PathBuf {
        let text = format!(
            "repo = \"repo\"\n{head}\n\n[generate]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", {script:?}]\n\n\
             [test]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", {test:?}]\n\n{extra}\n"
        );
        let path = self.path("job.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Rewrites every `from` in the job file at `job` to `to` (another image, a timeout).
    pub fn edit_job(&self, job: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(job).unwrap();
        assert!(text.contains(from), "{from} is not in the job file");
        std::fs::write(job, text.replace(from, to)).unwrap();
    }

    /// Runs `kiln run JOB` with artifacts under the fixture and the report read back.
    pub fn run(&self, job: &Path, extra: &[&str]) -> Ran {
        self.run_with(kiln().args(["run"]).arg(job), extra)
    }

    /// Runs `kiln --config CONFIG run JOB`, as [`Fixture::run`] does.
    pub fn run_configured(&self, config: &Path, job: &Path) -> Ran {
        self.run_with(kiln().arg("--config").arg(config).arg("run").arg(job), &[])
    }

    pub fn run_with(&self, cmd: &mut Command, extra: &[&str]) -> Ran {
        let report = self.path("report.json");
        let _ = std::fs::remove_file(&report);
        let child = cmd
            .arg("--artifacts")
            .arg(self.artifacts_root())
            .arg("--report")
            .arg(&report)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kiln binary runs");
        let pid = child.id();
        let out: Output = child.wait_with_output().expect("kiln binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: Option<Value> = std::fs::read(&report)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("report is JSON"));
        let artifacts = report
            .as_ref()
            .and_then(|r| r["artifacts"].as_str())
            .map(PathBuf::from);
        Ran {
            code: out.status.code().unwrap_or(-1),
            pid,
            stderr,
            report,
            artifacts,
        }
    }
}

/// The ids `cmd` (a `docker ... -q` listing) prints. A docker that fails is a failed check, never
/// "nothing left": an unreachable engine would otherwise pass every leftover check.
pub fn docker_ids(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output().expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker failed, so nothing can be said of what is left: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Containers, volumes and networks labelled `label` (`kiln.job=<id>`, `kiln.pid=<pid>`).
pub fn labelled(label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    let mut found = Vec::new();
    for list in [
        &["ps", "-a", "-q"][..],
        &["volume", "ls", "-q"][..],
        &["network", "ls", "-q"][..],
    ] {
        found.extend(docker_ids(
            Command::new("docker")
                .args(list)
                .args(["--filter", &filter]),
        ));
    }
    found
}

/// Containers, volumes and networks still labelled with `job`.
pub fn leftovers(job: &str) -> Vec<String> {
    labelled(&format!("kiln.job={job}"))
}

/// What the kiln process `pid` left once it ended: everything labelled with its pid, pooled
/// volume holders (`kiln.job=shared`) included.
pub fn left_by(pid: u32) -> Vec<String> {
    labelled(&format!("kiln.pid={pid}"))
}

/// Makes the folder `dir` a git repository with everything in it committed on `main`.
pub fn commit_folder(dir: &Path) -> (git2::Repository, git2::Oid) {
    let repo =
        git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))
            .unwrap();
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("test", "test@localhost").unwrap();
    let commit = repo
        .commit(Some("HEAD"), &sig, &sig, "base", &tree, &[])
        .unwrap();
    drop(tree);
    (repo, commit)
}

/// The greeting example's repository, shared by several tests.
pub const HELLO_FILES: &[(&str, &str)] = &[
    ("greet.sh", "#!/bin/sh\necho \"Hello, world!\"\n"),
    (
        "test.sh",
        "want='Hello, kiln!'\ngot=$(sh greet.sh)\n[ \"$got\" = \"$want\" ] && exit 0\necho \"EXPECTED_GREETING=$want\"\nexit 1\n",
    ),
];

/// The blob at `path` on `refname` of the repository at `repo`, as text.
pub fn file_on(repo: &Path, refname: &str, path: &str) -> String {
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

/// The default policy bundle (the seed article's review_config.yaml).
pub fn default_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/bundles/default.toml")
}

/// An HTTPS server on a loopback address standing in for a model API: its certificate (for
/// `host`) is from a test CA the operator config can trust (`[egress] upstream_ca`); it
/// records each request (head and body) and answers with what `answer` makes of it.
pub struct HttpsStandIn {
    pub port: u16,
    pub ca_pem: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl HttpsStandIn {
    pub fn start(
        host: &str,
        bind: std::net::SocketAddr,
        answer: fn(head: &str, body: &str) -> (String, String),
    ) -> HttpsStandIn {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // kiln's own CA type makes a fine throwaway CA for the server; kiln checks the chain
        // against it as `[egress] upstream_ca`, like any operator CA.
        let ca = kiln::egress::JobCa::new("test stand-in", &[host.to_string()]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(host).unwrap());
        let listener = std::net::TcpListener::bind(bind).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        continue;
                    };
                    let Ok(mut tls) = acceptor.accept(conn).await else {
                        continue;
                    };
                    let mut got = Vec::new();
                    let mut buf = [0u8; 16 << 10];
                    let (head, body) = loop {
                        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&got[..end]).into_owned();
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    let (name, value) = l.split_once(':')?;
                                    name.eq_ignore_ascii_case("content-length")
                                        .then(|| value.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            // A chunked body (kept as framed) ends with its last, empty chunk.
                            let chunked = head
                                .to_ascii_lowercase()
                                .contains("transfer-encoding: chunked");
                            if chunked && got.ends_with(b"0\r\n\r\n") {
                                let body = String::from_utf8_lossy(&got[end + 4..]).into_owned();
                                break (head, body);
                            }
                            if !chunked && got.len() >= end + 4 + length {
                                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length])
                                    .into_owned();
                                break (head, body);
                            }
                        }
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break (String::new(), String::new()),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    };
                    if head.is_empty() {
                        continue;
                    }
                    let (content_type, reply) = answer(&head, &body);
                    recorded.lock().unwrap().push((head, body));
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        });
        HttpsStandIn {
            port,
            ca_pem: ca.cert_pem().to_string(),
            requests,
        }
    }

    /// The value of header `name` in each request so far.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(head, _)| {
                head.lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Fails (never skips) when `image` is not on the machine.
pub fn require_image(image: &str, recipe: &str) {
    let out = Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "{image} is missing: run `cargo run -- image build {recipe}` (as .ci/run does)"
    );
}

/// Runs `cmd` to its end, watching its resident memory: its exit status, its stderr, and the
/// peak resident size it reached (VmHWM, KiB), read every 20 ms while it runs.
pub fn peak_memory(cmd: &mut Command) -> (std::process::ExitStatus, String, u64) {
    peak_memory_with(cmd, std::process::Stdio::null())
}

/// [`peak_memory`], with the child's stdout going to `stdout`.
pub fn peak_memory_with(
    cmd: &mut Command,
    stdout: std::process::Stdio,
) -> (std::process::ExitStatus, String, u64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln binary runs");
    // Read stderr as it comes, so a chatty child never blocks on a full pipe.
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        let _ = pipe.read_to_string(&mut stderr);
        stderr
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status, reader.join().expect("the reader ends"), peak_kib)
}
