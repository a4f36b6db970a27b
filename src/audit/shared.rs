//! The audit chain in a shared store: the `audit` table of the PostgreSQL many `kiln serve`
//! share, one chain for all of them. An append locks the table against other appends (readers
//! go on), reads the last record and writes the next in one transaction, so the records of every
//! server follow each other in one order, each chained to the one before.

use postgres::Client;

use super::{AuditError, Chain, GENESIS, Record, Verified};
use crate::store::{PgTarget, StoreError};

/// Records a verification reads at a time.
const PAGE: i64 = 1000;
/// How long an append asks again a store it cannot reach before it fails.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) struct SharedChain {
    target: PgTarget,
    client: Option<Client>,
}

impl std::fmt::Debug for SharedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedChain({:?})", self.target)
    }
}

impl SharedChain {
    pub(super) fn open(target: &PgTarget) -> Result<SharedChain, AuditError> {
        let client = target
            .connect()
            .map_err(|e| AuditError::Shared(target.shown().into(), e))?;
        Ok(SharedChain {
            target: target.clone(),
            client: Some(client),
        })
    }

    pub(super) fn shown(&self) -> String {
        self.target.shown().into()
    }

    /// The first `max` records about `job`, oldest first.
    pub(super) fn of_job(&mut self, job: &str, max: usize) -> Result<Vec<Record>, StoreError> {
        let client = match &mut self.client {
            Some(client) if !client.is_closed() => client,
            slot => slot.insert(self.target.connect()?),
        };
        let rows = client.query(
            "SELECT seq, at, kind, job, data, prev, hash FROM audit
             WHERE job = $1 ORDER BY seq LIMIT $2",
            &[&job, &(max as i64)],
        )?;
        rows.iter()
            .map(|r| {
                record(r).map_err(|e| {
                    StoreError::Value(format!("audit record {}: {e}", r.get::<_, i64>(0)))
                })
            })
            .collect()
    }

    /// Appends the record `seal` makes from the next seq and the last hash. A store that cannot
    /// be reached is asked again for up to [`RETRY_FOR`]: a record is never dropped, and a short
    /// outage only delays what waits for it (a server whose outage outlasts two thirds of a
    /// lease stops its jobs meanwhile).
    pub(super) fn append(
        &mut self,
        seal: impl Fn(u64, String) -> Record,
    ) -> Result<Record, AuditError> {
        let since = std::time::Instant::now();
        let mut wait = std::time::Duration::from_millis(200);
        loop {
            match self.try_append(&seal) {
                Err(AuditError::Shared(_, e))
                    if self.client.is_none() && since.elapsed() < RETRY_FOR =>
                {
                    tracing::warn!("appending to the audit chain (will try again): {e}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_secs(2));
                }
                done => return done,
            }
        }
    }

    fn try_append(&mut self, seal: &impl Fn(u64, String) -> Record) -> Result<Record, AuditError> {
        let shown = self.target.shown().to_string();
        let client = match &mut self.client {
            Some(client) if !client.is_closed() => client,
            slot => match self.target.connect() {
                Ok(client) => slot.insert(client),
                Err(e) => {
                    *slot = None;
                    return Err(AuditError::Shared(shown, e));
                }
            },
        };
        let appended = (|| {
            let mut tx = client.transaction()?;
            tx.batch_execute("LOCK TABLE audit IN EXCLUSIVE MODE")?;
            let last =
                tx.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
            let (seq, prev) = match last {
                Some(r) => (r.get::<_, i64>(0) as u64 + 1, r.get(1)),
                None => (1, GENESIS.to_string()),
            };
            let record = seal(seq, prev);
            let data = serde_json::to_string(&record.data).expect("a JSON value serializes");
            tx.execute(
                "INSERT INTO audit (seq, at, kind, job, data, prev, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &(record.seq as i64),
                    &record.at,
                    &record.kind,
                    &record.job,
                    &data,
                    &record.prev,
                    &record.hash,
                ],
            )?;
            tx.commit()?;
            Ok(record)
        })();
        appended.map_err(|e: postgres::Error| {
            // Not the database's refusal: the connection is gone, and the next try makes one.
            if e.as_db_error().is_none() {
                self.client = None;
            }
            AuditError::Shared(shown, StoreError::Postgres(e))
        })
    }
}

/// Checks the whole chain in the store at `target`, as [`super::verify`] checks a file; `line`
/// in what it reports is the record's place in the chain.
pub fn verify_shared(target: &PgTarget) -> Result<Verified, AuditError> {
    let failed = |e: StoreError| AuditError::Shared(target.shown().into(), e);
    let mut client = target.connect().map_err(failed)?;
    let mut chain = Chain::default();
    let mut after = 0i64;
    loop {
        let rows = client
            .query(
                "SELECT seq, at, kind, job, data, prev, hash FROM audit
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &PAGE],
            )
            .map_err(|e| failed(StoreError::Postgres(e)))?;
        for r in &rows {
            let seq: i64 = r.get(0);
            after = seq;
            let record = match record(r) {
                Ok(record) => record,
                Err(e) => {
                    return Ok(chain.broken(Some(seq as u64), format!("its data is not JSON: {e}")));
                }
            };
            if let Err(broken) = chain.add(record) {
                return Ok(broken);
            }
        }
        if (rows.len() as i64) < PAGE {
            return Ok(chain.whole());
        }
    }
}

/// The record in a row of the `audit` table (`seq, at, kind, job, data, prev, hash`); an error
/// when its data is not JSON.
fn record(r: &postgres::Row) -> Result<Record, serde_json::Error> {
    let text: String = r.get(4);
    Ok(Record {
        seq: r.get::<_, i64>(0) as u64,
        at: r.get(1),
        kind: r.get(2),
        job: r.get(3),
        data: serde_json::from_str(&text)?,
        prev: r.get(5),
        hash: r.get(6),
    })
}
