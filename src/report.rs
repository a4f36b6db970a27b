//! The JSON report of one job (`--report`), schema `kiln.report/v1`, documented in docs/report.md.

use serde::Serialize;

use crate::config::Loosening;
use crate::job::SeedFields;
use crate::model::{DiffStats, ExitCode, FileStatus, Limits, Status};
use crate::workspace::Skipped;

pub const SCHEMA: &str = "kiln.report/v1";

#[derive(Clone, Debug, Serialize)]
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
    pub exit_code: ExitCode,
    /// Where the escalation went, when the job ended for a human to decide.
    pub escalation: Option<EscalationReport>,
    /// What the generator and the reviewer spent on model calls, when their calls were counted
    /// (a stage with a budget); each request's share is in its stage's egress record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendReport>,
}

/// A job's model spend, by the stage that made the calls, with the budget each was held to.
#[derive(Clone, Debug, Serialize)]
pub struct SpendReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate: Option<StageSpend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<StageSpend>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageSpend {
    pub budget: crate::model::spend::Budget,
    pub spent: crate::model::spend::Spend,
    /// The same spend by model host.
    pub hosts: Vec<HostSpend>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostSpend {
    pub host: String,
    pub kind: crate::model::spend::ApiKind,
    pub spent: crate::model::spend::Spend,
}

#[derive(Clone, Debug, Serialize)]
pub struct EscalationReport {
    /// The escalation folder: `escalation.json`, `summary.html`, `deliveries.json`.
    pub dir: String,
    pub summary_html: String,
    /// True when at least one notify target took the notice.
    pub notified: bool,
    pub deliveries: Vec<crate::notify::Delivery>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    pub id: String,
    pub repo: String,
    pub base: Option<String>,
    pub base_commit: Option<String>,
    pub branch: String,
    pub max_attempts: u32,
    pub context_files: Vec<String>,
    /// With `[context] mode = "auto"`: the files kiln chose, with why, and those the failing
    /// tests named on a retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<crate::context::Selection>,
    pub seed: Option<SeedFields>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SandboxSummary {
    pub limits: Limits,
    /// Every default the job loosened (permitted by the operator); empty means all defaults on.
    pub loosened: Vec<Loosening>,
    pub network: &'static str,
}

#[derive(Clone, Debug, Serialize)]
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

#[derive(Clone, Debug, Serialize)]
pub struct ReviewReport {
    #[serde(flatten)]
    pub stage: StageReport,
    pub verdict: crate::review::ReviewVerdict,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileSummary {
    pub path: String,
    pub status: FileStatus,
    pub additions: usize,
    pub deletions: usize,
    pub binary: bool,
}

#[derive(Clone, Debug, Serialize)]
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
    /// What this stage run spent on model calls, when they were counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<crate::model::spend::Spend>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommitReport {
    pub oid: String,
    pub branch: String,
    /// The repository the branch was written to.
    pub repository: String,
    /// The merge queue's landing, when the job has a `[merge]` target.
    pub merged: Option<MergeReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Timings {
    pub total_ms: u64,
    pub workspace_ms: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What the report says of a landed merge.
#[derive(Clone, Debug, Serialize)]
pub struct MergeReport {
    pub target: String,
    /// The target's tip the change was merged onto, and the commit it now holds.
    pub onto: String,
    pub commit: String,
}
