//! `kiln serve`: many jobs on one machine. Jobs arrive through the HTTP API (`api`), wait in the
//! durable store, and the scheduler starts them within the limits; each runs as `kiln run` would,
//! with its artifacts under the state folder. Startup reaps what a dead server left in Docker and
//! applies the store's restart rule.

mod api;
mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::error::Error;
use crate::model::JobId;
use crate::job::Job;
use crate::policy::Gate;
use crate::publish::Destination;
use crate::run::{Progress, Report, RunOptions, Status};
use crate::sandbox::Sandbox;
use crate::scheduler::{self, Queued, Running, Touches};
use crate::store::{State, Store, now_ms};

/// How `kiln serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub limits: scheduler::Limits,
    /// Where every job's work branch is published (and merged), as the operator says; `None`:
    /// each job's own `repo.git` in its artifacts.
    pub out: Option<Destination>,
    /// The folders (canonical) whose repositories jobs may name; none: no job is accepted.
    pub repos: Vec<PathBuf>,
}

/// What every request handler and job task shares.
pub(crate) struct Server {
    store: Mutex<Store>,
    config: Config,
    sandbox: Sandbox,
    gate: Option<Arc<Gate>>,
    token: String,
    state_dir: PathBuf,
    limits: scheduler::Limits,
    out: Option<Destination>,
    repos: Vec<PathBuf>,
    audit: AuditLog,
    /// The tasks of running jobs, to abort on cancel.
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    wake: Notify,
    metrics: metrics::Metrics,
}

impl Server {
    fn artifacts(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    /// `repo` with every link resolved, when it lies under a folder the operator lets jobs
    /// name (`--repos`); otherwise why not, naming the field.
    fn allowed_repo(&self, repo: &Path) -> Result<PathBuf, String> {
        let real = std::fs::canonicalize(repo)
            .map_err(|e| format!("`repo`: cannot resolve {}: {e}", repo.display()))?;
        if self.repos.iter().any(|root| real.starts_with(root)) {
            return Ok(real);
        }
        if self.repos.is_empty() {
            return Err(
                "`repo`: this server accepts no repository; its operator names the \
                        folders jobs may use with `kiln serve --repos ROOT`"
                    .into(),
            );
        }
        let roots: Vec<String> = self.repos.iter().map(|r| r.display().to_string()).collect();
        Err(format!(
            "`repo`: {} is not under a folder this server accepts ({})",
            real.display(),
            roots.join(", ")
        ))
    }

    /// Runs `f` on the store, off the async threads' toes (SQLite syncs to disk).
    fn db<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError>,
    ) -> Result<T, Error> {
        // Waiting for the lock blocks too: it happens inside block_in_place with the query.
        tokio::task::block_in_place(|| {
            let store = self.store.lock().expect("the store lock is never poisoned");
            f(&store)
        })
        .map_err(|e| Error::Internal(e.to_string()))
    }

    fn record(&self, kind: &str, job: &str, data: serde_json::Value) -> Result<(), Error> {
        tokio::task::block_in_place(|| self.audit.append(kind, Some(job), data))?;
        Ok(())
    }
}

/// Makes the state folder (0700), its token file (0600, made once) and store, reaps what a dead
/// server left, then serves until the process ends.
/// Workspace volumes per holder container under serve: three jobs' generators and tests share
/// one holder, so the holder's start is paid once for them; a used volume's memory is freed
/// when its batch's last volume is.
const VOLUMES_PER_HOLDER: usize = 6;

pub async fn serve(
    options: ServeOptions,
    mut config: Config,
    gate: Option<Arc<Gate>>,
) -> Result<(), Error> {
    let dir = &options.state_dir;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(Error::io(format!(
                "cannot make the state folder {}",
                dir.display()
            )))?;
    }
    let token = token(&dir.join("token"))?;
    let audit_path = dir.join("audit.jsonl");
    config.audit_log = Some(audit_path.clone());
    let audit = AuditLog::open(&audit_path)?;
    let store = Store::open(&dir.join("kiln.db")).map_err(|e| Error::Internal(e.to_string()))?;
    let sandbox = Sandbox::connect()
        .await?
        .with_volumes_per_holder(VOLUMES_PER_HOLDER);
    // A dead server's containers go first, then its jobs follow the restart rule.
    let reaped = sandbox.gc(false).await?;
    let recovered = store
        .recover()
        .map_err(|e| Error::Internal(e.to_string()))?;
    for r in &recovered {
        audit.append(
            "job.state",
            Some(&r.id),
            serde_json::json!({"to": r.to.as_str(), "runs": r.runs, "why": "server restart"}),
        )?;
    }
    let server = Arc::new(Server {
        store: Mutex::new(store),
        config,
        sandbox,
        gate,
        token,
        state_dir: dir.clone(),
        limits: options.limits,
        out: options.out.clone(),
        repos: options.repos.clone(),
        audit,
        running: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        metrics: metrics::Metrics::default(),
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(Error::io(format!("cannot listen on {}", options.listen)))?;
    let address = listener
        .local_addr()
        .map_err(Error::io("cannot read the listening address"))?;
    std::fs::write(dir.join("address"), format!("http://{address}\n"))
        .map_err(Error::io("cannot write the address file"))?;
    eprintln!(
        "kiln serve: listening on http://{address}; state {}; {reaped} stale containers reaped, {} jobs recovered",
        dir.display(),
        recovered.len()
    );
    tokio::spawn(schedule(server.clone()));
    axum::serve(listener, api::router(server))
        .await
        .map_err(Error::io("the server stopped"))
}

/// The bearer token at `path`, made (32 random bytes, hex, mode 0600) if absent.
fn token(path: &Path) -> Result<String, Error> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_string();
        if token.len() >= 32 {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(Error::io("cannot read /dev/urandom"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    Ok(token)
}

/// The scheduler loop: on every wake (a submission, a job's end) and every second, start what
/// the limits and the queue allow.
async fn schedule(server: Arc<Server>) {
    loop {
        if let Err(e) = start_ready(&server) {
            tracing::error!("scheduler: {e}");
        }
        tokio::select! {
            () = server.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn start_ready(server: &Arc<Server>) -> Result<(), Error> {
    let now = now_ms();
    let queued_rows = server.db(|s| s.list(Some(State::Queued), 10_000))?;
    let running_rows = server.db(|s| s.list(Some(State::Running), 10_000))?;
    let queued: Vec<Queued> = queued_rows
        .iter()
        .map(|r| Queued {
            id: r.id.clone(),
            priority: r.priority,
            waited: r.waited(now),
            repo: r.repo.clone(),
            touches: Touches::new(r.touches.clone()),
        })
        .collect();
    let running: Vec<Running> = running_rows
        .iter()
        .map(|r| Running {
            repo: r.repo.clone(),
            touches: Touches::new(r.touches.clone()),
        })
        .collect();
    for picked in scheduler::pick(&queued, &running, server.limits) {
        let id = picked.id.clone();
        // Durable before it is acted on: the job is `running` on disk before its task starts.
        server.db(|s| s.start(&id))?;
        // Held while the task starts, so that a job ending at once is removed after it is added.
        let mut running = server
            .running
            .lock()
            .expect("the running lock is never poisoned");
        let task = tokio::spawn(run_one(server.clone(), id.clone()));
        running.insert(id, task.abort_handle());
    }
    Ok(())
}

/// Runs one started job to its end and records how it ended.
async fn run_one(server: Arc<Server>, id: String) {
    let (state, status, code, reason) = match run_job(&server, &id).await {
        Ok(report) => {
            server.metrics.observe(&report);
            let status = report.status;
            (
                state_of(status),
                status.as_str(),
                report.exit_code as i64,
                report.reason,
            )
        }
        Err(e) => (State::Failed, "error", e.exit_code() as i64, e.to_string()),
    };
    if let Some(job) = JobId::parse(&id) {
        let _ = server.sandbox.reap_job(&job).await;
    }
    server
        .running
        .lock()
        .expect("the running lock is never poisoned")
        .remove(&id);
    if let Err(e) = server.db(|s| s.finish(&id, state, status, code, &reason)) {
        tracing::warn!(job = id, "recording the end: {e}");
    }
    server.wake.notify_one();
}

async fn run_job(server: &Arc<Server>, id: &str) -> Result<Report, Error> {
    let row = server
        .db(|s| s.get(id))?
        .ok_or_else(|| Error::Internal(format!("job {id} vanished from the store")))?;
    let origin = PathBuf::from(format!("job {id}"));
    let mut job = Job::parse(
        &row.spec,
        row.spec_format == "json",
        None,
        &origin,
        &server.config,
    )?;
    job.id = JobId::parse(id).ok_or_else(|| Error::Internal(format!("bad job id {id}")))?;
    // Again at the start: the folder may have changed (a symlink swapped) since it was submitted.
    server.allowed_repo(job.repo.path()).map_err(Error::Usage)?;
    let opts = RunOptions {
        artifacts_root: server.artifacts(),
        out: server.out.clone(),
    };
    crate::run::preflight(&job, &server.config, &server.sandbox, &opts).await?;
    let observer = {
        let server = server.clone();
        let id = id.to_string();
        Arc::new(move |label: &str| {
            let (attempt, stage) = stage_of(label);
            let _ = server.db(|s| s.progress(&id, attempt, &stage));
        })
    };
    crate::run::run_job(
        &job,
        &server.config,
        &server.sandbox,
        &opts,
        server.gate.clone(),
        Progress::observed(observer),
    )
    .await
}

/// `attempt 2/3 · test` → (2, "test"); other labels (`workspace`, `publish`) keep attempt 0.
fn stage_of(label: &str) -> (u32, String) {
    if let Some(rest) = label.strip_prefix("attempt ")
        && let Some((n, stage)) = rest.split_once(" · ")
    {
        let attempt = n
            .split('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return (attempt, stage.to_string());
    }
    (0, label.to_string())
}

fn state_of(status: Status) -> State {
    match status {
        Status::Succeeded => State::Succeeded,
        Status::AwaitingReview => State::AwaitingReview,
        Status::PolicyEscalated
        | Status::ReviewEscalated
        | Status::MergeEscalated
        | Status::NotConverging => State::Escalated,
        Status::TestsFailed | Status::PolicyDenied | Status::Error => State::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_labels_become_attempt_and_stage() {
        assert_eq!(stage_of("attempt 2/3 · test"), (2, "test".to_string()));
        assert_eq!(stage_of("workspace"), (0, "workspace".to_string()));
    }
}
