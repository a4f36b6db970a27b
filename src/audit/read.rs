//! Reading the records of one job back, for the people who review it (the console): from the
//! file, line by line with each line capped, or from the shared store's table.

use std::io::{BufRead, BufReader, Read};

use super::{AuditError, AuditLog, MAX_LINE, Record, Target};

impl AuditLog {
    /// The first `max` records about `job`, oldest first. Lines that are not records (a broken
    /// chain is `kiln audit verify`'s to report) are passed over.
    pub fn of_job(&self, job: &str, max: usize) -> Result<Vec<Record>, AuditError> {
        match &self.target {
            Target::File(path) => {
                let io = |source| AuditError::Io {
                    path: path.clone(),
                    source,
                };
                let file = match std::fs::File::open(path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io(e)),
                };
                let needle = format!("\"job\":\"{job}\"");
                let mut found = Vec::new();
                let mut reader = BufReader::new(file);
                let mut line = Vec::new();
                while found.len() < max {
                    line.clear();
                    let read = Read::by_ref(&mut reader)
                        .take(MAX_LINE as u64 + 1)
                        .read_until(b'\n', &mut line)
                        .map_err(io)?;
                    if read == 0 {
                        break;
                    }
                    if line.len() > MAX_LINE {
                        // Past the cap: skip the rest of this line.
                        reader.skip_until(b'\n').map_err(io)?;
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    if !text.contains(&needle) {
                        continue;
                    }
                    if let Ok(record) = serde_json::from_str::<Record>(&text)
                        && record.job.as_deref() == Some(job)
                    {
                        found.push(record);
                    }
                }
                Ok(found)
            }
            Target::Shared(chain) => chain
                .lock()
                .expect("the audit chain's lock is never poisoned")
                .of_job(job, max)
                .map_err(|e| AuditError::Shared(self.to_string(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, JobState};
    use crate::model::JobId;

    #[test]
    fn a_job_s_records_are_read_back_in_order_and_no_other_s() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let (one, two) = (JobId::new(), JobId::new());
        for (job, state) in [(&one, "queued"), (&two, "queued"), (&one, "running")] {
            log.append(Some(job), &Event::JobState(JobState::to(state)))
                .unwrap();
        }
        let records = log.of_job(one.as_str(), 10).unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(log.of_job(one.as_str(), 1).unwrap().len(), 1);
        assert!(log.of_job("nobody", 10).unwrap().is_empty());
    }
}
