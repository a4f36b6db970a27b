//! `kiln serve`: many jobs on one machine, or on many sharing one PostgreSQL store. Jobs arrive
//! through the HTTP API (`api`), wait in the durable store, and the scheduler claims them within
//! the limits; each runs as `kiln run` would, with its artifacts under the state folder (and,
//! with a shared store, kept in it: `kept`). A running job is held under a lease its heartbeat
//! renews (`lease`). Startup reaps what a dead server left in Docker and applies the store's
//! restart rule to the jobs this server left running.

mod api;
mod console;
mod decide;
mod kept;
mod lease;
mod metrics;
mod schedule;
mod shutdown;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::audit::{AuditLog, Event, JobState};
use crate::config::Config;
use crate::error::Error;
use crate::model::JobId;
use crate::model::fs::{create_private_dir, write_atomic};
use crate::policy::Gate;
use crate::publish::Destination;
use crate::run::Context;
use crate::sandbox::Sandbox;
use crate::scheduler;
use crate::store::{Location, Store, StoreError};

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
    /// The job store: SQLite in the state folder, or a PostgreSQL shared with other servers.
    pub store: Location,
    /// How long a running job's lease lasts without a heartbeat.
    pub lease: Duration,
    /// The bearer token's file, shared by the servers of one store; default: the state
    /// folder's `token`, made once.
    pub token_file: Option<PathBuf>,
    /// Where other servers reach this one's API (a running job's live log is asked of the
    /// server running it); default: the address it listens on.
    pub advertise: Option<String>,
}

/// A job this server runs: its task, and when it was claimed.
pub(crate) struct Task {
    abort: tokio::task::AbortHandle,
    since: Instant,
}

/// What every request handler and job task shares.
pub(crate) struct Server {
    store: Mutex<Store>,
    /// This server's id in the store (its state folder's `server-id`, kept across restarts).
    id: String,
    /// Whether the store is shared with other servers (PostgreSQL).
    shared: bool,
    lease: Duration,
    /// When a heartbeat last renewed this server's leases.
    renewed: Mutex<Instant>,
    /// The operator config, the secrets, and the state folder's audit log.
    ctx: Context,
    sandbox: Sandbox,
    gate: Option<Arc<Gate>>,
    token: String,
    /// The console's sign-in sessions, signed with the token.
    sessions: console::Sessions,
    /// Whether clients reach this server over https (`--advertise https://...`): the console's
    /// cookie is then `Secure`.
    https: bool,
    state_dir: PathBuf,
    limits: scheduler::Limits,
    out: Option<Destination>,
    repos: Vec<PathBuf>,
    /// The tasks of running jobs, to abort on cancel or a lost lease.
    running: Mutex<HashMap<String, Task>>,
    /// Set once the server is told to stop: no job starts after it.
    stopping: AtomicBool,
    wake: Notify,
    metrics: metrics::Metrics,
}

impl Server {
    fn artifacts(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    /// Whether `given` is this server's token (compared in constant time).
    fn token_is(&self, given: &str) -> bool {
        let expected = self.token.as_bytes();
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
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

    /// Runs `f` on the store, off the async threads' toes (SQLite syncs to disk, PostgreSQL is
    /// a round trip away).
    fn db<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, Error> {
        // Waiting for the lock blocks too: it happens inside block_in_place with the query.
        tokio::task::block_in_place(|| self.db_blocking(f))
    }

    /// [`Server::db`] from a thread that may block.
    fn db_blocking<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, Error> {
        let mut store = self.store.lock().expect("the store lock is never poisoned");
        Ok(f(&mut store)?)
    }

    /// The ids of the jobs this server runs.
    fn running_ids(&self) -> Vec<String> {
        self.running
            .lock()
            .expect("the running lock is never poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Stops job `id`'s task, if this server runs it, and removes its containers; true if it
    /// ran here.
    async fn stop_job(&self, id: &str) -> Result<bool, Error> {
        let task = self
            .running
            .lock()
            .expect("the running lock is never poisoned")
            .remove(id);
        if let Some(task) = &task {
            task.abort.abort();
        }
        if let Some(job) = JobId::parse(id) {
            self.sandbox.reap_job(&job).await?;
        }
        Ok(task.is_some())
    }

    /// Appends a `job.state` record about `job` to the audit log.
    async fn record(&self, job: &JobId, state: JobState) -> Result<(), Error> {
        Ok(self.ctx.record(job, Event::JobState(state)).await?)
    }
}

/// Makes the state folder (0700), its token file (0600, made once) and store, reaps what a dead
/// server left, then serves until the process ends.
/// Workspace volumes per holder container under serve: twelve jobs' generators and tests share
/// one holder, so the holder's start is paid once for them (`kiln bench serve`: 6 gave 1.09 the
/// bare loop's throughput, 12 from 1.10 to 1.33, 24 from 1.11 to 1.55); a used volume is
/// emptied as it is given up, so its files do not wait for the batch's last volume.
const VOLUMES_PER_HOLDER: usize = 24;

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
    let token = match &options.token_file {
        Some(path) => shared_token(path)?,
        None => token(&dir.join("token"))?,
    };
    let id = server_id(&dir.join("server-id"))?;
    let shared = options.store.is_shared();
    // Servers sharing a store share its audit chain; a server alone keeps it in its folder.
    config.audit_log = Some(dir.join("audit.jsonl"));
    let mut ctx = Context::open(config)?;
    // The PostgreSQL client blocks on its own runtime: never on this one's threads.
    let mut store = tokio::task::block_in_place(|| Store::open(&options.store))?;
    if let Location::Postgres(target) = &options.store {
        let audit = tokio::task::block_in_place(|| AuditLog::shared(target))?;
        ctx.audit = Some(audit.redacting(ctx.redactor().clone()));
    }
    ctx.server = Some(id.clone());
    let sandbox = Sandbox::connect()
        .await?
        .with_volumes_per_holder(VOLUMES_PER_HOLDER);
    // An engine that cannot confine jobs as configured is refused before any is taken.
    sandbox
        .require_confinement(&ctx.config.sandbox.runtimes())
        .await?;
    // A dead server's containers go first, then its jobs follow the restart rule.
    let reaped = sandbox.gc(false).await?;
    let recovered = tokio::task::block_in_place(|| store.recover(&id))?;
    for r in &recovered {
        let Some(job) = JobId::parse(&r.id) else {
            continue;
        };
        let state = JobState {
            runs: Some(r.runs.into()),
            why: Some("server restart".into()),
            server: Some(id.clone()),
            ..JobState::to(r.to.as_str())
        };
        ctx.record(&job, Event::JobState(state)).await?;
    }
    let server = Arc::new(Server {
        store: Mutex::new(store),
        id,
        shared,
        lease: options.lease,
        renewed: Mutex::new(Instant::now()),
        ctx,
        sandbox,
        gate,
        sessions: console::Sessions::new(&token),
        https: options
            .advertise
            .as_deref()
            .is_some_and(|url| url.starts_with("https://")),
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
    if shared {
        let url = options
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{address}"));
        server.db(|s| match s.shared() {
            Some(pg) => pg.announce(&server.id, &url),
            None => Ok(()),
        })?;
    }
    eprintln!(
        "kiln serve: listening on http://{address}; server {}; store {}; state {}; {reaped} stale containers reaped, {} jobs recovered",
        server.id,
        options.store,
        dir.display(),
        recovered.len()
    );
    tokio::spawn(schedule::schedule(server.clone()));
    tokio::spawn(lease::heartbeat(server.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut until_stopped = stopped.clone();
    let http = axum::serve(
        listener,
        api::router(server.clone()).merge(console::router(server.clone())),
    )
    .with_graceful_shutdown(async move {
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
    let token = random_hex(32)?;
    write_private(path, &token)?;
    Ok(token)
}

/// The token the servers of one store share, from the file the operator made.
fn shared_token(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(Error::io(format!(
        "cannot read the token file {}",
        path.display()
    )))?;
    let token = text.trim().to_string();
    if token.len() < 32 {
        return Err(Error::Usage(format!(
            "--token-file {}: a token must be at least 32 characters",
            path.display()
        )));
    }
    Ok(token)
}

/// This server's id, kept in `path` (made once): the host's name and 8 random hex digits.
fn server_id(path: &Path) -> Result<String, Error> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kiln".into());
    let id = format!("{host}-{}", random_hex(4)?);
    write_private(path, &id)?;
    Ok(id)
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> Result<String, Error> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(Error::io("cannot read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` and a newline to `path`, mode 0600.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())
        .map_err(Error::io(format!("cannot write {}", path.display())))
}
