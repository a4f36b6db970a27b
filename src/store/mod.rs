//! The durable job queue for `kiln serve`: an embedded SQLite database (WAL) under the state
//! folder. Every state change is committed before kiln acts on it, so a server killed at any
//! moment loses no accepted job; [`Store::recover`] applies the restart rule to jobs a dead
//! server left running.
//!
//! A job moves `queued` → `running` → `succeeded` | `failed` | `escalated` | `awaiting_review` |
//! `rejected` | `cancelled`; an escalated or awaiting job may still be approved (→ `succeeded`)
//! or rejected.

mod schema;
mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub use schema::VERSION as SCHEMA_VERSION;
pub use state::State;

use crate::job::Format;
use crate::model::time::now_ms;
use crate::model::{Phase, Status};

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
    #[serde(skip)]
    pub spec: String,
    #[serde(skip)]
    pub spec_format: Format,
}

impl JobRow {
    /// How long it has waited in the queue, at `now_ms`.
    pub fn waited(&self, now_ms: i64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.submitted_ms).max(0) as u64)
    }
}

/// What a restart did to a job a dead server left running.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Recovered {
    pub id: String,
    pub to: State,
    pub runs: u32,
}

/// The store failed: the machine's fault (a disk full, a file kiln cannot open), not the job's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the job store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error("job store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "the job store is at schema version {found}, newer than this kiln knows ({known}); run the kiln that made it, or a newer one"
    )]
    TooNew { found: u32, known: u32 },
    #[error("job store: job {0} is not {1}")]
    WrongState(String, &'static str),
}

/// The job store: one connection, used from one place at a time.
pub struct Store {
    db: Connection,
}

/// A new job for [`Store::submit`].
pub struct NewJob<'a> {
    pub id: &'a str,
    pub priority: i64,
    pub repo: &'a str,
    pub touches: &'a [String],
    pub spec: &'a str,
    pub spec_format: Format,
}

impl Store {
    /// Opens (or creates) the store at `path`, in WAL mode with full syncs: a committed change
    /// survives the process and the machine.
    /// A store of an older schema is migrated; one newer than this kiln is refused.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let opened = || -> Result<Store, StoreError> {
            let mut db = Connection::open(path)?;
            db.pragma_update(None, "journal_mode", "WAL")?;
            db.pragma_update(None, "synchronous", "FULL")?;
            db.busy_timeout(Duration::from_secs(10))?;
            schema::migrate(&mut db)?;
            Ok(Store { db })
        };
        opened().map_err(|e| StoreError::Open {
            path: path.into(),
            source: Box::new(e),
        })
    }

    /// Accepts a job: once this returns, it is on disk.
    pub fn submit(&self, job: NewJob<'_>) -> Result<(), StoreError> {
        let touches = serde_json::to_string(job.touches).expect("strings serialize");
        self.db.execute(
            "INSERT INTO jobs (id, state, priority, submitted_ms, repo, touches, spec, spec_format)
             VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.id,
                job.priority,
                now_ms(),
                job.repo,
                touches,
                job.spec,
                job.spec_format
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        Ok(self
            .db
            .query_row("SELECT * FROM jobs WHERE id = ?1", [id], row)
            .optional()?)
    }

    /// Jobs in `state` (all when `None`), oldest first, at most `limit`.
    pub fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        let mut query = self.db.prepare(
            "SELECT * FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY submitted_ms, id LIMIT ?2",
        )?;
        let rows = query
            .query_map(params![state, limit as i64], row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Marks a queued job running (its start counted), before it is started.
    pub fn start(&self, id: &str) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "UPDATE jobs SET state = 'running', started_ms = ?2, runs = runs + 1
             WHERE id = ?1 AND state = 'queued'",
            params![id, now_ms()],
        )?;
        if changed == 0 {
            return Err(StoreError::WrongState(id.into(), "queued"));
        }
        Ok(())
    }

    /// Where a running job is: its stage, and its attempt (0 keeps the one recorded).
    pub fn progress(&self, id: &str, attempt: u32, stage: Phase) -> Result<(), StoreError> {
        self.db.execute(
            "UPDATE jobs SET attempt = CASE WHEN ?2 > 0 THEN ?2 ELSE attempt END, stage = ?3
             WHERE id = ?1 AND state = 'running'",
            params![id, attempt, stage],
        )?;
        Ok(())
    }

    /// Ends a running job in `state`, with the report's status (none when it was cancelled), exit
    /// code and reason.
    pub fn finish(
        &self,
        id: &str,
        state: State,
        status: Option<Status>,
        exit_code: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "UPDATE jobs SET state = ?2, status = ?3, exit_code = ?4, reason = ?5, finished_ms = ?6,
                             stage = NULL
             WHERE id = ?1 AND state = 'running'",
            params![id, state, status, exit_code, reason, now_ms()],
        )?;
        if changed == 0 {
            return Err(StoreError::WrongState(id.into(), "running"));
        }
        Ok(())
    }

    /// Cancels a job: a queued one at once; a running one is marked, and the server stops it.
    /// Returns the state it is in now.
    pub fn cancel(&self, id: &str) -> Result<Option<State>, StoreError> {
        let tx = self.db.unchecked_transaction()?;
        let state: Option<State> = tx
            .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        let Some(state) = state else {
            return Ok(None);
        };
        let now = match state {
            State::Queued => {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_ms = ?2, reason = 'cancelled while queued'
                     WHERE id = ?1",
                    params![id, now_ms()],
                )?;
                State::Cancelled
            }
            State::Running => {
                tx.execute("UPDATE jobs SET cancel_asked = 1 WHERE id = ?1", [id])?;
                State::Running
            }
            other => other,
        };
        tx.commit()?;
        Ok(Some(now))
    }

    /// The restart rule, for jobs a dead server left `running`: each is requeued, keeping its
    /// count of starts, unless it was asked to cancel (→ `cancelled`) or has been started
    /// [`MAX_RUNS`] times already (→ `failed`, so that a job that kills its server cannot do so
    /// forever).
    pub fn recover(&self) -> Result<Vec<Recovered>, StoreError> {
        let tx = self.db.unchecked_transaction()?;
        let stranded: Vec<(String, u32, bool)> = {
            let mut query =
                tx.prepare("SELECT id, runs, cancel_asked FROM jobs WHERE state = 'running'")?;
            query
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?
                .collect::<Result<_, _>>()?
        };
        let mut recovered = Vec::new();
        for (id, runs, cancel_asked) in stranded {
            let (to, reason) = if cancel_asked {
                (
                    State::Cancelled,
                    "cancelled; the server stopped before the job did",
                )
            } else if runs >= MAX_RUNS {
                (State::Failed, "the server stopped during each of its runs")
            } else {
                (State::Queued, "")
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, stage = NULL, reason = NULLIF(?3, ''),
                                 finished_ms = CASE WHEN ?2 = 'queued' THEN NULL ELSE ?4 END
                 WHERE id = ?1",
                params![id, to, reason, now_ms()],
            )?;
            recovered.push(Recovered { id, to, runs });
        }
        tx.commit()?;
        Ok(recovered)
    }

    /// Records a human's decision on an escalated or awaiting job.
    pub fn decide(
        &self,
        id: &str,
        to: State,
        exit_code: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "UPDATE jobs SET state = ?2, exit_code = ?3, reason = ?4
             WHERE id = ?1 AND state IN ('escalated', 'awaiting_review')",
            params![id, to, exit_code, reason],
        )?;
        if changed == 0 {
            return Err(StoreError::WrongState(
                id.into(),
                "escalated or awaiting review",
            ));
        }
        Ok(())
    }

    /// How many jobs are in each state.
    pub fn counts(&self) -> Result<Vec<(State, i64)>, StoreError> {
        let mut query = self
            .db
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let counts = query
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(counts)
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let touches: String = r.get("touches")?;
    Ok(JobRow {
        id: r.get("id")?,
        state: r.get("state")?,
        priority: r.get("priority")?,
        submitted_ms: r.get("submitted_ms")?,
        started_ms: r.get("started_ms")?,
        finished_ms: r.get("finished_ms")?,
        repo: r.get("repo")?,
        touches: serde_json::from_str(&touches).unwrap_or_default(),
        runs: r.get("runs")?,
        attempt: r.get("attempt")?,
        stage: r.get("stage")?,
        status: r.get("status")?,
        exit_code: r.get("exit_code")?,
        reason: r.get("reason")?,
        cancel_asked: r.get::<_, i64>("cancel_asked")? != 0,
        spec: r.get("spec")?,
        spec_format: r.get("spec_format")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stage;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db")).unwrap();
        (dir, store)
    }

    fn submit(store: &Store, id: &str) {
        store
            .submit(NewJob {
                id,
                priority: 5,
                repo: "/r",
                touches: &["src/**".into()],
                spec: "repo = '/r'",
                spec_format: Format::Toml,
            })
            .unwrap();
    }

    #[test]
    fn a_job_moves_through_its_states_and_survives_reopening() {
        let (dir, store) = store();
        submit(&store, "a");
        store.start("a").unwrap();
        store.progress("a", 2, Phase::Stage(Stage::Test)).unwrap();
        assert!(
            store.start("a").is_err(),
            "a running job cannot start again"
        );
        drop(store);
        let store = Store::open(&dir.path().join("kiln.db")).unwrap();
        let job = store.get("a").unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempt, job.stage),
            (State::Running, 2, Some(Phase::Stage(Stage::Test)))
        );
        assert_eq!(job.touches, ["src/**"]);
        store
            .finish(
                "a",
                State::Succeeded,
                Some(Status::Succeeded),
                0,
                "tests passed",
            )
            .unwrap();
        let job = store.get("a").unwrap().unwrap();
        assert_eq!((job.state, job.exit_code), (State::Succeeded, Some(0)));
        assert!(store.get("nope").unwrap().is_none());
    }

    #[test]
    fn a_restart_requeues_stranded_jobs_keeping_their_runs_and_fails_repeat_offenders() {
        let (_dir, store) = store();
        for id in ["once", "thrice", "cancelled"] {
            submit(&store, id);
        }
        store.start("once").unwrap();
        store.start("cancelled").unwrap();
        store.cancel("cancelled").unwrap();
        for _ in 0..MAX_RUNS {
            store.start("thrice").unwrap();
            let recovered = store.recover().unwrap();
            if store.get("thrice").unwrap().unwrap().state != State::Queued {
                assert!(
                    recovered
                        .iter()
                        .any(|r| r.id == "thrice" && r.to == State::Failed)
                );
                break;
            }
        }
        let state = |id: &str| store.get(id).unwrap().unwrap();
        assert_eq!(state("thrice").state, State::Failed);
        assert_eq!(state("thrice").runs, MAX_RUNS);
        assert_eq!(state("once").state, State::Queued);
        assert_eq!(state("once").runs, 1);
        assert_eq!(state("cancelled").state, State::Cancelled);
    }

    #[test]
    fn cancelling_a_queued_job_is_immediate_and_a_running_one_is_asked() {
        let (_dir, store) = store();
        submit(&store, "q");
        submit(&store, "r");
        store.start("r").unwrap();
        assert_eq!(store.cancel("q").unwrap(), Some(State::Cancelled));
        assert_eq!(store.cancel("r").unwrap(), Some(State::Running));
        assert!(store.get("r").unwrap().unwrap().cancel_asked);
        assert_eq!(store.cancel("missing").unwrap(), None);
        assert_eq!(store.list(Some(State::Queued), 10).unwrap().len(), 0);
    }

    #[test]
    fn a_store_from_before_versions_is_adopted_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, priority INTEGER NOT NULL,
                 submitted_ms INTEGER NOT NULL, started_ms INTEGER, finished_ms INTEGER,
                 repo TEXT NOT NULL, touches TEXT NOT NULL, spec TEXT NOT NULL,
                 spec_format TEXT NOT NULL, runs INTEGER NOT NULL DEFAULT 0,
                 attempt INTEGER NOT NULL DEFAULT 0, stage TEXT, status TEXT, exit_code INTEGER,
                 reason TEXT, cancel_asked INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO jobs (id, state, priority, submitted_ms, repo, touches, spec, spec_format)
                 VALUES ('old', 'queued', 5, 1, '/r', '[]', 'x', 'toml');",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get("old").unwrap().unwrap().state, State::Queued);
        let version: u32 = store
            .db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        store
            .db
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let err = Store::open(&path).err().expect("a newer store is refused");
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(text.contains("newer than this kiln"), "{text}");
        assert!(text.contains("kiln.db"), "{text}");
    }

    #[test]
    fn a_value_the_store_does_not_know_is_an_error_not_a_guess() {
        let (_dir, store) = store();
        submit(&store, "x");
        store
            .db
            .execute("UPDATE jobs SET state = 'exploded' WHERE id = 'x'", [])
            .unwrap();
        assert!(store.get("x").is_err());
    }
}
