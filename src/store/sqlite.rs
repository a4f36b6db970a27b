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
            "INSERT INTO jobs (id, state, priority, submitted_ms, repo, touches, spec, spec_format, traceparent)
             VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                job.id,
                job.priority,
                now_ms(),
                job.repo,
                touches,
                job.spec,
                job.spec_format,
                job.trace_parent
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
        trace_parent: r.get("traceparent")?,
    })
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
