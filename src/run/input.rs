//! What the generator is given in `/kiln/job.json` (schema `kiln.job-input/v1`, docs/job.md),
//! and the feedback from a failed attempt that the next one reads there.

use serde::Serialize;

use super::stage::Ran;
use crate::context::{Selected, Selection};
use crate::review::ReviewVerdict;

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
    /// With `[context] mode = "auto"`: the files kiln chose at the base, most useful first,
    /// each with its size, score and why (and on a retry, those the failing tests named).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) context: Option<&'a [Selected]>,
    pub(super) branch: &'a str,
    pub(super) workspace: &'static str,
    pub(super) previous: Option<&'a Feedback>,
    /// All of the above as one text, for agents that take a single prompt (the adapters).
    pub(super) agent_prompt: String,
}

/// The request as one text: the prompt, what the tests require, the files to start from, and
/// what went wrong in the previous attempt.
pub(super) fn agent_prompt(
    prompt: &str,
    test_requirements: Option<&str>,
    context_files: &[String],
    previous: Option<&Feedback>,
) -> String {
    let mut text = prompt.trim_end().to_string();
    if let Some(requirements) = test_requirements {
        text.push_str(&format!(
            "\n\nThe tests require:\n{}",
            requirements.trim_end()
        ));
    }
    if !context_files.is_empty() {
        text.push_str("\n\nStart from these files:\n");
        for file in context_files {
            text.push_str(&format!("- {file}\n"));
        }
    }
    let Some(previous) = previous else {
        return text;
    };
    text.push_str(&format!(
        "\n\nAttempt {} did not pass; the workspace holds it as it was left.\n",
        previous.attempt
    ));
    if let Some(why) = previous.untested_because {
        text.push_str(&format!("The tests did not run: {why}.\n"));
    } else if let Some(review) = &previous.review {
        text.push_str(&format!(
            "The tests passed, but the reviewer asked for changes: {}\n",
            review.summary
        ));
        for comment in &review.comments {
            text.push_str(&format!(
                "- {}\n",
                serde_json::to_string(comment).unwrap_or_default()
            ));
        }
    } else if let Some(merge) = &previous.merge {
        text.push_str(&format!(
            "It passed, but did not merge: {}.\n{}",
            merge.summary(),
            merge.test_output_tail
        ));
    } else {
        let ended = match (previous.test_timed_out, previous.test_exit_code) {
            (true, _) => "timed out".to_string(),
            (false, Some(code)) => format!("exited with {code}"),
            (false, None) => "were killed".to_string(),
        };
        text.push_str(&format!(
            "The tests {ended}. The end of their output:\n```\n{}\n```\n",
            previous.test_output_tail.trim_end()
        ));
    }
    if !previous.protected_reverted.is_empty() {
        text.push_str(&format!(
            "These files are protected; the tests ran their original version: {}\n",
            previous.protected_reverted.join(", ")
        ));
    }
    text.push_str(&format!(
        "Its change against the base{}:\n```diff\n{}\n```\n",
        if previous.diff_truncated {
            " (cut short)"
        } else {
            ""
        },
        previous.diff.trim_end()
    ));
    text
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
            test_output_tail: crate::model::text::tail_text(
                &tested.output_bytes,
                FEEDBACK_TEST_BYTES,
            ),
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
        diff.truncate(crate::model::text::head_text(&diff, FEEDBACK_DIFF_BYTES).len());
        Feedback {
            attempt,
            diff,
            diff_truncated,
            generator_exit_code: generated.exit_code,
            untested_because,
            test_exit_code: tested.and_then(|t| t.exit_code),
            test_timed_out: tested.is_some_and(|t| t.timed_out),
            test_output_tail: tested
                .map(|t| crate::model::text::tail_text(&t.output_bytes, FEEDBACK_TEST_BYTES))
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

/// Adds to `selection` the files of the base tree (`paths`) that the previous attempt's failing
/// test output names, each once, whatever the budget: the tests said where to look.
pub(super) fn add_named_by_tests(
    selection: &mut Selection,
    paths: &[(String, u64)],
    previous: &Feedback,
) {
    let output = &previous.test_output_tail;
    if output.is_empty() {
        return;
    }
    let why = format!("named by the failing tests of attempt {}", previous.attempt);
    for (path, bytes) in paths {
        // A path counts where it stands as a word of its own, not inside a longer one.
        let named = output.match_indices(path.as_str()).any(|(at, _)| {
            let before = output[..at].chars().next_back();
            let after = output[at + path.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '/' || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        });
        if !named {
            continue;
        }
        match selection.files.iter_mut().find(|f| f.path == *path) {
            Some(chosen) => {
                if !chosen.why.contains(&why) {
                    chosen.why.push(why.clone());
                }
            }
            None => {
                selection.used += bytes;
                selection.files.push(Selected {
                    path: path.clone(),
                    bytes: *bytes,
                    score: 0.0,
                    why: vec![why.clone()],
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_the_failing_tests_name_are_added_once_as_whole_words() {
        let previous = Feedback {
            attempt: 1,
            diff: String::new(),
            diff_truncated: false,
            generator_exit_code: Some(0),
            untested_because: None,
            test_exit_code: Some(1),
            test_timed_out: false,
            test_output_tail: "FAIL app/models.py:3\nsee app/models.py again; xapp/view.pyc\n"
                .into(),
            protected_reverted: Vec::new(),
            review: None,
            merge: None,
        };
        let mut selection = Selection {
            files: Vec::new(),
            budget: 100,
            used: 0,
            notes: Vec::new(),
        };
        let paths = [
            ("app/models.py".to_string(), 10),
            ("app/view.py".to_string(), 20),
            ("models.py".to_string(), 30),
        ];
        add_named_by_tests(&mut selection, &paths, &previous);
        add_named_by_tests(&mut selection, &paths, &previous);
        let named: Vec<(&str, &[String])> = selection
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.why.as_slice()))
            .collect();
        assert_eq!(
            named,
            [(
                "app/models.py",
                &["named by the failing tests of attempt 1".to_string()][..]
            )]
        );
        assert_eq!(selection.used, 10);
    }

    #[test]
    fn the_agent_prompt_carries_the_failure_back() {
        let first = agent_prompt(
            "Greet kiln.",
            Some("test.sh passes"),
            &["greet.sh".into()],
            None,
        );
        assert_eq!(
            first,
            "Greet kiln.\n\nThe tests require:\ntest.sh passes\n\nStart from these files:\n- greet.sh\n"
        );
        let ran = |code: i64, out: &str| Ran {
            exit_code: Some(code),
            timed_out: false,
            oom_killed: false,
            start_ms: 0,
            duration_ms: 0,
            egress: None,
            spend: None,
            output_total: out.len() as u64,
            output_dropped: 0,
            output_bytes: out.as_bytes().to_vec().into(),
        };
        let feedback = Feedback::new(
            1,
            "-old\n+new\n".into(),
            &ran(0, ""),
            None,
            Some(&ran(1, "EXPECTED_GREETING=Hello, kiln!\n")),
            Vec::new(),
        );
        let second = agent_prompt("Greet kiln.", None, &[], Some(&feedback));
        assert!(second.contains("Attempt 1 did not pass"), "{second}");
        assert!(second.contains("The tests exited with 1."), "{second}");
        assert!(
            second.contains("EXPECTED_GREETING=Hello, kiln!"),
            "{second}"
        );
        assert!(second.contains("```diff\n-old\n+new\n```"), "{second}");
    }
}
