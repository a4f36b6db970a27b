//! ABI version 2's input: the gate's input in postcard's binary encoding (the fields in order,
//! lengths and numbers as varints, text as it is), which a module reads in place instead of
//! parsing JSON. Built once per evaluation and per [`Reads`] level; each policy's config is
//! spliced on at the end (policies/ABI.md).

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

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
        diff: WireDiff { diff, reads },
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

/// The diff as it travels, written straight from kiln's own (no copy of its lines is made):
/// its files with their hunks (`Lines`), without (`Files`), or none (`Stats`).
struct WireDiff<'a> {
    diff: &'a Diff,
    reads: Reads,
}

impl Serialize for WireDiff<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let files: &[FileDiff] = match self.reads {
            Reads::Stats => &[],
            Reads::Files | Reads::Lines => &self.diff.files,
        };
        let lines = self.reads == Reads::Lines;
        let stats = self.diff.stats;
        let mut out = serializer.serialize_struct("Diff", 2)?;
        out.serialize_field("files", &Seq(files, |f| WireFile(f, lines)))?;
        out.serialize_field(
            "stats",
            &(
                stats.files_changed as u64,
                stats.additions as u64,
                stats.deletions as u64,
            ),
        )?;
        out.end()
    }
}

/// The items of a slice, each as the function shows it.
struct Seq<'a, T, F>(&'a [T], F);

impl<'a, T, V: Serialize, F: Fn(&'a T) -> V> Serialize for Seq<'a, T, F> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(&self.1))
    }
}

/// A file as it travels; with its hunks only when the policy reads lines.
struct WireFile<'a>(&'a FileDiff, bool);

impl Serialize for WireFile<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (f, lines) = (self.0, self.1);
        let hunks: &[Hunk] = if lines { &f.hunks } else { &[] };
        let mut out = serializer.serialize_struct("FileDiff", 10)?;
        out.serialize_field("path", &f.path)?;
        out.serialize_field("old_path", &f.old_path)?;
        out.serialize_field("status", f.status.as_str())?;
        out.serialize_field("old_mode", &f.old_mode)?;
        out.serialize_field("new_mode", &f.new_mode)?;
        out.serialize_field("binary", &f.binary)?;
        out.serialize_field("additions", &(f.additions as u64))?;
        out.serialize_field("deletions", &(f.deletions as u64))?;
        out.serialize_field("hunks", &Seq(hunks, WireHunk))?;
        out.serialize_field("omitted", &f.omitted)?;
        out.end()
    }
}

struct WireHunk<'a>(&'a Hunk);

impl Serialize for WireHunk<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let mut out = serializer.serialize_struct("Hunk", 6)?;
        out.serialize_field("header", &h.header)?;
        out.serialize_field("old_start", &h.old_start)?;
        out.serialize_field("old_lines", &h.old_lines)?;
        out.serialize_field("new_start", &h.new_start)?;
        out.serialize_field("new_lines", &h.new_lines)?;
        out.serialize_field("lines", &Seq(&h.lines, WireLine))?;
        out.end()
    }
}

struct WireLine<'a>(&'a Line);

impl Serialize for WireLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let l = self.0;
        let mut out = serializer.serialize_struct("Line", 4)?;
        out.serialize_field("kind", l.kind.as_str())?;
        out.serialize_field("old_line", &l.old_line)?;
        out.serialize_field("new_line", &l.new_line)?;
        out.serialize_field("content", &l.content)?;
        out.end()
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
