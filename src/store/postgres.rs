//! The store many servers share: PostgreSQL. Claims are made in one transaction under an
//! advisory lock (so the per-repository limit and the `touches` rule, which look at every
//! server's running jobs, hold across servers), the queued rows read `FOR UPDATE SKIP LOCKED`;
//! time is the database's clock, so leases do not depend on the hosts' clocks agreeing.
//! A dropped connection is made again on the next call.

use std::time::Duration;

use postgres::{Client, Row};

use super::postgres_schema as schema;
use super::{
    Candidate, Claimed, End, Held, JobRow, Location, NewJob, PgTarget, Recovered, State,
    StoreError, plan, restart_rule,
};
use crate::job::Format;
use crate::model::{Phase, Status};
use crate::scheduler::{self, Running};

/// The database's clock, in milliseconds since the epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
/// Held by a claim for its transaction: one claim at a time decides against every server's
/// running jobs.
const CLAIM_LOCK: i64 = 0x6b69_6c6e_0001;
/// Queued rows a claim reads at a time, most urgent first.
const PAGE: i64 = 500;

/// One file of a job's artifacts, as the shared store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    /// Relative to the job's artifacts folder, `/`-separated.
    pub path: String,
    pub content: Vec<u8>,
}

pub struct PgStore {
    target: PgTarget,
    client: Option<Client>,
}

impl PgStore {
    /// Connects, and refuses a store at another schema version than this kiln's.
    pub fn open(target: &PgTarget) -> Result<PgStore, StoreError> {
        let mut client = target.connect()?;
        schema::require_current(&mut client)?;
        Ok(PgStore {
            target: target.clone(),
            client: Some(client),
        })
    }

    pub fn migrate(target: &PgTarget) -> Result<(u32, u32), StoreError> {
        let found = schema::migrate(&mut target.connect()?)?;
        Ok((found, schema::VERSION))
    }

    /// Where this store is.
    pub fn location(&self) -> Location {
        Location::Postgres(self.target.clone())
    }

    /// Runs `f` on the connection, made again first if it was lost; a connection that fails
    /// other than by the database's refusal is dropped, to be made again next time.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let client = match &mut self.client {
            Some(client) if !client.is_closed() => client,
            slot => slot.insert(self.target.connect()?),
        };
        f(client).map_err(|e| {
            if e.as_db_error().is_none() {
                self.client = None;
            }
            StoreError::Postgres(e)
        })
    }

    pub fn submit(&mut self, job: NewJob<'_>) -> Result<(), StoreError> {
        let touches = serde_json::to_string(job.touches).expect("strings serialize");
        self.with(|db| {
            db.execute(
                &format!(
                    "INSERT INTO jobs (id, state, priority, submitted_ms, repo, touches, spec, spec_format, traceparent)
                     VALUES ($1, 'queued', $2, {NOW_MS}, $3, $4, $5, $6, $7)"
                ),
                &[
                    &job.id,
                    &job.priority,
                    &job.repo,
                    &touches,
                    &job.spec,
                    &job.spec_format.as_str(),
                    &job.trace_parent,
                ],
            )
        })?;
        Ok(())
    }

    pub fn get(&mut self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let found = self.with(|db| db.query_opt("SELECT * FROM jobs WHERE id = $1", &[&id]))?;
        found.as_ref().map(row).transpose()
    }

    pub fn list(&mut self, state: Option<State>, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        let state = state.map(State::as_str);
        let rows = self.with(|db| {
            db.query(
                "SELECT * FROM jobs WHERE ($1::text IS NULL OR state = $1)
                 ORDER BY submitted_ms, id LIMIT $2",
                &[&state, &(limit as i64)],
            )
        })?;
        rows.iter().map(row).collect()
    }

    pub fn newest(
        &mut self,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<JobRow>, StoreError> {
        let state = state.map(State::as_str);
        let rows = self.with(|db| {
            db.query(
                "SELECT * FROM jobs WHERE ($1::text IS NULL OR state = $1)
                 ORDER BY submitted_ms DESC, id DESC LIMIT $2",
                &[&state, &(limit as i64)],
            )
        })?;
        rows.iter().map(row).collect()
    }

    pub fn counts(&mut self) -> Result<Vec<(State, i64)>, StoreError> {
        let rows =
            self.with(|db| db.query("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[]))?;
        rows.iter()
            .map(|r| Ok((parse_state(r.get(0))?, r.get(1))))
            .collect()
    }

    pub fn claim(
        &mut self,
        server: &str,
        limits: scheduler::Limits,
        lease: Duration,
    ) -> Result<Claimed, StoreError> {
        let aging = limits.aging.as_millis() as i64;
        let lease = lease.as_millis() as i64;
        let (started, recovered) = self.with(|db| {
            let mut tx = db.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK])?;
            let now: i64 = tx.query_one(&format!("SELECT {NOW_MS}"), &[])?.get(0);
            let expired = tx.query(
                "SELECT id, runs, cancel_asked, server FROM jobs
                 WHERE state = 'running' AND lease_until_ms < $1 FOR UPDATE",
                &[&now],
            )?;
            let mut recovered = Vec::new();
            for r in &expired {
                recovered.push(restart(&mut tx, r, now)?);
            }
            let running = tx.query(
                "SELECT id, priority, submitted_ms, repo, touches, server FROM jobs
                 WHERE state = 'running'",
                &[],
            )?;
            let own = running
                .iter()
                .filter(|r| r.get::<_, Option<&str>>(5) == Some(server))
                .count();
            let mut free = limits.global.saturating_sub(own);
            let mut busy: Vec<Running> = running
                .iter()
                .map(|r| Running {
                    repo: r.get(3),
                    touches: candidate(r).touches(),
                })
                .collect();
            let mut ids: Vec<String> = Vec::new();
            let mut offset = 0i64;
            while free > 0 {
                let page = tx.query(
                    "SELECT id, priority, submitted_ms, repo, touches FROM jobs
                     WHERE state = 'queued'
                     ORDER BY priority - CASE WHEN $2::bigint > 0
                                              THEN ($1::bigint - submitted_ms) / $2::bigint
                                              ELSE 0 END,
                              submitted_ms, id
                     LIMIT $3::bigint OFFSET $4::bigint FOR UPDATE SKIP LOCKED",
                    &[&now, &aging, &PAGE, &offset],
                )?;
                let queued: Vec<Candidate> = page.iter().map(candidate).collect();
                let picked = plan(&queued, &mut busy, free, limits, now);
                free -= picked.len();
                ids.extend(picked);
                if (page.len() as i64) < PAGE {
                    break;
                }
                offset += PAGE;
            }
            let started = if ids.is_empty() {
                Vec::new()
            } else {
                tx.query(
                    "UPDATE jobs SET state = 'running', started_ms = $2, runs = runs + 1,
                                     server = $3, lease_until_ms = $2::bigint + $4::bigint
                     WHERE id = ANY($1) AND state = 'queued' RETURNING *",
                    &[&ids, &now, &server, &lease],
                )?
            };
            tx.commit()?;
            Ok((started, recovered))
        })?;
        let mut started: Vec<JobRow> = started.iter().map(row).collect::<Result<_, _>>()?;
        // In the order the scheduler picked them: most urgent first.
        started.sort_by_key(|r| r.started_ms);
        Ok(Claimed { started, recovered })
    }

    pub fn beat(&mut self, server: &str, lease: Duration) -> Result<Vec<Held>, StoreError> {
        let lease = lease.as_millis() as i64;
        let rows = self.with(|db| {
            db.query(
                &format!(
                    "UPDATE jobs SET lease_until_ms = {NOW_MS} + $2::bigint
                     WHERE state = 'running' AND server = $1 AND lease_until_ms > {NOW_MS}
                     RETURNING id, cancel_asked"
                ),
                &[&server, &lease],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| Held {
                id: r.get(0),
                cancel_asked: r.get(1),
            })
            .collect())
    }

    pub fn holds(&mut self, id: &str, server: &str) -> Result<bool, StoreError> {
        let found = self.with(|db| {
            db.query_opt(
                &format!(
                    "SELECT 1 FROM jobs WHERE id = $1 AND state = 'running' AND server = $2
                     AND lease_until_ms > {NOW_MS}"
                ),
                &[&id, &server],
            )
        })?;
        Ok(found.is_some())
    }

    pub fn progress(
        &mut self,
        id: &str,
        server: &str,
        attempt: u32,
        stage: Phase,
    ) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET attempt = CASE WHEN $2 > 0 THEN $2 ELSE attempt END, stage = $3
                 WHERE id = $1 AND state = 'running' AND server = $4",
                &[&id, &(attempt as i32), &stage.as_str(), &server],
            )
        })?;
        Ok(())
    }

    pub fn finish(&mut self, id: &str, server: &str, end: &End<'_>) -> Result<(), StoreError> {
        let changed = self.with(|db| {
            db.execute(
                &format!(
                    "UPDATE jobs SET state = $2, status = $3, exit_code = $4, reason = $5,
                                     finished_ms = {NOW_MS}, stage = NULL, lease_until_ms = NULL
                     WHERE id = $1 AND state = 'running' AND server = $6"
                ),
                &[
                    &id,
                    &end.state.as_str(),
                    &end.status.map(Status::as_str),
                    &end.exit_code,
                    &end.reason,
                    &server,
                ],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::WrongState(id.into(), "running on this server"));
        }
        Ok(())
    }

    pub fn cancel(&mut self, id: &str) -> Result<Option<State>, StoreError> {
        let state = self.with(|db| {
            let mut tx = db.transaction()?;
            let state: Option<String> = tx
                .query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&id])?
                .map(|r| r.get(0));
            match state.as_deref() {
                Some("queued") => {
                    tx.execute(
                        &format!(
                            "UPDATE jobs SET state = 'cancelled', finished_ms = {NOW_MS},
                                             reason = 'cancelled while queued'
                             WHERE id = $1"
                        ),
                        &[&id],
                    )?;
                }
                Some("running") => {
                    tx.execute("UPDATE jobs SET cancel_asked = true WHERE id = $1", &[&id])?;
                }
                _ => {}
            }
            tx.commit()?;
            Ok(state)
        })?;
        match state.as_deref() {
            None => Ok(None),
            Some("queued") => Ok(Some(State::Cancelled)),
            Some(other) => parse_state(other).map(Some),
        }
    }

    /// The jobs `server` (its run before this one) left running; other servers' jobs are
    /// theirs until their leases run out.
    pub fn recover(&mut self, server: &str) -> Result<Vec<Recovered>, StoreError> {
        self.with(|db| {
            let mut tx = db.transaction()?;
            let now: i64 = tx.query_one(&format!("SELECT {NOW_MS}"), &[])?.get(0);
            let stranded = tx.query(
                "SELECT id, runs, cancel_asked, server FROM jobs
                 WHERE state = 'running' AND server = $1 FOR UPDATE",
                &[&server],
            )?;
            let mut recovered = Vec::new();
            for r in &stranded {
                recovered.push(restart(&mut tx, r, now)?);
            }
            tx.commit()?;
            Ok(recovered)
        })
    }

    pub fn claim_decision(&mut self, id: &str, server: &str) -> Result<(), StoreError> {
        let changed = self.with(|db| {
            db.execute(
                "UPDATE jobs SET deciding = $2
                 WHERE id = $1 AND state IN ('escalated', 'awaiting_review') AND deciding IS NULL",
                &[&id, &server],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::WrongState(
                id.into(),
                "escalated or awaiting review, with no decision under way",
            ));
        }
        Ok(())
    }

    pub fn release_decision(&mut self, id: &str) -> Result<(), StoreError> {
        self.with(|db| db.execute("UPDATE jobs SET deciding = NULL WHERE id = $1", &[&id]))?;
        Ok(())
    }

    pub fn decide(&mut self, id: &str, end: &End<'_>) -> Result<(), StoreError> {
        let changed = self.with(|db| {
            db.execute(
                "UPDATE jobs SET state = $2, exit_code = $3, reason = $4, deciding = NULL
                 WHERE id = $1 AND state IN ('escalated', 'awaiting_review')",
                &[&id, &end.state.as_str(), &end.exit_code, &end.reason],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::WrongState(
                id.into(),
                "escalated or awaiting review",
            ));
        }
        Ok(())
    }

    /// Keeps `files` of job `id`'s artifacts (each replacing the one at its path); returns the
    /// job's new files version.
    pub fn put_files(&mut self, id: &str, files: &[JobFile]) -> Result<i64, StoreError> {
        self.with(|db| {
            let mut tx = db.transaction()?;
            for file in files {
                tx.execute(
                    "INSERT INTO job_files (job, path, content) VALUES ($1, $2, $3)
                     ON CONFLICT (job, path) DO UPDATE SET content = EXCLUDED.content",
                    &[&id, &file.path, &file.content],
                )?;
            }
            let version: i64 = tx
                .query_one(
                    "UPDATE jobs SET files_version = files_version + 1 WHERE id = $1
                     RETURNING files_version",
                    &[&id],
                )?
                .get(0);
            tx.commit()?;
            Ok(version)
        })
    }

    /// The version of job `id`'s kept files: 0 when none are kept.
    pub fn files_version(&mut self, id: &str) -> Result<i64, StoreError> {
        let found =
            self.with(|db| db.query_opt("SELECT files_version FROM jobs WHERE id = $1", &[&id]))?;
        Ok(found.map_or(0, |r| r.get(0)))
    }

    /// Every kept file of job `id`, with the version they make up.
    pub fn files(&mut self, id: &str) -> Result<(i64, Vec<JobFile>), StoreError> {
        self.with(|db| {
            let mut tx = db.transaction()?;
            let version: i64 = tx
                .query_opt("SELECT files_version FROM jobs WHERE id = $1", &[&id])?
                .map_or(0, |r| r.get(0));
            let files = tx
                .query(
                    "SELECT path, content FROM job_files WHERE job = $1 ORDER BY path",
                    &[&id],
                )?
                .iter()
                .map(|r| JobFile {
                    path: r.get(0),
                    content: r.get(1),
                })
                .collect();
            tx.commit()?;
            Ok((version, files))
        })
    }

    /// Says where `server` answers (its API's address), for another server to send it a
    /// running job's live log request.
    pub fn announce(&mut self, server: &str, url: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                &format!(
                    "INSERT INTO servers (id, url, seen_ms) VALUES ($1, $2, {NOW_MS})
                     ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, seen_ms = EXCLUDED.seen_ms"
                ),
                &[&server, &url],
            )
        })?;
        Ok(())
    }

    /// Where `server` said it answers.
    pub fn server_url(&mut self, server: &str) -> Result<Option<String>, StoreError> {
        let found =
            self.with(|db| db.query_opt("SELECT url FROM servers WHERE id = $1", &[&server]))?;
        Ok(found.map(|r| r.get(0)))
    }
}

/// Applies the restart rule to the running row `r` (id, runs, cancel_asked, server).
fn restart(
    tx: &mut postgres::Transaction<'_>,
    r: &Row,
    now: i64,
) -> Result<Recovered, postgres::Error> {
    let (id, runs, cancel_asked): (String, i32, bool) = (r.get(0), r.get(1), r.get(2));
    let (to, reason) = restart_rule(runs as u32, cancel_asked);
    tx.execute(
        "UPDATE jobs SET state = $2, stage = NULL, reason = NULLIF($3, ''), lease_until_ms = NULL,
                         finished_ms = CASE WHEN $2 = 'queued' THEN NULL ELSE $4::bigint END
         WHERE id = $1",
        &[&id, &to.as_str(), &reason, &now],
    )?;
    Ok(Recovered {
        id,
        to,
        runs: runs as u32,
        from: r.get(3),
    })
}

fn candidate(r: &Row) -> Candidate {
    Candidate {
        id: r.get(0),
        priority: r.get(1),
        submitted_ms: r.get(2),
        repo: r.get(3),
        touches: r.get(4),
    }
}

fn parse_state(text: &str) -> Result<State, StoreError> {
    State::parse(text).ok_or_else(|| StoreError::Value(format!("`{text}` is not a State")))
}

fn row(r: &Row) -> Result<JobRow, StoreError> {
    let touches: String = r.try_get("touches")?;
    let unknown = |what: &str, text: &str| StoreError::Value(format!("`{text}` is not a {what}"));
    let stage: Option<String> = r.try_get("stage")?;
    let status: Option<String> = r.try_get("status")?;
    let format: String = r.try_get("spec_format")?;
    Ok(JobRow {
        id: r.try_get("id")?,
        state: parse_state(r.try_get("state")?)?,
        priority: r.try_get("priority")?,
        submitted_ms: r.try_get("submitted_ms")?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        repo: r.try_get("repo")?,
        touches: serde_json::from_str(&touches).unwrap_or_default(),
        runs: r.try_get::<_, i32>("runs")? as u32,
        attempt: r.try_get::<_, i32>("attempt")? as u32,
        stage: stage
            .map(|s| Phase::parse(&s).ok_or_else(|| unknown("Phase", &s)))
            .transpose()?,
        status: status
            .map(|s| Status::parse(&s).ok_or_else(|| unknown("Status", &s)))
            .transpose()?,
        exit_code: r.try_get("exit_code")?,
        reason: r.try_get("reason")?,
        cancel_asked: r.try_get("cancel_asked")?,
        server: r.try_get("server")?,
        spec: r.try_get("spec")?,
        spec_format: Format::parse(&format).ok_or_else(|| unknown("Format", &format))?,
        trace_parent: r.try_get("traceparent")?,
    })
}
