//! The JSON report of one job (`--report`), schema `kiln.report/v1`, documented in docs/report.md.

use serde::Serialize;

use super::Ran;
use crate::config::Loosening;
use crate::job::StageSpec;
use crate::job::{Limits, SeedFields};
use crate::workspace::{DiffStats, Skipped};

pub const SCHEMA: &str = "kiln.report/v1";

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub job: JobSummary,
    pub sandbox: SandboxSummary,
    pub attempts: Vec<AttemptReport>,
    /// The policy gate's result, when `--policies` was given and the tests passed.
    pub gate: Option<crate::policy::GateResult>,
    pub status: Status,
    /// Why the job ended as it did, in a sentence.
    pub reason: String,
    pub commit: Option<CommitReport>,
    /// The job's artifacts folder.
    pub artifacts: String,
    pub timings: Timings,
    pub exit_code: crate::ExitCode,
    /// Where the escalation went, when the job ended for a human to decide.
    pub escalation: Option<EscalationReport>,
}

#[derive(Debug, Serialize)]
pub struct EscalationReport {
    /// The escalation folder: `escalation.json`, `summary.html`, `deliveries.json`.
    pub dir: String,
    pub summary_html: String,
    /// True when at least one notify target took the notice.
    pub notified: bool,
    pub deliveries: Vec<crate::escalation::notify::Delivery>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded,
    TestsFailed,
    NotConverging,
    /// Tests passed; a policy asked for review. Nothing was published.
    AwaitingReview,
    /// Tests passed; a policy escalated to a human. Nothing was published.
    PolicyEscalated,
    /// Tests passed; a policy denied the change. Nothing was published.
    PolicyDenied,
    /// Tests passed, but the merge queue could not land the change (a conflict with the target or
    /// a red merged tree) and no attempts were left. Nothing was published.
    MergeEscalated,
    /// Tests passed; the reviewer escalated (or its verdict was unusable, or it still requested
    /// changes after the last attempt). Nothing was published.
    ReviewEscalated,
    Error,
}

impl Status {
    /// The name the report uses, as `kiln run` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::TestsFailed => "tests_failed",
            Status::NotConverging => "not_converging",
            Status::AwaitingReview => "awaiting_review",
            Status::PolicyEscalated => "policy_escalated",
            Status::PolicyDenied => "policy_denied",
            Status::ReviewEscalated => "review_escalated",
            Status::MergeEscalated => "merge_escalated",
            Status::Error => "error",
        }
    }

    /// The exit code of a job that ran to its end with this status.
    pub fn exit_code(self) -> crate::ExitCode {
        use crate::ExitCode;
        match self {
            Status::Succeeded => ExitCode::Success,
            Status::TestsFailed | Status::NotConverging => ExitCode::TestsFailed,
            Status::AwaitingReview => ExitCode::AwaitingReview,
            Status::PolicyEscalated | Status::ReviewEscalated | Status::MergeEscalated => {
                ExitCode::PolicyEscalate
            }
            Status::PolicyDenied => ExitCode::PolicyDeny,
            Status::Error => ExitCode::Internal,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct JobSummary {
    pub id: String,
    pub repo: String,
    pub base: Option<String>,
    pub base_commit: Option<String>,
    pub branch: String,
    pub max_attempts: u32,
    pub context_files: Vec<String>,
    pub seed: Option<SeedFields>,
}

#[derive(Debug, Serialize)]
pub struct SandboxSummary {
    pub limits: Limits,
    /// Every default the job loosened (permitted by the operator); empty means all defaults on.
    pub loosened: Vec<Loosening>,
    pub network: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AttemptReport {
    pub attempt: u32,
    pub generate: StageReport,
    /// Paths the generator wrote that kiln did not take (under `.git`, devices, outside the tree).
    pub ignored_paths: Vec<Skipped>,
    /// Files, link targets or paths of the generated tree in which a configured secret was
    /// found; kiln replaced it with `[REDACTED:NAME]` before taking the tree.
    #[serde(skip_serializing_if = "is_zero")]
    pub secrets_redacted: usize,
    pub diff: DiffStats,
    pub files: Vec<FileSummary>,
    /// `None` when the tests did not run: the attempt was not converging, or the generator was killed.
    pub test: Option<StageReport>,
    /// The reviewer's run and verdict, when the job has a `[review]` and the tests passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewReport>,
    /// Paths under `[test] protect` the generator changed; the tests ran (and the commit holds)
    /// their base version.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protected_reverted: Vec<String>,
    pub passed: bool,
    pub artifacts: String,
}

#[derive(Debug, Serialize)]
pub struct ReviewReport {
    #[serde(flatten)]
    pub stage: StageReport,
    pub verdict: crate::review::ReviewVerdict,
}

#[derive(Debug, Serialize)]
pub struct FileSummary {
    pub path: String,
    pub status: crate::workspace::FileStatus,
    pub additions: usize,
    pub deletions: usize,
    pub binary: bool,
}

#[derive(Debug, Serialize)]
pub struct StageReport {
    pub image: String,
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// From asking the engine for the container to its start.
    pub start_ms: u64,
    pub duration_ms: u64,
    pub output_bytes: u64,
    /// Output bytes dropped by the cap (`limits.output`); kept are the first and last halves.
    pub output_dropped_bytes: u64,
    /// Requests through the egress proxy, for a stage with a `network` allowlist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::Summary>,
}

#[derive(Debug, Serialize)]
pub struct CommitReport {
    pub oid: String,
    pub branch: String,
    /// The repository the branch was written to.
    pub repository: String,
    /// The merge queue's landing, when the job has a `[merge]` target.
    pub merged: Option<super::MergeReport>,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub total_ms: u64,
    pub workspace_ms: u64,
}

pub(super) fn stage_report(spec: &StageSpec, ran: &Ran) -> StageReport {
    StageReport {
        image: spec.image.clone(),
        exit_code: ran.exit_code,
        timed_out: ran.timed_out,
        oom_killed: ran.oom_killed,
        start_ms: ran.start_ms,
        duration_ms: ran.duration_ms,
        output_bytes: ran.output_total,
        output_dropped_bytes: ran.output_dropped,
        egress: ran.egress.clone(),
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
