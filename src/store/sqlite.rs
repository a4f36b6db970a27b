//! The store for one server: an embedded SQLite database (WAL, full syncs) in its state folder.
//! Leases are kept as the shared store keeps them, but only this server ever holds one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::sqlite_schema as schema;
use super::{
    Candidate, Claimed, End, Held, JobRow, NewJob, Recovered, State, StoreError, plan, restart_rule,
};
use crate::model::time::now_ms;
use crate::scheduler::{self, Running};

pub struct SqliteStore {
    db: Connection,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`, in WAL mode with full syncs: a committed change
    /// survives the process and the machine. A store of an older schema is migrated; one newer
    /// than this kiln is refused.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(Duration::from_secs(10))?;
        schema::migrate(&mut db)?;
        Ok(SqliteStore { db })
    }

    /// Makes or upgrades the store at `path`: the version found, and the one now.
    pub fn migrate(path: &Path) -> Result<(u32, u32), StoreError> {
        let mut db = Connection::open(path)?;
        let found = schema::migrate(&mut db)?;
        Ok((found, schema::VERSION))
    }

    pub fn submit(&mut self, job: NewJob<'_>) -> Result<(), StoreError> {
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

    pub fn get(&mut self, id: &str) -> Result<Option<JobRow>, StoreError> {
        Ok(self
            .db
            .query_row("SELECT * FROM jobs WHERE id = ?1", [id], row)
            .optional()?)
    }

    pub fn list(&mut self, state: Option<State>, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        let mut query = self.db.prepare(
            "SELECT * FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY submitted_ms, id LIMIT ?2",
        )?;
        let rows = query
            .query_map(params![state, limit as i64], row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn newest(
        &mut self,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<JobRow>, StoreError> {
        let mut query = self.db.prepare(
            "SELECT * FROM jobs WHERE (?1 IS NULL OR state = ?1)
             ORDER BY submitted_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = query
            .query_map(params![state, limit as i64], row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn counts(&mut self) -> Result<Vec<(State, i64)>, StoreError> {
        let mut query = self
            .db
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let counts = query
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(counts)
    }

    pub fn claim(
        &mut self,
        server: &str,
        limits: scheduler::Limits,
        lease: Duration,
    ) -> Result<Claimed, StoreError> {
        let tx = self.db.transaction()?;
        let now = now_ms();
        let candidates = |state: &str| -> Result<Vec<Candidate>, StoreError> {
            let mut query = tx.prepare(
                "SELECT id, priority, submitted_ms, repo, touches FROM jobs WHERE state = ?1",
            )?;
            let rows = query
                .query_map([state], |r| {
                    Ok(Candidate {
                        id: r.get(0)?,
                        priority: r.get(1)?,
                        submitted_ms: r.get(2)?,
                        repo: r.get(3)?,
                        touches: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        };
        let running = candidates("running")?;
        let queued = candidates("queued")?;
        let free = limits.global.saturating_sub(running.len());
        let mut busy: Vec<Running> = running
            .iter()
            .map(|c| Running {
                repo: c.repo.clone(),
                touches: c.touches(),
            })
            .collect();
        let ids = plan(&queued, &mut busy, free, limits, now);
        for id in &ids {
            tx.execute(
                "UPDATE jobs SET state = 'running', started_ms = ?2, runs = runs + 1, server = ?3,
                                 lease_until_ms = ?4
                 WHERE id = ?1 AND state = 'queued'",
                params![id, now, server, now + lease.as_millis() as i64],
            )?;
        }
        tx.commit()?;
        let mut started = Vec::new();
        for id in ids {
            started.extend(self.get(&id)?);
        }
        Ok(Claimed {
            started,
            recovered: Vec::new(),
        })
    }

    pub fn beat(&mut self, server: &str, lease: Duration) -> Result<Vec<Held>, StoreError> {
        let mut query = self.db.prepare(
            "UPDATE jobs SET lease_until_ms = ?2 WHERE state = 'running' AND server = ?1
             RETURNING id, cancel_asked",
        )?;
        let held = query
            .query_map(params![server, now_ms() + lease.as_millis() as i64], |r| {
                Ok(Held {
                    id: r.get(0)?,
                    cancel_asked: r.get::<_, i64>(1)? != 0,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(held)
    }

    pub fn holds(&mut self, id: &str, server: &str) -> Result<bool, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT 1 FROM jobs WHERE id = ?1 AND state = 'running' AND server = ?2
                 AND lease_until_ms > ?3",
                params![id, server, now_ms()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn progress(
        &mut self,
        id: &str,
        server: &str,
        attempt: u32,
        stage: crate::model::Phase,
    ) -> Result<(), StoreError> {
        self.db.execute(
            "UPDATE jobs SET attempt = CASE WHEN ?2 > 0 THEN ?2 ELSE attempt END, stage = ?3
             WHERE id = ?1 AND state = 'running' AND server = ?4",
            params![id, attempt, stage, server],
        )?;
        Ok(())
    }

    pub fn finish(&mut self, id: &str, server: &str, end: &End<'_>) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "UPDATE jobs SET state = ?2, status = ?3, exit_code = ?4, reason = ?5, finished_ms = ?6,
                             stage = NULL, lease_until_ms = NULL
             WHERE id = ?1 AND state = 'running' AND server = ?7",
            params![
                id,
                end.state,
                end.status,
                end.exit_code,
                end.reason,
                now_ms(),
                server
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::WrongState(id.into(), "running on this server"));
        }
        Ok(())
    }

    pub fn cancel(&mut self, id: &str) -> Result<Option<State>, StoreError> {
        let tx = self.db.transaction()?;
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

    /// The state folder is this server's alone: every job left running is its own.
    pub fn recover(&mut self, _server: &str) -> Result<Vec<Recovered>, StoreError> {
        let tx = self.db.transaction()?;
        let stranded: Vec<(String, u32, bool, Option<String>)> = {
            let mut query = tx.prepare(
                "SELECT id, runs, cancel_asked, server FROM jobs WHERE state = 'running'",
            )?;
            query
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?
        };
        let mut recovered = Vec::new();
        for (id, runs, cancel_asked, from) in stranded {
            let (to, reason) = restart_rule(runs, cancel_asked);
            tx.execute(
                "UPDATE jobs SET state = ?2, stage = NULL, reason = NULLIF(?3, ''),
                                 lease_until_ms = NULL,
                                 finished_ms = CASE WHEN ?2 = 'queued' THEN NULL ELSE ?4 END
                 WHERE id = ?1",
                params![id, to, reason, now_ms()],
            )?;
            recovered.push(Recovered { id, to, runs, from });
        }
        tx.commit()?;
        Ok(recovered)
    }

    pub fn claim_decision(&mut self, id: &str, server: &str) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "UPDATE jobs SET deciding = ?2
             WHERE id = ?1 AND state IN ('escalated', 'awaiting_review') AND deciding IS NULL",
            params![id, server],
        )?;
        if changed == 0 {
            return Err(StoreError::WrongState(
                id.into(),
                "escalated or awaiting review, with no decision under way",
            ));
        }
        Ok(())
    }

    pub fn release_decision(&mut self, id: &str) -> Result<(), StoreError> {
        self.db
            .execute("UPDATE jobs SET deciding = NULL WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn decide(&mut self, id: &str, end: &End<'_>) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "UPDATE jobs SET state = ?2, exit_code = ?3, reason = ?4, deciding = NULL
             WHERE id = ?1 AND state IN ('escalated', 'awaiting_review')",
            params![id, end.state, end.exit_code, end.reason],
        )?;
        if changed == 0 {
            return Err(StoreError::WrongState(
                id.into(),
                "escalated or awaiting review",
            ));
        }
        Ok(())
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
        server: r.get("server")?,
        spec: r.get("spec")?,
        spec_format: r.get("spec_format")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Location, MAX_RUNS, Store};
    use super::*;
    use crate::job::Format;
    use crate::model::{Phase, Stage, Status};

    const ME: &str = "server-a";
    const LEASE: Duration = Duration::from_secs(30);

    fn open(path: &Path) -> Store {
        Store::open(&Location::Sqlite(path.into())).unwrap()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("kiln.db"));
        (dir, store)
    }

    fn submit(store: &mut Store, id: &str, touches: &str) {
        store
            .submit(NewJob {
                id,
                priority: 5,
                repo: "/r",
                touches: &[touches.into()],
                spec: "repo = '/r'",
                spec_format: Format::Toml,
            })
            .unwrap();
    }

    fn limits(global: usize) -> scheduler::Limits {
        scheduler::Limits {
            global,
            per_repo: 4,
            aging: Duration::from_secs(60),
        }
    }

    fn claim(store: &mut Store, global: usize) -> Vec<String> {
        let claimed = store.claim(ME, limits(global), LEASE).unwrap();
        claimed.started.into_iter().map(|r| r.id).collect()
    }

    fn end(state: State) -> End<'static> {
        End {
            state,
            status: Some(Status::Succeeded),
            exit_code: 0,
            reason: "tests passed",
        }
    }

    #[test]
    fn a_job_moves_through_its_states_and_survives_reopening() {
        let (dir, mut store) = store();
        submit(&mut store, "a", "src/**");
        assert_eq!(claim(&mut store, 2), ["a"]);
        store
            .progress("a", ME, 2, Phase::Stage(Stage::Test))
            .unwrap();
        assert!(
            claim(&mut store, 2).is_empty(),
            "a running job is not claimed again"
        );
        assert!(store.holds("a", ME).unwrap());
        assert!(!store.holds("a", "server-b").unwrap());
        drop(store);
        let mut store = open(&dir.path().join("kiln.db"));
        let job = store.get("a").unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempt, job.stage, job.server.as_deref()),
            (State::Running, 2, Some(Phase::Stage(Stage::Test)), Some(ME))
        );
        assert_eq!(job.touches, ["src/**"]);
        assert!(
            store
                .finish("a", "server-b", &end(State::Succeeded))
                .is_err(),
            "only the holder ends a job"
        );
        store.finish("a", ME, &end(State::Succeeded)).unwrap();
        let job = store.get("a").unwrap().unwrap();
        assert_eq!((job.state, job.exit_code), (State::Succeeded, Some(0)));
        assert!(store.get("nope").unwrap().is_none());
    }

    #[test]
    fn the_newest_jobs_come_first_within_a_state() {
        let (_dir, mut store) = store();
        for id in ["a", "b", "c"] {
            submit(&mut store, id, &format!("{id}/**"));
        }
        store.cancel("c").unwrap();
        let ids = |rows: Vec<JobRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.newest(None, 2).unwrap()), ["c", "b"]);
        assert_eq!(
            ids(store.newest(Some(State::Queued), 5).unwrap()),
            ["b", "a"]
        );
    }

    #[test]
    fn a_claim_keeps_the_limits_and_overlapping_jobs_apart() {
        let (_dir, mut store) = store();
        submit(&mut store, "a", "src/**");
        submit(&mut store, "b", "src/lib.rs");
        submit(&mut store, "c", "docs/**");
        submit(&mut store, "d", "tests/**");
        assert_eq!(claim(&mut store, 2), ["a", "c"]);
        assert!(claim(&mut store, 2).is_empty(), "the server is full");
        store.finish("a", ME, &end(State::Succeeded)).unwrap();
        assert_eq!(claim(&mut store, 2), ["b"]);
        let held = store.beat(ME, LEASE).unwrap();
        let mut ids: Vec<&str> = held.iter().map(|h| h.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn a_restart_requeues_stranded_jobs_keeping_their_runs_and_fails_repeat_offenders() {
        let (_dir, mut store) = store();
        submit(&mut store, "thrice", "a/**");
        for run in 1..=MAX_RUNS {
            assert_eq!(claim(&mut store, 1), ["thrice"]);
            let recovered = store.recover(ME).unwrap();
            assert_eq!(recovered[0].runs, run);
        }
        let job = store.get("thrice").unwrap().unwrap();
        assert_eq!((job.state, job.runs), (State::Failed, MAX_RUNS));

        submit(&mut store, "once", "b/**");
        submit(&mut store, "cancelled", "c/**");
        assert_eq!(claim(&mut store, 2).len(), 2);
        store.cancel("cancelled").unwrap();
        store.recover(ME).unwrap();
        let state = |store: &mut Store, id: &str| store.get(id).unwrap().unwrap();
        assert_eq!(state(&mut store, "once").state, State::Queued);
        assert_eq!(state(&mut store, "once").runs, 1);
        assert_eq!(state(&mut store, "cancelled").state, State::Cancelled);
    }

    #[test]
    fn cancelling_a_queued_job_is_immediate_and_a_running_one_is_asked() {
        let (_dir, mut store) = store();
        submit(&mut store, "r", "r/**");
        assert_eq!(claim(&mut store, 1), ["r"]);
        submit(&mut store, "q", "q/**");
        assert_eq!(store.cancel("q").unwrap(), Some(State::Cancelled));
        assert_eq!(store.cancel("r").unwrap(), Some(State::Running));
        assert!(store.get("r").unwrap().unwrap().cancel_asked);
        assert!(store.beat(ME, LEASE).unwrap()[0].cancel_asked);
        assert_eq!(store.cancel("missing").unwrap(), None);
        assert_eq!(store.list(Some(State::Queued), 10).unwrap().len(), 0);
    }

    #[test]
    fn one_decision_at_a_time() {
        let (_dir, mut store) = store();
        submit(&mut store, "e", "e/**");
        claim(&mut store, 1);
        store.finish("e", ME, &end(State::Escalated)).unwrap();
        store.claim_decision("e", ME).unwrap();
        assert!(store.claim_decision("e", "server-b").is_err());
        store.release_decision("e").unwrap();
        store.claim_decision("e", "server-b").unwrap();
        store.decide("e", &end(State::Succeeded)).unwrap();
        assert!(
            store.claim_decision("e", ME).is_err(),
            "a decided job stays decided"
        );
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
        let mut store = open(&path);
        assert_eq!(store.get("old").unwrap().unwrap().state, State::Queued);
        let Store::Sqlite(inner) = &store else {
            panic!("a path is a SQLite store")
        };
        let version: u32 = inner
            .db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::VERSION);
        inner
            .db
            .pragma_update(None, "user_version", schema::VERSION + 1)
            .unwrap();
        drop(store);
        let err = Store::open(&Location::Sqlite(path.clone()))
            .err()
            .expect("a newer store is refused");
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(text.contains("newer than this kiln"), "{text}");
        assert!(text.contains("kiln.db"), "{text}");
    }

    #[test]
    fn a_value_the_store_does_not_know_is_an_error_not_a_guess() {
        let (_dir, mut store) = store();
        submit(&mut store, "x", "x/**");
        let Store::Sqlite(inner) = &store else {
            panic!("a path is a SQLite store")
        };
        inner
            .db
            .execute("UPDATE jobs SET state = 'exploded' WHERE id = 'x'", [])
            .unwrap();
        assert!(store.get("x").is_err());
    }
}
