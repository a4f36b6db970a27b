//! What the console's pages read from a job's files and show as text: capped reads (a job's
//! files hold what a container wrote), durations and ages, a job file's fields.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::job::Format;
use crate::store::JobRow;

/// The most of one JSON artifact a page reads.
const MAX_JSON: u64 = 16 << 20;

/// The JSON file at `path`, if it is there, no larger than the cap, and JSON.
pub(super) fn read_json(path: &Path) -> Option<serde_json::Value> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_JSON {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_JSON).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The last `bytes` of the file at `path` as text (a cut character shown as U+FFFD), and
/// whether more came before.
pub(super) fn tail(path: &Path, bytes: u64) -> Option<(String, bool)> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(bytes);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    file.take(bytes).read_to_end(&mut buf).ok()?;
    Some((String::from_utf8_lossy(&buf).into_owned(), start > 0))
}

/// `1.2 s`, `3 min 4 s`, `250 ms`.
pub(super) fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// How long ago `then_ms` was, at `now_ms`.
pub(super) fn ago(then_ms: i64, now_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A top-level string field of the job file as it was submitted (the seed article's record
/// keeps its fields under `payload`); none when the file does not say.
pub(super) fn spec_field(row: &JobRow, field: &str) -> Option<String> {
    let value = match row.spec_format {
        Format::Toml => {
            let table: toml::Table = toml::from_str(&row.spec).ok()?;
            return table.get(field)?.as_str().map(str::to_string);
        }
        Format::Json => serde_json::from_str::<serde_json::Value>(&row.spec).ok()?,
    };
    value
        .get(field)
        .or_else(|| value.get("payload")?.get(field))?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(duration(250), "250 ms");
        assert_eq!(duration(1250), "1.2 s");
        assert_eq!(duration(184_000), "3 min 4 s");
        assert_eq!(ago(0, 59_000), "59 s ago");
        assert_eq!(ago(0, 7_200_000), "2 h ago");
    }

    #[test]
    fn a_tail_is_the_end_of_the_file_and_says_when_it_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(tail(&path, 4), Some(("6789".into(), true)));
        assert_eq!(tail(&path, 40), Some(("0123456789".into(), false)));
        assert_eq!(tail(&dir.path().join("none"), 4), None);
    }
}
