//! `kiln serve`: many jobs on one machine. Jobs arrive through the HTTP API (`api`), wait in the
//! durable store, and the scheduler starts them within the limits; each runs as `kiln run` would,
//! with its artifacts under the state folder. Startup reaps what a dead server left in Docker and
//! applies the store's restart rule.

mod api;
mod metrics;
mod schedule;
mod shutdown;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::audit::{Event, JobState};
use crate::config::Config;
use crate::error::Error;
use crate::model::JobId;
use crate::model::fs::{create_private_dir, write_atomic};
use crate::policy::Gate;
use crate::publish::Destination;
use crate::run::Context;
use crate::sandbox::Sandbox;
use crate::scheduler;
use crate::store::{Store, StoreError};

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
    /// On SIGTERM or SIGINT, how long running jobs get to end before they are stopped and
    /// handed back to the queue.
    pub grace: Duration,
}

/// What every request handler and job task shares.
pub(crate) struct Server {
    store: Mutex<Store>,
    /// The operator config, the secrets, and the state folder's audit log.
    ctx: Context,
    sandbox: Sandbox,
    gate: Option<Arc<Gate>>,
    token: String,
    state_dir: PathBuf,
    limits: scheduler::Limits,
    out: Option<Destination>,
    repos: Vec<PathBuf>,
    /// The tasks of running jobs, to abort on cancel.
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Set once the server is told to stop: no job starts after it.
    stopping: AtomicBool,
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
    fn db<T>(&self, f: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, Error> {
        // Waiting for the lock blocks too: it happens inside block_in_place with the query.
        Ok(tokio::task::block_in_place(|| {
            let store = self.store.lock().expect("the store lock is never poisoned");
            f(&store)
        })?)
    }

    /// Appends a `job.state` record about `job` to the audit log.
    async fn record(&self, job: &JobId, state: JobState) -> Result<(), Error> {
        Ok(self.ctx.record(job, Event::JobState(state)).await?)
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
    create_private_dir(dir).map_err(Error::io(format!(
        "cannot make the state folder {}",
        dir.display()
    )))?;
    let token = token(&dir.join("token"))?;
    config.audit_log = Some(dir.join("audit.jsonl"));
    let ctx = Context::open(config)?;
    let store = Store::open(&dir.join("kiln.db"))?;
    let sandbox = Sandbox::connect()
        .await?
        .with_volumes_per_holder(VOLUMES_PER_HOLDER);
    // An engine that cannot confine jobs as configured is refused before any is taken.
    sandbox
        .require_confinement(&ctx.config.sandbox.runtimes())
        .await?;
    // A dead server's containers go first, then its jobs follow the restart rule.
    let reaped = sandbox.gc(false).await?;
    let recovered = store.recover()?;
    for r in &recovered {
        let Some(job) = JobId::parse(&r.id) else {
            continue;
        };
        let state = JobState {
            runs: Some(r.runs.into()),
            why: Some("server restart".into()),
            ..JobState::to(r.to.as_str())
        };
        ctx.record(&job, Event::JobState(state)).await?;
    }
    let server = Arc::new(Server {
        store: Mutex::new(store),
        ctx,
        sandbox,
        gate,
        token,
        state_dir: dir.clone(),
        limits: options.limits,
        out: options.out.clone(),
        repos: options.repos.clone(),
        running: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        wake: Notify::new(),
        metrics: metrics::Metrics::default(),
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(Error::io(format!("cannot listen on {}", options.listen)))?;
    let address = listener
        .local_addr()
        .map_err(Error::io("cannot read the listening address"))?;
    // Written whole or not at all: a client reading it never sees half an address.
    write_atomic(
        &dir.join("address"),
        format!("http://{address}\n").as_bytes(),
    )
    .map_err(Error::io("cannot write the address file"))?;
    eprintln!(
        "kiln serve: listening on http://{address}; state {}; {reaped} stale containers reaped, {} jobs recovered",
        dir.display(),
        recovered.len()
    );
    tokio::spawn(schedule::schedule(server.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut until_stopped = stopped.clone();
    let http =
        axum::serve(listener, api::router(server.clone())).with_graceful_shutdown(async move {
            let _ = until_stopped.wait_for(|stop| *stop).await;
        });
    let mut http = tokio::spawn(std::future::IntoFuture::into_future(http));
    tokio::select! {
        () = shutdown::signalled() => {}
        ended = &mut http => {
            return match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::io("the server stopped")(e)),
                Err(e) => Err(Error::Join(e)),
            };
        }
    }
    // No new connection from here; requests under way get the grace period with the jobs.
    let _ = stop.send(true);
    shutdown::stop(&server, options.grace).await;
    http.abort();
    Ok(())
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
