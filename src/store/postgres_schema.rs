//! The shared store's schema, versioned in its one-row table `kiln_schema`. `kiln store migrate`
//! brings it up to this kiln's version under an advisory lock (two migrating at once take turns);
//! a server refuses a store at any other version, so that servers of two kilns never misread
//! each other's rows.

use postgres::Client;

use super::StoreError;

/// Each migration takes the schema from its index to the next version.
const MIGRATIONS: [&str; 2] = [V1, V2];

/// The version this kiln writes and reads.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// Held while migrating.
const MIGRATE_LOCK: i64 = 0x6b69_6c6e_0000;

const V1: &str = "
CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    priority       BIGINT NOT NULL,
    submitted_ms   BIGINT NOT NULL,
    started_ms     BIGINT,
    finished_ms    BIGINT,
    repo           TEXT NOT NULL,
    touches        TEXT NOT NULL,
    spec           TEXT NOT NULL,
    spec_format    TEXT NOT NULL,
    runs           INTEGER NOT NULL DEFAULT 0,
    attempt        INTEGER NOT NULL DEFAULT 0,
    stage          TEXT,
    status         TEXT,
    exit_code      BIGINT,
    reason         TEXT,
    cancel_asked   BOOLEAN NOT NULL DEFAULT false,
    server         TEXT,
    lease_until_ms BIGINT,
    deciding       TEXT,
    files_version  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_queued ON jobs (priority, submitted_ms) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (server) WHERE state = 'running';
CREATE INDEX jobs_by_state ON jobs (state, submitted_ms);
CREATE TABLE job_files (
    job      TEXT NOT NULL REFERENCES jobs (id),
    path     TEXT NOT NULL,
    content  BYTEA NOT NULL,
    PRIMARY KEY (job, path)
);
CREATE TABLE servers (
    id       TEXT PRIMARY KEY,
    url      TEXT NOT NULL,
    seen_ms  BIGINT NOT NULL
);
CREATE TABLE audit (
    seq   BIGINT PRIMARY KEY,
    at    TEXT NOT NULL,
    kind  TEXT NOT NULL,
    job   TEXT,
    data  TEXT NOT NULL,
    prev  TEXT NOT NULL,
    hash  TEXT NOT NULL
);
CREATE INDEX audit_by_job ON audit (job, seq);
";

/// Version 2: the trace a job's spans continue (a client's W3C `traceparent`).
const V2: &str = "
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
";

/// The schema version of the store on `db`; 0 when it has none yet.
pub fn version(db: &mut Client) -> Result<u32, StoreError> {
    let exists: bool = db
        .query_one("SELECT to_regclass('kiln_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = db
        .query_opt("SELECT version FROM kiln_schema", &[])?
        .map(|r| r.get(0));
    Ok(version.unwrap_or(0) as u32)
}

/// Brings the store on `db` to [`VERSION`] in one transaction; returns the version it found.
pub fn migrate(db: &mut Client) -> Result<u32, StoreError> {
    let mut tx = db.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS kiln_schema (version INTEGER NOT NULL)")?;
    let found: u32 = tx
        .query_opt("SELECT version FROM kiln_schema", &[])?
        .map_or(0, |r| r.get::<_, i32>(0) as u32);
    if found > VERSION {
        return Err(StoreError::TooNew {
            found,
            known: VERSION,
        });
    }
    for sql in MIGRATIONS.iter().skip(found as usize) {
        tx.batch_execute(sql)?;
    }
    tx.execute("DELETE FROM kiln_schema", &[])?;
    tx.execute(
        "INSERT INTO kiln_schema (version) VALUES ($1)",
        &[&(VERSION as i32)],
    )?;
    tx.commit()?;
    Ok(found)
}

/// Refuses a store at another version than this kiln's.
pub fn require_current(db: &mut Client) -> Result<(), StoreError> {
    let found = version(db)?;
    match found.cmp(&VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(StoreError::TooNew {
            found,
            known: VERSION,
        }),
        std::cmp::Ordering::Less => Err(StoreError::TooOld {
            found,
            known: VERSION,
        }),
    }
}
