//! A job's artifacts folder, `<root>/<job id>/`: the one place its layout is written down, and
//! the one way kiln writes there, every byte through the redactor.
//!
//! ```text
//! <id>/report.json  gate.json  gate.sarif  repo.git/  escalation/
//! <id>/attempt-N/job.json  generate.log  diff.patch  diff.json  test.log  review.json
//!                <stage>.log (live, then whole)  <stage>.egress.json
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::{JobId, Stage};
use crate::secrets::{Redactor, StreamRedactor};

/// One job's artifacts folder.
#[derive(Clone, Debug)]
pub struct Artifacts {
    dir: PathBuf,
    redactor: Redactor,
}

/// An artifact could not be written; kiln's own serialization failing is a bug, a full disk not.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Artifacts {
    /// The folder of job `id` under `root`; nothing is made yet.
    pub fn new(root: &Path, id: &JobId, redactor: Redactor) -> Artifacts {
        Artifacts::at(root.join(id.as_str()), redactor)
    }

    /// The artifacts folder `dir` (of a job whose id is its last part).
    pub fn at(dir: PathBuf, redactor: Redactor) -> Artifacts {
        Artifacts { dir, redactor }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// `attempt-N/`.
    pub fn attempt(&self, n: u32) -> PathBuf {
        self.dir.join(format!("attempt-{n}"))
    }

    /// A file of attempt `n`: `job.json`, `diff.patch`, `diff.json`, `review.json`...
    pub fn attempt_file(&self, n: u32, name: &str) -> PathBuf {
        self.attempt(n).join(name)
    }

    /// `attempt-N/<stage>.log`: the stage's output, live as it comes, then whole.
    pub fn stage_log(&self, n: u32, stage: Stage) -> PathBuf {
        self.attempt_file(n, &format!("{stage}.log"))
    }

    /// `attempt-N/<stage>.egress.json`: every request the stage made through the proxy.
    pub fn egress_record(&self, n: u32, stage: Stage) -> PathBuf {
        self.attempt_file(n, &format!("{stage}.egress.json"))
    }

    pub fn report(&self) -> PathBuf {
        self.dir.join("report.json")
    }

    pub fn gate_json(&self) -> PathBuf {
        self.dir.join("gate.json")
    }

    pub fn gate_sarif(&self) -> PathBuf {
        self.dir.join("gate.sarif")
    }

    /// Where the work branch is published when `--out` is not given.
    pub fn default_out(&self) -> PathBuf {
        self.dir.join("repo.git")
    }

    /// `escalation/`: the bundle a human decides from.
    pub fn escalation(&self) -> PathBuf {
        self.dir.join(ESCALATION_DIR)
    }

    /// Makes the folder and `attempt-N/`.
    pub fn create_attempt(&self, n: u32) -> Result<PathBuf, ArtifactError> {
        let dir = self.attempt(n);
        std::fs::create_dir_all(&dir).map_err(|source| ArtifactError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Writes `bytes` to `path` (inside the folder) with every secret hidden. Blocking.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
        std::fs::write(path, self.redactor.bytes(bytes)).map_err(|source| ArtifactError::Io {
            path: path.into(),
            source,
        })
    }

    /// Writes `value` as pretty JSON with every secret hidden, serialized straight into the
    /// file through a streaming redactor: a large value (a diff) is never held as text. Blocking.
    pub fn write_json(&self, path: &Path, value: &impl Serialize) -> Result<(), ArtifactError> {
        let io = |source| ArtifactError::Io {
            path: path.into(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        // Buffered before the redactor, which then sees large chunks, not JSON's every token.
        let mut out = std::io::BufWriter::with_capacity(
            64 << 10,
            RedactingWriter {
                stream: StreamRedactor::new(self.redactor.clone()),
                out: file,
            },
        );
        serde_json::to_writer_pretty(&mut out, value).map_err(|source| {
            if source.is_io() {
                io(source.into())
            } else {
                ArtifactError::Json {
                    path: path.into(),
                    source,
                }
            }
        })?;
        let out = out.into_inner().map_err(|e| io(e.into_error()))?;
        out.finish(b"\n").map_err(io)
    }

    /// [`Artifacts::write`] off the async threads; `data` is moved there and handed back, so
    /// writing a large artifact never copies it.
    pub async fn write_async<T>(&self, path: PathBuf, data: T) -> Result<T, ArtifactError>
    where
        T: AsRef<[u8]> + Send + 'static,
    {
        let this = self.clone();
        let error_path = path.clone();
        tokio::task::spawn_blocking(move || this.write(&path, data.as_ref()).map(|()| data))
            .await
            .map_err(|e| ArtifactError::Io {
                path: error_path,
                source: std::io::Error::other(e),
            })?
    }

    /// [`Artifacts::write_json`] off the async threads; `value` is moved there and handed back.
    pub async fn write_json_async<T>(&self, path: PathBuf, value: T) -> Result<T, ArtifactError>
    where
        T: Serialize + Send + 'static,
    {
        let this = self.clone();
        let error_path = path.clone();
        tokio::task::spawn_blocking(move || this.write_json(&path, &value).map(|()| value))
            .await
            .map_err(|e| ArtifactError::Io {
                path: error_path,
                source: std::io::Error::other(e),
            })?
    }
}

/// A writer that hides every secret in what passes through it, a chunk at a time.
struct RedactingWriter<W: Write> {
    stream: StreamRedactor,
    out: W,
}

impl<W: Write> RedactingWriter<W> {
    /// Writes what the redactor held back, then `tail`, and flushes.
    fn finish(mut self, tail: &[u8]) -> std::io::Result<()> {
        let (last, _) = self.stream.end();
        self.out.write_all(&last)?;
        self.out.write_all(tail)?;
        self.out.flush()
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.out.write_all(&self.stream.push(data))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // What the redactor holds back is not settled yet: only `finish` writes it.
        self.out.flush()
    }
}

/// The escalation folder's name inside a job's artifacts.
pub const ESCALATION_DIR: &str = "escalation";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_out_attempts_and_hides_secrets() {
        let root = tempfile::tempdir().unwrap();
        let id = JobId::new();
        let redactor = Redactor::new(&[("K".into(), "sk-secret-0123456789".into())]);
        let artifacts = Artifacts::new(root.path(), &id, redactor);
        assert_eq!(
            artifacts.stage_log(2, Stage::Test),
            root.path().join(id.as_str()).join("attempt-2/test.log")
        );
        artifacts.create_attempt(1).unwrap();
        let log = artifacts.stage_log(1, Stage::Generate);
        artifacts
            .write(&log, b"key sk-secret-0123456789\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "key [REDACTED:K]\n");
    }
}
