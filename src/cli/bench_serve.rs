//! `kiln bench serve`: many trivial jobs through a real `kiln serve` (this binary, a temporary
//! state folder) at concurrency 2, against a plain `xargs -P2` loop of `docker run --rm` doing the
//! same two containers per job, in the same run; then the server's memory with 1,000 jobs queued.
//! With `--store`, the same jobs through a server on a shared PostgreSQL, and each store's claim
//! latency with 10,000 jobs queued.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::store::{End, Location, NewJob, State, Store};
use kiln::{Error, ExitCode};
use serde_json::Value;

const IMAGE: &str = kiln::images::BUSYBOX;

/// A server this benchmark started, killed when dropped.
struct Served {
    child: Child,
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    async fn start(state: &Path, extra: &[&str]) -> Result<Served, Error> {
        let exe = std::env::current_exe().map_err(Error::io("cannot find this binary"))?;
        let child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("cannot start kiln serve"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("address").exists() {
            if Instant::now() > deadline {
                return Err(Error::Internal("kiln serve did not start".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let read = |name: &str| {
            std::fs::read_to_string(state.join(name))
                .map(|s| s.trim().to_string())
                .map_err(Error::io(format!("cannot read the server's {name}")))
        };
        Ok(Served {
            url: read("address")?,
            token: read("token")?,
            child,
            http: reqwest::Client::new(),
        })
    }

    async fn submit(&self, job: String) -> Result<String, Error> {
        let answer: Value = self
            .http
            .post(format!("{}/jobs", self.url))
            .bearer_auth(&self.token)
            .body(job)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Error::Internal(format!("submit: {e}")))?
            .json()
            .await
            .map_err(|e| Error::Internal(format!("submit: {e}")))?;
        Ok(answer["id"].as_str().unwrap_or_default().to_string())
    }

    async fn count(&self, state: &str) -> Result<usize, Error> {
        let answer: Value = self
            .http
            .get(format!("{}/jobs?state={state}&limit=10000", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Error::Internal(format!("list: {e}")))?
            .json()
            .await
            .map_err(|e| Error::Internal(format!("list: {e}")))?;
        Ok(answer["jobs"].as_array().map_or(0, |j| j.len()))
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
            })
            .unwrap_or(0)
    }
}

/// Job `n`: a generator that writes its own file, and a test that passes.
fn job(repo: &Path, n: usize, sleep: u32) -> String {
    format!(
        "repo = {:?}\nbranch = \"factory/bench-{n}\"\nprompt = \"bench\"\ntouches = [\"f{n}.txt\"]\n\n\
         [generate]\nimage = \"{IMAGE}\"\ncommand = [\"sh\", \"-c\", \"sleep {sleep}; echo {n} > /kiln/workspace/f{n}.txt\"]\n\n\
         [test]\nimage = \"{IMAGE}\"\ncommand = [\"true\"]\n",
        repo.display().to_string()
    )
}

pub async fn exec(jobs: usize, queued: usize, store: Option<String>) -> Result<ExitCode, Error> {
    if jobs == 0 {
        return Err(Error::Usage("--jobs must be at least 1".into()));
    }
    // A store that cannot be used is found before the long runs.
    if let Some(url) = &store {
        shared_location(url)?;
    }
    let dir = tempfile::tempdir().map_err(Error::io("cannot make a temporary folder"))?;
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).map_err(Error::io("cannot make the repository"))?;
    std::fs::write(repo.join("README"), "bench\n").map_err(Error::io("cannot write"))?;

    // The baseline: the same two containers per job, by the docker CLI, two jobs at a time.
    let started = Instant::now();
    let script = format!(
        "docker run --rm --network none {IMAGE} sh -c 'echo $0 > /tmp/f' >/dev/null && docker run --rm --network none {IMAGE} true"
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "seq {jobs} | xargs -P2 -I{{}} sh -c \"{script}\" {{}}"
        ))
        .status()
        .map_err(Error::io("cannot run the baseline loop"))?;
    if !status.success() {
        return Err(Error::Internal("the docker run baseline failed".into()));
    }
    let bare = started.elapsed();

    let root = dir
        .path()
        .to_str()
        .ok_or_else(|| Error::Internal("a temp path that is not UTF-8".into()))?;
    let served = Served::start(
        &dir.path().join("state"),
        &["--concurrency", "2", "--per-repo", "2", "--repos", root],
    )
    .await?;
    let started = Instant::now();
    for n in 0..jobs {
        served.submit(job(&repo, n, 0)).await?;
    }
    while served.count("succeeded").await? + served.count("failed").await? < jobs {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let through_kiln = started.elapsed();
    let failed = served.count("failed").await?;
    drop(served);
    let shared = match &store {
        Some(url) => {
            Some(through_shared(url, &dir.path().join("state-shared"), &repo, root, jobs).await?)
        }
        None => None,
    };

    // Memory: one job holds the repository (it touches everything), the rest wait behind it.
    let served = Served::start(
        &dir.path().join("state-queued"),
        &["--concurrency", "1", "--repos", root],
    )
    .await?;
    let idle = served.rss_kib();
    let blocker = job(&repo, 0, 600).replace("touches = [\"f0.txt\"]", "touches = [\"**\"]");
    served.submit(blocker).await?;
    // Its generator running, so that the server is killed with everything made (gc finds all).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !generator_running() {
        if Instant::now() > deadline {
            return Err(Error::Internal("the blocking job did not start".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 1..=queued {
        served.submit(job(&repo, n, 0)).await?;
    }
    let waiting = served.count("queued").await?;
    let rss = served.rss_kib();
    drop(served);
    let _ = Command::new(std::env::current_exe().map_err(Error::io("cannot find this binary"))?)
        .args(["gc", "--all"])
        .stderr(Stdio::null())
        .status();

    let per_minute = |d: Duration| jobs as f64 / d.as_secs_f64() * 60.0;
    println!("{jobs} trivial jobs (generator + test container each), concurrency 2, image {IMAGE}");
    println!(
        "  kiln serve (clone, 2 sandboxed stages, diff, publish, audit)  {:>7.1} s   {:>6.1} jobs/min   {failed} failed",
        through_kiln.as_secs_f64(),
        per_minute(through_kiln)
    );
    println!(
        "  xargs -P2 of 2x docker run --rm --network none              {:>7.1} s   {:>6.1} jobs/min",
        bare.as_secs_f64(),
        per_minute(bare)
    );
    println!(
        "ratio kiln/bare throughput: {:.2}",
        per_minute(through_kiln) / per_minute(bare)
    );
    if let Some((took, failed)) = shared {
        println!(
            "  kiln serve on the shared PostgreSQL store                   {:>7.1} s   {:>6.1} jobs/min   {failed} failed",
            took.as_secs_f64(),
            per_minute(took)
        );
        println!(
            "ratio PostgreSQL/SQLite throughput: {:.2}",
            per_minute(took) / per_minute(through_kiln)
        );
    }
    println!(
        "server RSS: idle {:.1} MiB, with {waiting} jobs queued {:.1} MiB",
        idle as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    if let Some(url) = &store {
        let sqlite = Location::Sqlite(dir.path().join("claims.db"));
        let shared = shared_location(url)?;
        for (name, at) in [("SQLite", sqlite), ("PostgreSQL", shared)] {
            let (p50, p99) = tokio::task::block_in_place(|| claim_latency(&at))?;
            println!(
                "claim latency, {CLAIM_QUEUE} jobs queued, {name}: p50 {:.2} ms, p99 {:.2} ms",
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0
            );
        }
    }
    Ok(ExitCode::Success)
}

/// Jobs queued while claim latency is measured.
const CLAIM_QUEUE: usize = 10_000;
/// Claims timed.
const CLAIMS: usize = 200;

fn shared_location(url: &str) -> Result<Location, Error> {
    let at = Location::resolve(
        Some(url),
        &kiln::config::StoreConfig::default(),
        Path::new(""),
    )
    .map_err(|e| Error::Usage(e.to_string()))?;
    // The PostgreSQL client runs a runtime of its own: not on this one's threads.
    tokio::task::block_in_place(|| Store::migrate(&at))?;
    Ok(at)
}

/// The same jobs through one server on the shared store at `url`: how long, how many failed.
async fn through_shared(
    url: &str,
    state: &Path,
    repo: &Path,
    root: &str,
    jobs: usize,
) -> Result<(Duration, usize), Error> {
    shared_location(url)?;
    let served = Served::start(
        state,
        &[
            "--concurrency",
            "2",
            "--per-repo",
            "2",
            "--repos",
            root,
            "--store",
            url,
        ],
    )
    .await?;
    let before = served.count("succeeded").await? + served.count("failed").await?;
    let failed_before = served.count("failed").await?;
    let started = Instant::now();
    for n in 0..jobs {
        served.submit(job(repo, n, 0)).await?;
    }
    while served.count("succeeded").await? + served.count("failed").await? < before + jobs {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((
        started.elapsed(),
        served.count("failed").await? - failed_before,
    ))
}

/// p50 and p99 of one claim (of one job, then ended) on the store at `at`, with
/// [`CLAIM_QUEUE`] jobs queued on 100 repositories; the jobs it queued are cancelled after.
fn claim_latency(at: &Location) -> Result<(Duration, Duration), Error> {
    let mut store = Store::open(at)?;
    let ids: Vec<String> = (0..CLAIM_QUEUE)
        .map(|_| kiln::model::JobId::new().to_string())
        .collect();
    for (n, id) in ids.iter().enumerate() {
        store.submit(NewJob {
            id,
            priority: (n % 5) as i64,
            repo: &format!("/kiln-bench-claims/{}", n % 100),
            touches: &[format!("f{n}")],
            spec: "",
            spec_format: kiln::job::Format::Toml,
            trace_parent: None,
        })?;
    }
    let limits = kiln::scheduler::Limits {
        global: 1,
        per_repo: 1,
        aging: Duration::from_secs(60),
    };
    let mut took = Vec::with_capacity(CLAIMS);
    let end = End {
        state: State::Succeeded,
        status: None,
        exit_code: 0,
        reason: "benchmark",
    };
    for _ in 0..CLAIMS {
        let started = Instant::now();
        let claimed = store.claim("kiln-bench", limits, Duration::from_secs(60))?;
        took.push(started.elapsed());
        for row in claimed.started {
            store.finish(&row.id, "kiln-bench", &end)?;
        }
    }
    for id in &ids {
        store.cancel(id)?;
    }
    took.sort();
    Ok((took[CLAIMS / 2], took[CLAIMS * 99 / 100]))
}

/// Whether a kiln generator container is running (the benchmark's server is the only kiln).
fn generator_running() -> bool {
    Command::new("docker")
        .args(["ps", "-q", "--filter", "label=kiln.stage=generate"])
        .output()
        .is_ok_and(|out| !out.stdout.is_empty())
}
