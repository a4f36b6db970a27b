//! The reviewer stage's vocabulary: what a reviewer is given in `/kiln/review.json` (schema
//! `kiln.review-input/v1`) and the verdict it leaves in `/kiln/out/verdict.json`.
//!
//! The verdict comes from a container and is hostile: a verdict that is missing, oversized,
//! malformed, or from a reviewer that failed, becomes `escalate`, never `approve`.

use serde::{Deserialize, Serialize};

/// Where the reviewer writes its verdict, inside its writable output folder.
pub const VERDICT_PATH: &str = "/kiln/out/verdict.json";
/// Where the reviewer finds its input.
pub const REVIEW_INPUT: &str = "/kiln/review.json";
/// The largest verdict file kiln reads.
pub const MAX_VERDICT_BYTES: u64 = 64 << 10;
/// Most comments kept from one verdict.
const MAX_COMMENTS: usize = 200;
/// Most characters kept of a summary or one comment.
const MAX_TEXT_CHARS: usize = 4000;

/// What the reviewer decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Approve,
    RequestChanges,
    Escalate,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Approve => "approve",
            VerdictKind::RequestChanges => "request_changes",
            VerdictKind::Escalate => "escalate",
        }
    }
}

/// One remark of the reviewer, at a path and line when it names one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewComment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub message: String,
}

/// The verdict as written in `verdict.json`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictFile {
    verdict: VerdictKind,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    comments: Vec<ReviewComment>,
}

/// The verdict kiln acts on (and policies see as `input.reviewer`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReviewVerdict {
    pub verdict: VerdictKind,
    pub summary: String,
    pub comments: Vec<ReviewComment>,
    /// Set when kiln decided `escalate` itself: why the reviewer's verdict could not be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

impl ReviewVerdict {
    /// A verdict kiln made because the reviewer's could not be used.
    pub fn escalate(why: impl Into<String>) -> Self {
        ReviewVerdict {
            verdict: VerdictKind::Escalate,
            summary: String::new(),
            comments: Vec::new(),
            invalid: Some(why.into()),
        }
    }

    /// Reads `verdict.json` as the reviewer left it (already capped in size by the caller).
    pub fn parse(bytes: &[u8]) -> Self {
        if bytes.len() as u64 > MAX_VERDICT_BYTES {
            return Self::escalate(format!(
                "the verdict is {} bytes, over the {MAX_VERDICT_BYTES}-byte limit",
                bytes.len()
            ));
        }
        match serde_json::from_slice::<VerdictFile>(bytes) {
            Ok(file) => ReviewVerdict {
                verdict: file.verdict,
                summary: clip(&file.summary),
                comments: file
                    .comments
                    .into_iter()
                    .take(MAX_COMMENTS)
                    .map(|c| ReviewComment {
                        path: c.path.map(|p| clip(&p)),
                        line: c.line,
                        message: clip(&c.message),
                    })
                    .collect(),
                invalid: None,
            },
            Err(e) => Self::escalate(format!("the verdict is malformed: {e}")),
        }
    }
}

/// At most [`MAX_TEXT_CHARS`] characters, with control characters but newline and tab dropped.
fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .take(MAX_TEXT_CHARS)
        .collect()
}

/// Why the reviewer's output file could not be taken; each makes the verdict `escalate`.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the reviewer's output is not a readable archive: {0}")]
    Archive(#[source] std::io::Error),
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{name} is {size} bytes, over the {cap}-byte limit")]
    TooLarge { name: String, size: u64, cap: u64 },
    #[error("no {0} was written")]
    Missing(String),
}

/// The one regular file `name` in `tar` (a volume's tar as the holder packs it),
/// read up to `cap` bytes. A link, a folder or anything else is refused: the reviewer's output is
/// never followed anywhere.
pub fn single_file_from_tar(tar: &[u8], name: &str, cap: u64) -> Result<Vec<u8>, OutputError> {
    use std::io::Read;
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(OutputError::Archive)?;
    for entry in entries {
        let entry = entry.map_err(OutputError::Archive)?;
        let path = entry.path().map_err(OutputError::Archive)?.into_owned();
        if path.as_os_str() != name {
            continue;
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(OutputError::NotRegular(name.into()));
        }
        if entry.size() > cap {
            return Err(OutputError::TooLarge {
                name: name.into(),
                size: entry.size(),
                cap,
            });
        }
        let mut bytes = Vec::new();
        entry
            .take(cap)
            .read_to_end(&mut bytes)
            .map_err(OutputError::Archive)?;
        return Ok(bytes);
    }
    Err(OutputError::Missing(name.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_verdict_is_read_with_its_comments() {
        let v = ReviewVerdict::parse(
            br#"{"verdict":"request_changes","summary":"close",
                 "comments":[{"path":"a.sh","line":2,"message":"quote \u0007this"}]}"#,
        );
        assert_eq!(v.verdict, VerdictKind::RequestChanges);
        assert_eq!(v.comments[0].message, "quote this");
        assert_eq!(v.invalid, None);
    }

    #[test]
    fn malformed_unknown_or_oversized_verdicts_escalate() {
        for bytes in [
            &b"approve"[..],
            br#"{"verdict":"lgtm"}"#,
            br#"{"verdict":"approve","approved":true}"#,
            &vec![b' '; MAX_VERDICT_BYTES as usize + 1],
        ] {
            let v = ReviewVerdict::parse(bytes);
            assert_eq!(v.verdict, VerdictKind::Escalate);
            assert!(v.invalid.is_some());
        }
    }

    fn tar_with(kind: tar::EntryType, name: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            header.set_size(0);
            builder
                .append_link(&mut header, name, "/etc/passwd")
                .unwrap();
        } else {
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn only_a_regular_file_under_the_cap_is_read_from_the_tar() {
        let tar = tar_with(tar::EntryType::Regular, "verdict.json", b"{}");
        assert_eq!(
            single_file_from_tar(&tar, "verdict.json", 10).unwrap(),
            b"{}"
        );
        assert!(single_file_from_tar(&tar, "verdict.json", 1).is_err());
        assert!(single_file_from_tar(&tar, "other.json", 10).is_err());
        let link = tar_with(tar::EntryType::Symlink, "verdict.json", b"");
        assert!(
            single_file_from_tar(&link, "verdict.json", 10)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes a reviewer leaves give a verdict: usable, or `escalate` saying why; only a
        /// well-formed approval approves.
        #[test]
        fn any_bytes_give_a_verdict_and_only_a_clean_approval_approves(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..512),
                "\\{\"verdict\": *\"(approve|escalate|request_changes|x)\"(, *\"summary\": *\".{0,20}\")?(, *\"comments\": *\\[.{0,40}\\])?\\}"
                    .prop_map(String::into_bytes),
            ],
        ) {
            let verdict = ReviewVerdict::parse(&bytes);
            if verdict.invalid.is_some() {
                prop_assert_eq!(verdict.verdict, VerdictKind::Escalate);
            }
            prop_assert!(verdict.comments.len() <= MAX_COMMENTS);
            prop_assert!(verdict.summary.chars().count() <= MAX_TEXT_CHARS);
            prop_assert!(!verdict.summary.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        }
    }
}
