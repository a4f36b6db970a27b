//! The SQLite store's schema, versioned with SQLite's `user_version`: a new store is made at the latest
//! version, an older one is brought up to it by the migrations in order, one newer than this
//! kiln knows is refused (it would be misread).

use rusqlite::Connection;

use super::StoreError;

/// Each migration takes the schema from its index to the next version. Version 1 is the schema
/// every store had before versions were kept.
const MIGRATIONS: [&str; 3] = [V1, V2, V3];

/// The version this kiln writes and reads.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

const V1: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id             TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    priority       INTEGER NOT NULL,
    submitted_ms   INTEGER NOT NULL,
    started_ms     INTEGER,
    finished_ms    INTEGER,
    repo           TEXT NOT NULL,
    touches        TEXT NOT NULL,
    spec           TEXT NOT NULL,
    spec_format    TEXT NOT NULL,
    runs           INTEGER NOT NULL DEFAULT 0,
    attempt        INTEGER NOT NULL DEFAULT 0,
    stage          TEXT,
    status         TEXT,
    exit_code      INTEGER,
    reason         TEXT,
    cancel_asked   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority, submitted_ms);
";

/// Version 2: the server that runs a job and its lease, and the server deciding it.
const V2: &str = "
ALTER TABLE jobs ADD COLUMN server TEXT;
ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER;
ALTER TABLE jobs ADD COLUMN deciding TEXT;
";

/// Version 3: the trace a job's spans continue (a client's W3C `traceparent`).
const V3: &str = "
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
";

/// Brings the store on `db` to [`VERSION`], each migration in one transaction with its version.
pub fn migrate(db: &mut Connection) -> Result<u32, StoreError> {
    let found: u32 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > VERSION {
        return Err(StoreError::TooNew {
            found,
            known: VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = db.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as u32 + 1)?;
        tx.commit()?;
    }
    Ok(found)
}
