//! What the generator is given in `/kiln/job.json` (schema `kiln.job-input/v1`, docs/job.md),
//! and the feedback from a failed attempt that the next one reads there.

use serde::Serialize;

use super::Ran;
use crate::review::ReviewVerdict;
use crate::sandbox;

/// Most bytes of the previous attempt's diff fed back to the generator.
const FEEDBACK_DIFF_BYTES: usize = 64 << 10;
/// Most bytes of the failing test output fed back to the generator.
const FEEDBACK_TEST_BYTES: usize = 16 << 10;

/// What the generator finds in `/kiln/job.json` (schema `kiln.job-input/v1`, docs/job.md).
#[derive(Serialize)]
pub(super) struct JobInput<'a> {
    pub(super) schema: &'static str,
    pub(super) job_id: &'a str,
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    pub(super) prompt: &'a str,
    pub(super) test_requirements: Option<&'a str>,
    pub(super) context_files: &'a [String],
    pub(super) branch: &'a str,
    pub(super) workspace: &'static str,
    pub(super) previous: Option<&'a Feedback>,
}

/// The previous attempt, as fed back to the generator.
#[derive(Serialize)]
pub(super) struct Feedback {
    attempt: u32,
    /// The previous attempt's whole change against the base, as a unified diff.
    diff: String,
    diff_truncated: bool,
    generator_exit_code: Option<i64>,
    /// Set when the generator was cut short (timeout, out of memory), left a tree kiln could
    /// not read whole, or changed nothing; the tests did not run.
    untested_because: Option<&'static str>,
    test_exit_code: Option<i64>,
    test_timed_out: bool,
    /// The last bytes of the failing test output.
    test_output_tail: String,
    /// Protected paths (`[test] protect`) the attempt changed; the tests ran their base version.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    protected_reverted: Vec<String>,
    /// The reviewer's verdict, when the tests passed and the reviewer requested changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<ReviewVerdict>,
    /// Why the passing change did not merge: this attempt starts on the target's new tip.
    #[serde(skip_serializing_if = "Option::is_none")]
    merge: Option<MergeFeedback>,
}

/// A merge the queue could not land: the change conflicts with the target's new tip, or the
/// merged tree fails its tests.
#[derive(Clone, Serialize)]
pub(super) struct MergeFeedback {
    target: String,
    /// The target's tip, which is now the attempt's base.
    tip: String,
    /// Paths that conflict; empty when the merge was clean but its tests failed.
    conflicts: Vec<String>,
    test_exit_code: Option<i64>,
    /// The last bytes of the merged tree's failing test output.
    test_output_tail: String,
}

impl MergeFeedback {
    pub(super) fn conflict(target: &str, tip: git2::Oid, paths: Vec<String>) -> Self {
        MergeFeedback {
            target: target.into(),
            tip: tip.to_string(),
            conflicts: paths,
            test_exit_code: None,
            test_output_tail: String::new(),
        }
    }

    pub(super) fn red(target: &str, tip: git2::Oid, tested: &Ran) -> Self {
        MergeFeedback {
            target: target.into(),
            tip: tip.to_string(),
            conflicts: Vec::new(),
            test_exit_code: tested.exit_code,
            test_output_tail: sandbox::tail_text(&tested.output_bytes, FEEDBACK_TEST_BYTES),
        }
    }

    /// In a sentence, for the report.
    pub(super) fn summary(&self) -> String {
        if self.conflicts.is_empty() {
            format!("merged onto {} its tests fail", self.target)
        } else {
            format!(
                "it conflicts with {} on {}",
                self.target,
                self.conflicts.join(", ")
            )
        }
    }
}

impl Feedback {
    pub(super) fn new(
        attempt: u32,
        mut diff: String,
        generated: &Ran,
        untested_because: Option<&'static str>,
        tested: Option<&Ran>,
        protected_reverted: Vec<String>,
    ) -> Self {
        let diff_truncated = diff.len() > FEEDBACK_DIFF_BYTES;
        diff.truncate(sandbox::head_text(&diff, FEEDBACK_DIFF_BYTES).len());
        Feedback {
            attempt,
            diff,
            diff_truncated,
            generator_exit_code: generated.exit_code,
            untested_because,
            test_exit_code: tested.and_then(|t| t.exit_code),
            test_timed_out: tested.is_some_and(|t| t.timed_out),
            test_output_tail: tested
                .map(|t| sandbox::tail_text(&t.output_bytes, FEEDBACK_TEST_BYTES))
                .unwrap_or_default(),
            protected_reverted,
            review: None,
            merge: None,
        }
    }

    /// The same feedback, with why the merge queue could not land the change.
    pub(super) fn with_merge(mut self, merge: MergeFeedback) -> Self {
        self.merge = Some(merge);
        self
    }

    /// The same feedback, with the reviewer's request for changes.
    pub(super) fn with_review(mut self, verdict: ReviewVerdict) -> Self {
        self.review = Some(verdict);
        self
    }
}
