//! The audit log: an append-only, hash-chained record of what kiln decided and did (job state
//! changes, policy decisions with module hashes, approvals and rejections, pushes).
//!
//! One JSON object a line. Each record holds the sha256 of the record before it (`prev`) and its
//! own (`hash`, over its other fields in a fixed order), so an edited, removed, inserted or
//! reordered record breaks the chain where it happened; [`verify`] names the first bad one.
//! Appends take an exclusive lock on the file and are flushed to disk before they return, so a
//! record is durable before kiln acts on what it says.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod event;
mod read;
mod shared;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use event::{Event, JobState, PolicyRecord, Push};
pub use shared::verify_shared;

use shared::SharedChain;

use crate::model::JobId;
use crate::model::fs::create_private_dir;
use crate::secrets::Redactor;
use crate::store::{PgTarget, StoreError};

/// `prev` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The longest record line kiln writes or reads back.
const MAX_LINE: usize = 1 << 20;

/// One record, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 1, 2, 3...: a record's place in the log.
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    /// What happened: `job.state`, `policy.decision`, `escalation.approved`, `push`...
    pub kind: String,
    /// The job it concerns, if any.
    pub job: Option<String>,
    /// The details, as the kind defines them.
    pub data: serde_json::Value,
    /// The hash of the record before (all zeros for the first).
    pub prev: String,
    /// sha256 of this record's other fields (see [`Record::digest`]).
    pub hash: String,
}

impl Record {
    /// The hash a record must carry: sha256 over `seq`, `at`, `kind`, `job`, `data` and `prev`,
    /// serialized as a JSON array in that order (serde_json writes object keys sorted, so the
    /// bytes are the same however the record was built).
    pub fn digest(&self) -> String {
        let fields =
            serde_json::json!([self.seq, self.at, self.kind, self.job, self.data, self.prev]);
        let bytes = serde_json::to_vec(&fields).expect("a JSON value serializes");
        format!("{:x}", Sha256::digest(bytes))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}: its last record is unreadable ({why}); run `kiln audit verify`")]
    Corrupt { path: PathBuf, why: String },
    #[error("the audit chain in {0}: {1}")]
    Shared(String, #[source] StoreError),
}

/// The first record that breaks the chain, and how.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The line of the file (from 1).
    pub line: usize,
    /// The record's `seq`, when the line could be read as a record.
    pub seq: Option<u64>,
    pub why: String,
}

/// What [`verify`] found.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub records: usize,
    /// The last good record's hash: what a copy kept elsewhere can be checked against.
    pub head: String,
    pub broken: Option<Broken>,
}

/// An audit log, appended to under a lock: a file, or the chain in a shared store.
#[derive(Clone, Debug)]
pub struct AuditLog {
    target: Target,
    /// Applied to each record's data before it is hashed and written.
    redactor: Redactor,
}

#[derive(Clone, Debug)]
enum Target {
    File(PathBuf),
    /// The store's `audit` table, one chain for every server sharing it.
    Shared(Arc<Mutex<SharedChain>>),
}

impl AuditLog {
    /// Opens (or starts) the log at `path`; its folder is made 0700 if absent.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(io)?;
        }
        Ok(AuditLog {
            target: Target::File(path.into()),
            redactor: Redactor::default(),
        })
    }

    /// The chain kept in the shared store at `store`; connects now, so that a store that cannot
    /// be reached is found before anything is recorded.
    pub fn shared(store: &PgTarget) -> Result<AuditLog, AuditError> {
        Ok(AuditLog {
            target: Target::Shared(Arc::new(Mutex::new(SharedChain::open(store)?))),
            redactor: Redactor::default(),
        })
    }

    /// The log, with `redactor` applied to every record it appends.
    pub fn redacting(self, redactor: Redactor) -> AuditLog {
        AuditLog { redactor, ..self }
    }

    /// Appends `event` about `job`, durably, off the async threads (the append locks and syncs
    /// the file, or waits for the database).
    pub async fn record(&self, job: Option<&JobId>, event: Event) -> Result<Record, AuditError> {
        let (log, job) = (self.clone(), job.cloned());
        tokio::task::spawn_blocking(move || log.append(job.as_ref(), &event))
            .await
            .map_err(|e| AuditError::Io {
                path: self.to_string().into(),
                source: std::io::Error::other(e),
            })?
    }

    /// Appends `event` about `job` after the last record, durably, and returns the record.
    /// Blocking: from async code, use [`AuditLog::record`].
    pub fn append(&self, job: Option<&JobId>, event: &Event) -> Result<Record, AuditError> {
        let (kind, data) = event.parts();
        let data = if self.redactor.is_empty() {
            data
        } else {
            let text = serde_json::to_string(&data).expect("a JSON value serializes");
            serde_json::from_str(&self.redactor.text(&text))
                .unwrap_or_else(|_| serde_json::json!("[REDACTED: data withheld]"))
        };
        let seal = |seq: u64, prev: String| {
            let mut record = Record {
                seq,
                at: crate::model::time::now(),
                kind: kind.clone(),
                job: job.map(JobId::to_string),
                data: data.clone(),
                prev,
                hash: String::new(),
            };
            record.hash = record.digest();
            record
        };
        match &self.target {
            Target::File(path) => append_to_file(path, seal),
            Target::Shared(chain) => chain
                .lock()
                .expect("the audit chain's lock is never poisoned")
                .append(seal),
        }
    }
}

impl std::fmt::Display for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::File(path) => write!(f, "{}", path.display()),
            Target::Shared(chain) => f.write_str(
                &chain
                    .lock()
                    .expect("the audit chain's lock is never poisoned")
                    .shown(),
            ),
        }
    }
}

/// Appends the record `seal` makes (from the next seq and the last hash) to the file at `path`,
/// under an exclusive lock, synced before it returns.
fn append_to_file(
    path: &Path,
    seal: impl FnOnce(u64, String) -> Record,
) -> Result<Record, AuditError> {
    let io = |source| AuditError::Io {
        path: path.into(),
        source,
    };
    let file = File::options()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io(std::io::Error::from(errno)))?;
    let (seq, prev) = match last_record(&mut file).map_err(io)? {
        None => (1, GENESIS.to_string()),
        Some(Ok(last)) => (last.seq + 1, last.hash),
        Some(Err(why)) => {
            return Err(AuditError::Corrupt {
                path: path.into(),
                why,
            });
        }
    };
    let record = seal(seq, prev);
    let mut line = serde_json::to_vec(&record).expect("a record serializes");
    line.push(b'\n');
    file.write_all(&line).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(record)
}

/// The last record of the log, if it has any; `Err` when the last line is not a record.
fn last_record(file: &mut File) -> std::io::Result<Option<Result<Record, String>>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // The last line is at most MAX_LINE long: read no more than that of the end.
    let start = len.saturating_sub(MAX_LINE as u64 + 1);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    let Some(line) = text.trim_end_matches('\n').rsplit('\n').next() else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_str::<Record>(line).map_err(|e| e.to_string()),
    ))
}

/// Checks the whole chain of the log at `path`: every line a record, `seq` counting up from 1,
/// each `prev` the hash of the record before, each `hash` right for its record.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.into(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut chain = Chain::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| AuditError::Io {
                path: path.into(),
                source,
            })?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            return Ok(chain.broken(None, "the line is over 1 MiB".into()));
        }
        let record: Record = match serde_json::from_slice(&line) {
            Ok(record) => record,
            Err(e) => return Ok(chain.broken(None, format!("not a record: {e}"))),
        };
        if let Err(broken) = chain.add(record) {
            return Ok(broken);
        }
    }
    Ok(chain.whole())
}

/// A chain checked record by record, from the first.
#[derive(Default)]
struct Chain {
    records: usize,
    /// The last good record's hash (all zeros before the first).
    head: Option<String>,
}

impl Chain {
    fn head(&self) -> String {
        self.head.clone().unwrap_or_else(|| GENESIS.to_string())
    }

    /// Adds the next record, or says how it breaks the chain.
    fn add(&mut self, record: Record) -> Result<(), Verified> {
        let number = self.records + 1;
        let seq = Some(record.seq);
        if record.seq != number as u64 {
            return Err(self.broken(
                seq,
                format!(
                    "seq is {}, expected {number}: a record was removed, inserted or moved",
                    record.seq
                ),
            ));
        }
        if record.prev != self.head() {
            return Err(self.broken(
                seq,
                "prev is not the hash of the record before: a record before it was removed or replaced"
                    .into(),
            ));
        }
        if record.digest() != record.hash {
            return Err(self.broken(
                seq,
                "its hash does not match its contents: it was edited".into(),
            ));
        }
        self.head = Some(record.hash);
        self.records += 1;
        Ok(())
    }

    /// What verifying found when the next record (line `records + 1`) breaks the chain.
    fn broken(&self, seq: Option<u64>, why: String) -> Verified {
        Verified {
            records: self.records,
            head: self.head(),
            broken: Some(Broken {
                line: self.records + 1,
                seq,
                why,
            }),
        }
    }

    fn whole(self) -> Verified {
        Verified {
            records: self.records,
            head: self.head(),
            broken: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            let job = JobId::parse("01jobjobjobjobjobjobjobjob").unwrap();
            log.append(Some(&job), &Event::JobState(JobState::to(i.to_string())))
                .unwrap();
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_untouched_log_verifies_and_chains_from_genesis() {
        let (_dir, path) = log_with(5);
        let verified = verify(&path).unwrap();
        assert_eq!(verified.records, 5);
        assert_eq!(verified.broken, None);
        let first: Record = serde_json::from_str(&lines(&path)[0]).unwrap();
        assert_eq!(first.prev, GENESIS);
        assert_eq!(first.seq, 1);
    }

    #[test]
    fn an_edited_record_is_named() {
        let (_dir, path) = log_with(5);
        let mut all = lines(&path);
        all[2] = all[2].replace("\"to\":\"2\"", "\"to\":\"7\"");
        write_lines(&path, &all);
        let broken = verify(&path).unwrap().broken.unwrap();
        assert_eq!((broken.line, broken.seq), (3, Some(3)));
        assert!(broken.why.contains("edited"), "{}", broken.why);
    }

    #[test]
    fn a_removed_or_reordered_record_is_named() {
        let (_dir, path) = log_with(5);
        let mut removed = lines(&path);
        removed.remove(1);
        write_lines(&path, &removed);
        let broken = verify(&path).unwrap().broken.unwrap();
        assert_eq!(broken.line, 2);
        assert!(broken.why.contains("removed"), "{}", broken.why);

        let (_dir, path) = log_with(5);
        let mut swapped = lines(&path);
        swapped.swap(3, 4);
        write_lines(&path, &swapped);
        assert_eq!(verify(&path).unwrap().broken.unwrap().line, 4);
    }

    #[test]
    fn a_record_rewritten_with_a_fresh_hash_breaks_the_next_link() {
        let (_dir, path) = log_with(4);
        let mut all = lines(&path);
        let mut second: Record = serde_json::from_str(&all[1]).unwrap();
        second.data = serde_json::json!({"to": "forged"});
        second.hash = second.digest();
        all[1] = serde_json::to_string(&second).unwrap();
        write_lines(&path, &all);
        let broken = verify(&path).unwrap().broken.unwrap();
        assert_eq!(broken.line, 3, "{broken:?}");
        assert!(broken.why.contains("prev"), "{}", broken.why);
    }

    #[test]
    fn appends_after_a_corrupt_tail_are_refused() {
        let (_dir, path) = log_with(2);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert!(matches!(
            log.append(None, &Event::EscalationReopened { why: "x".into() }),
            Err(AuditError::Corrupt { .. })
        ));
    }
}
