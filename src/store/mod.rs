//! The durable job queue of `kiln serve`: SQLite under the state folder for one server
//! (`sqlite`), or one PostgreSQL many servers share (`postgres`). Every state change is committed
//! before kiln acts on it, so a server killed at any moment loses no accepted job.
//!
//! A job moves `queued` → `running` → `succeeded` | `failed` | `escalated` | `awaiting_review` |
//! `rejected` | `cancelled`; an escalated or awaiting job may still be approved (→ `succeeded`)
//! or rejected. A running job belongs to the server that claimed it, for as long as its lease
//! lasts: the server renews it with a heartbeat ([`Store::beat`]); a lease that runs out hands
//! the job back by the restart rule ([`restart_rule`]), and only the holder may end it.

mod location;
mod postgres;
mod postgres_schema;
mod sqlite;
mod sqlite_schema;
mod state;

use std::time::Duration;

use serde::Serialize;

pub use location::{Location, PgTarget};
pub use postgres::{JobFile, PgStore};
pub use sqlite_schema::VERSION as SCHEMA_VERSION;
pub use state::State;

use crate::job::Format;
use crate::model::{Phase, Status};
use crate::scheduler::{self, Queued, Running, Touches};

/// How many times a job may be started before a restart fails it instead of requeueing it.
pub const MAX_RUNS: u32 = 3;

/// A job as the store holds it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRow {
    pub id: String,
    pub state: State,
    pub priority: i64,
    pub submitted_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub repo: String,
    pub touches: Vec<String>,
    /// How many times it was started (a restart that finds it running counts one).
    pub runs: u32,
    pub attempt: u32,
    pub stage: Option<Phase>,
    /// The run report's status and exit code, once it ended.
    pub status: Option<Status>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub cancel_asked: bool,
    /// The server that runs it, or ran it last.
    pub server: Option<String>,
    #[serde(skip)]
    pub spec: String,
    #[serde(skip)]
    pub spec_format: Format,
    /// The trace the job's spans continue, as the client sent it (checked at submit).
    #[serde(skip)]
    pub trace_parent: Option<String>,
}

impl JobRow {
    /// How long it has waited in the queue, at `now_ms`.
    pub fn waited(&self, now_ms: i64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.submitted_ms).max(0) as u64)
    }
}

/// What the restart rule did to a job its server left running.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Recovered {
    pub id: String,
    pub to: State,
    pub runs: u32,
    /// The server that lost it.
    pub from: Option<String>,
}

/// What one claim did: the jobs this server starts now (already `running` under its lease), and
/// the jobs whose lease had run out, handed back first.
#[derive(Debug, Default)]
pub struct Claimed {
    pub started: Vec<JobRow>,
    pub recovered: Vec<Recovered>,
}

/// A running job whose lease a heartbeat renewed.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    pub id: String,
    pub cancel_asked: bool,
}

/// The store failed: the machine's fault (a disk full, a database gone), not the job's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the job store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("job store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("job store: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("the job store {0} cannot be reached")]
    Unreachable(String, #[source] Box<::postgres::Error>),
    #[error("store URL `{0}`: {1}")]
    Url(String, String),
    #[error(
        "the job store is at schema version {found}, newer than this kiln knows ({known}); run the kiln that made it, or a newer one"
    )]
    TooNew { found: u32, known: u32 },
    #[error(
        "the job store is at schema version {found}, and this kiln needs {known}: run `kiln store migrate --store URL` first"
    )]
    TooOld { found: u32, known: u32 },
    #[error("job store: job {0} is not {1}")]
    WrongState(String, &'static str),
    #[error("job store: {0}")]
    Value(String),
}

/// A new job for [`Store::submit`].
pub struct NewJob<'a> {
    pub id: &'a str,
    pub priority: i64,
    pub repo: &'a str,
    pub touches: &'a [String],
    pub spec: &'a str,
    pub spec_format: Format,
    /// The client's W3C `traceparent`, checked: the job's trace continues it.
    pub trace_parent: Option<&'a str>,
}

/// The job store: one connection, used from one place at a time.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<PgStore>),
}

/// Calls the same method on whichever store this is.
macro_rules! each {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens the store at `at`. A SQLite store is made or migrated as needed (it is this
    /// server's alone); a shared one must be at this kiln's schema (`kiln store migrate`), and
    /// one newer is refused.
    pub fn open(at: &Location) -> Result<Store, StoreError> {
        let opened = match at {
            Location::Sqlite(path) => sqlite::SqliteStore::open(path).map(Store::Sqlite),
            Location::Postgres(target) => {
                PgStore::open(target).map(|pg| Store::Postgres(Box::new(pg)))
            }
        };
        opened.map_err(|e| StoreError::Open {
            path: at.to_string(),
            source: Box::new(e),
        })
    }

    /// Sets up or upgrades the schema at `at`; returns the version found and the one now.
    pub fn migrate(at: &Location) -> Result<(u32, u32), StoreError> {
        let migrated = match at {
            Location::Sqlite(path) => sqlite::SqliteStore::migrate(path),
            Location::Postgres(target) => PgStore::migrate(target),
        };
        migrated.map_err(|e| StoreError::Open {
            path: at.to_string(),
            source: Box::new(e),
        })
    }

    /// The shared store, when this is one: where job files and the audit chain live.
    pub fn shared(&mut self) -> Option<&mut PgStore> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(pg) => Some(pg.as_mut()),
        }
    }

    /// Accepts a job: once this returns, it is durable.
    pub fn submit(&mut self, job: NewJob<'_>) -> Result<(), StoreError> {
        each!(self, s => s.submit(job))
    }

    pub fn get(&mut self, id: &str) -> Result<Option<JobRow>, StoreError> {
        each!(self, s => s.get(id))
    }

    /// Jobs in `state` (all when `None`), oldest first, at most `limit`.
    pub fn list(&mut self, state: Option<State>, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        each!(self, s => s.list(state, limit))
    }

    /// Jobs in `state` (all when `None`), newest first, at most `limit`.
    pub fn newest(
        &mut self,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<JobRow>, StoreError> {
        each!(self, s => s.newest(state, limit))
    }

    /// How many jobs are in each state.
    pub fn counts(&mut self) -> Result<Vec<(State, i64)>, StoreError> {
        each!(self, s => s.counts())
    }

    /// Claims for `server` the queued jobs it may start now, by the scheduler's rules over every
    /// server's running jobs, and marks them running (their start counted) under a lease of
    /// `lease`; jobs whose lease ran out are handed back first.
    pub fn claim(
        &mut self,
        server: &str,
        limits: scheduler::Limits,
        lease: Duration,
    ) -> Result<Claimed, StoreError> {
        each!(self, s => s.claim(server, limits, lease))
    }

    /// Renews the lease of every job `server` runs; returns them (a job missing from the answer
    /// is no longer the server's).
    pub fn beat(&mut self, server: &str, lease: Duration) -> Result<Vec<Held>, StoreError> {
        each!(self, s => s.beat(server, lease))
    }

    /// Whether `server` still holds `id` under a lease that has not run out.
    pub fn holds(&mut self, id: &str, server: &str) -> Result<bool, StoreError> {
        each!(self, s => s.holds(id, server))
    }

    /// Where a running job is: its stage, and its attempt (0 keeps the one recorded).
    pub fn progress(
        &mut self,
        id: &str,
        server: &str,
        attempt: u32,
        stage: Phase,
    ) -> Result<(), StoreError> {
        each!(self, s => s.progress(id, server, attempt, stage))
    }

    /// Ends a job `server` runs in `state`, with the report's status (none when it was
    /// cancelled), exit code and reason. A job the server no longer holds is not changed.
    pub fn finish(&mut self, id: &str, server: &str, end: &End<'_>) -> Result<(), StoreError> {
        each!(self, s => s.finish(id, server, end))
    }

    /// Cancels a job: a queued one at once; a running one is marked, and its server stops it.
    /// Returns the state it is in now.
    pub fn cancel(&mut self, id: &str) -> Result<Option<State>, StoreError> {
        each!(self, s => s.cancel(id))
    }

    /// The restart rule, for the jobs `server` (an earlier run of it) left `running`.
    pub fn recover(&mut self, server: &str) -> Result<Vec<Recovered>, StoreError> {
        each!(self, s => s.recover(server))
    }

    /// Takes the right to decide an escalated or awaiting job for `server`: one decision at a
    /// time, on whatever server it is asked.
    pub fn claim_decision(&mut self, id: &str, server: &str) -> Result<(), StoreError> {
        each!(self, s => s.claim_decision(id, server))
    }

    /// Gives back a decision that came to nothing.
    pub fn release_decision(&mut self, id: &str) -> Result<(), StoreError> {
        each!(self, s => s.release_decision(id))
    }

    /// Records a human's decision on an escalated or awaiting job.
    pub fn decide(&mut self, id: &str, end: &End<'_>) -> Result<(), StoreError> {
        each!(self, s => s.decide(id, end))
    }
}

/// How a job ended, for [`Store::finish`] and [`Store::decide`].
pub struct End<'a> {
    pub state: State,
    pub status: Option<Status>,
    pub exit_code: i64,
    pub reason: &'a str,
}

/// The restart rule for a job whose server stopped while it ran: requeued, keeping its count of
/// starts, unless it was asked to cancel (→ `cancelled`) or has been started [`MAX_RUNS`] times
/// already (→ `failed`, so that a job that kills its server cannot do so forever). The reason
/// is empty for a requeued job.
pub fn restart_rule(runs: u32, cancel_asked: bool) -> (State, &'static str) {
    if cancel_asked {
        (
            State::Cancelled,
            "cancelled; the server stopped before the job did",
        )
    } else if runs >= MAX_RUNS {
        (State::Failed, "the server stopped during each of its runs")
    } else {
        (State::Queued, "")
    }
}

/// The part of a queued or running row the claim reads.
struct Candidate {
    id: String,
    priority: i64,
    submitted_ms: i64,
    repo: String,
    touches: String,
}

impl Candidate {
    fn touches(&self) -> Touches {
        Touches::new(serde_json::from_str(&self.touches).unwrap_or_default())
    }
}

/// Which of `queued` to start, at most `free`, given `running` (every server's, with those
/// picked so far added to it).
fn plan(
    queued: &[Candidate],
    running: &mut Vec<Running>,
    free: usize,
    limits: scheduler::Limits,
    now_ms: i64,
) -> Vec<String> {
    let queued: Vec<Queued> = queued
        .iter()
        .map(|c| Queued {
            id: c.id.clone(),
            priority: c.priority,
            waited: Duration::from_millis(now_ms.saturating_sub(c.submitted_ms).max(0) as u64),
            repo: c.repo.clone(),
            touches: c.touches(),
        })
        .collect();
    let picked = scheduler::pick(&queued, running, free, limits);
    running.extend(picked.iter().map(|q| Running {
        repo: q.repo.clone(),
        touches: q.touches.clone(),
    }));
    picked.into_iter().map(|q| q.id.clone()).collect()
}
