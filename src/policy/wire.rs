//! ABI version 2's input: the gate's input in postcard's binary encoding (the fields in order,
//! lengths and numbers as varints, text as it is), which a module reads in place instead of
//! parsing JSON. Built once per evaluation and per [`Reads`] level; each policy's config is
//! spliced on at the end (policies/ABI.md).

use serde::Serialize;

use super::host::Reads;
use crate::model::{Diff, FileDiff, Hunk, Line};

/// The gate's input (`job`, `diff` left at `reads`, `tests`, `reviewer`), without its last
/// field (the config): see [`with_config`].
pub(super) fn common(
    job: &impl Serialize,
    diff: &Diff,
    tests: &impl Serialize,
    reviewer: Option<&serde_json::Value>,
    reads: Reads,
) -> Vec<u8> {
    let wire = Wire {
        abi: 2,
        job,
        diff: WireDiff::new(diff, reads),
        tests,
        reviewer: reviewer.map(|v| serde_json::to_string(v).expect("the verdict is JSON")),
    };
    postcard::to_allocvec(&wire).expect("the gate input encodes")
}

/// One policy's whole input: `common` (from [`common`]) and its config, as JSON text.
pub(super) fn with_config(common: &[u8], config: &serde_json::Value) -> Vec<u8> {
    let config = serde_json::to_vec(config).expect("config is JSON");
    let mut length = [0u8; 10];
    let length = postcard::to_slice(&(config.len() as u64), &mut length)
        .expect("a varint fits in ten bytes");
    let mut bytes = Vec::with_capacity(common.len() + length.len() + config.len());
    bytes.extend_from_slice(common);
    bytes.extend_from_slice(length);
    bytes.extend_from_slice(&config);
    bytes
}

/// The input's fields in ABI order but the last, `config`. The reviewer's verdict travels as
/// JSON text (postcard has no free-form value).
#[derive(Serialize)]
struct Wire<'a, J, T> {
    abi: u32,
    job: J,
    diff: WireDiff<'a>,
    tests: T,
    reviewer: Option<String>,
}

#[derive(Serialize)]
struct WireDiff<'a> {
    files: Vec<WireFile<'a>>,
    stats: WireStats,
}

#[derive(Serialize)]
struct WireStats {
    files_changed: u64,
    additions: u64,
    deletions: u64,
}

#[derive(Serialize)]
struct WireFile<'a> {
    path: &'a str,
    old_path: Option<&'a str>,
    status: &'static str,
    old_mode: Option<&'a str>,
    new_mode: Option<&'a str>,
    binary: bool,
    additions: u64,
    deletions: u64,
    hunks: Vec<WireHunk<'a>>,
    omitted: Option<&'a str>,
}

#[derive(Serialize)]
struct WireHunk<'a> {
    header: &'a str,
    old_start: u32,
    old_lines: u32,
    new_start: u32,
    new_lines: u32,
    lines: Vec<WireLine<'a>>,
}

#[derive(Serialize)]
struct WireLine<'a> {
    kind: &'static str,
    old_line: Option<u32>,
    new_line: Option<u32>,
    content: &'a str,
}

impl<'a> WireDiff<'a> {
    fn new(diff: &'a Diff, reads: Reads) -> Self {
        let files = match reads {
            Reads::Stats => Vec::new(),
            Reads::Files => diff.files.iter().map(|f| file(f, false)).collect(),
            Reads::Lines => diff.files.iter().map(|f| file(f, true)).collect(),
        };
        WireDiff {
            files,
            stats: WireStats {
                files_changed: diff.stats.files_changed as u64,
                additions: diff.stats.additions as u64,
                deletions: diff.stats.deletions as u64,
            },
        }
    }
}

/// `f` as it travels; with its hunks only when `lines`.
fn file(f: &FileDiff, lines: bool) -> WireFile<'_> {
    WireFile {
        path: &f.path,
        old_path: f.old_path.as_deref(),
        status: f.status.as_str(),
        old_mode: f.old_mode.as_deref(),
        new_mode: f.new_mode.as_deref(),
        binary: f.binary,
        additions: f.additions as u64,
        deletions: f.deletions as u64,
        hunks: if lines {
            f.hunks.iter().map(hunk).collect()
        } else {
            Vec::new()
        },
        omitted: f.omitted.as_deref(),
    }
}

fn hunk(h: &Hunk) -> WireHunk<'_> {
    WireHunk {
        header: &h.header,
        old_start: h.old_start,
        old_lines: h.old_lines,
        new_start: h.new_start,
        new_lines: h.new_lines,
        lines: h.lines.iter().map(line).collect(),
    }
}

fn line(l: &Line) -> WireLine<'_> {
    WireLine {
        kind: l.kind.as_str(),
        old_line: l.old_line,
        new_line: l.new_line,
        content: &l.content,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::model::{DiffStats, FileStatus, LineKind};

    /// ABI 2's input as the SDK reads it (policies/sdk `abi::Wire`), field for field.
    #[derive(Deserialize, Debug)]
    struct Read<'a> {
        abi: u32,
        job: (&'a str, &'a str, &'a str, &'a str, bool, Vec<&'a str>),
        #[serde(borrow)]
        diff: (Vec<ReadFile<'a>>, (u64, u64, u64)),
        tests: Vec<(u32, bool, Option<i64>)>,
        reviewer: Option<&'a str>,
        config: &'a str,
    }

    #[derive(Deserialize, Debug)]
    #[allow(clippy::type_complexity)]
    struct ReadFile<'a> {
        path: &'a str,
        old_path: Option<&'a str>,
        status: &'a str,
        modes: (Option<&'a str>, Option<&'a str>),
        binary: bool,
        counts: (u64, u64),
        #[serde(borrow)]
        hunks: Vec<(
            &'a str,
            u32,
            u32,
            u32,
            u32,
            Vec<(&'a str, Option<u32>, Option<u32>, &'a str)>,
        )>,
        omitted: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct Job<'a> {
        id: &'a str,
        repo: &'a str,
        branch: &'a str,
        prompt: &'a str,
        tests_fixed: bool,
        protect: Vec<&'a str>,
    }

    #[test]
    fn the_sdk_reads_every_field_where_the_abi_puts_it() {
        let diff = Diff {
            files: vec![FileDiff {
                path: "src/auth/login.rs".into(),
                old_path: Some("src/login.rs".into()),
                status: FileStatus::Renamed,
                old_mode: Some("100644".into()),
                new_mode: None,
                binary: false,
                additions: 1,
                deletions: 0,
                hunks: vec![Hunk {
                    header: "@@ -1 +1,2 @@".into(),
                    old_start: 1,
                    old_lines: 1,
                    new_start: 1,
                    new_lines: 2,
                    lines: vec![Line {
                        kind: LineKind::Added,
                        old_line: None,
                        new_line: Some(2),
                        content: "say \"hi\"\n".into(),
                    }],
                }],
                omitted: None,
            }],
            stats: DiffStats {
                files_changed: 1,
                additions: 1,
                deletions: 0,
            },
        };
        let job = Job {
            id: "j",
            repo: "r",
            branch: "factory/x",
            prompt: "p",
            tests_fixed: true,
            protect: vec!["tests/**"],
        };
        let tests = vec![(1u32, false, Some(-1i64))];
        let verdict = serde_json::json!({"approve": true});
        let config = serde_json::json!({"decision": "deny"});
        for (reads, hunks) in [(Reads::Lines, 1), (Reads::Files, 0), (Reads::Stats, 0)] {
            let common = common(&job, &diff, &tests, Some(&verdict), reads);
            let bytes = with_config(&common, &config);
            let read: Read = postcard::from_bytes(&bytes).expect("the SDK's layout reads it");
            assert_eq!(read.abi, 2);
            assert_eq!(read.job.3, "p");
            assert!(read.job.4);
            assert_eq!(read.job.5, ["tests/**"]);
            assert_eq!(read.diff.1, (1, 1, 0));
            assert_eq!(read.tests, [(1, false, Some(-1))]);
            assert_eq!(read.reviewer, Some(r#"{"approve":true}"#));
            assert_eq!(read.config, r#"{"decision":"deny"}"#);
            if reads == Reads::Stats {
                assert!(read.diff.0.is_empty());
                continue;
            }
            let file = &read.diff.0[0];
            assert_eq!(
                (file.path, file.old_path),
                ("src/auth/login.rs", Some("src/login.rs"))
            );
            assert_eq!(file.status, "renamed");
            assert_eq!(file.modes, (Some("100644"), None));
            assert!(!file.binary);
            assert_eq!(file.counts, (1, 0));
            assert_eq!(file.omitted, None);
            assert_eq!(file.hunks.len(), hunks);
            if let Some(hunk) = file.hunks.first() {
                assert_eq!((hunk.0, hunk.3, hunk.4), ("@@ -1 +1,2 @@", 1, 2));
                assert_eq!(hunk.5, [("added", None, Some(2), "say \"hi\"\n")]);
            }
        }
    }
}
