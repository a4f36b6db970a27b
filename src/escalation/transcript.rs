//! The model calls a job's agents made, as its transcripts keep them
//! (`attempt-N/<stage>.transcript.jsonl`, with `[egress] transcripts`): in brief in the bundle
//! and on the summary page, whole in `kiln escalations export`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::text::tail_text;

/// The stages whose calls are kept.
const STAGES: [&str; 2] = ["generate", "review"];
/// The end of each response kept in the bundle.
const RESPONSE_TAIL: usize = 4 << 10;
/// The most calls the bundle lists.
const MAX_CALLS: usize = 200;
/// The most of one transcript file read (kiln writes at most 16 MiB and a note).
const MAX_FILE: usize = 17 << 20;

/// One model call, in brief.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    pub attempt: u32,
    pub stage: String,
    pub path: String,
    pub status: Option<u64>,
    pub usage: Value,
    pub usd: Option<f64>,
    /// The request's body, in bytes as kept.
    pub request_bytes: usize,
    /// The end of the model's answer.
    pub response_tail: String,
}

/// Every transcript line of the job whose folder is `job_dir`, with its attempt and stage,
/// in order.
pub fn lines(job_dir: &Path, attempts: &[u32]) -> Vec<(u32, &'static str, Value)> {
    let mut found = Vec::new();
    for &n in attempts {
        for stage in STAGES {
            let path = job_dir
                .join(format!("attempt-{n}"))
                .join(format!("{stage}.transcript.jsonl"));
            let Ok(bytes) = super::read_part(&path, false, MAX_FILE) else {
                continue;
            };
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(value) = serde_json::from_slice::<Value>(line) {
                    found.push((n, stage, value));
                }
            }
        }
    }
    found
}

/// The calls of the job whose folder is `job_dir`, in brief, at most [`MAX_CALLS`].
pub fn calls(job_dir: &Path, attempts: &[u32]) -> Vec<Call> {
    lines(job_dir, attempts)
        .into_iter()
        .filter(|(_, _, v)| v.get("path").is_some())
        .take(MAX_CALLS)
        .map(|(attempt, stage, v)| Call {
            attempt,
            stage: stage.into(),
            path: v["path"].as_str().unwrap_or_default().into(),
            status: v["status"].as_u64(),
            usage: v["usage"].clone(),
            usd: v["usd"].as_f64(),
            request_bytes: v["request"].to_string().len(),
            response_tail: tail_text(
                v["response"].as_str().unwrap_or_default().as_bytes(),
                RESPONSE_TAIL,
            ),
        })
        .collect()
}
