//! How a job ends: its status, and the documented exit code each status and error maps to.

use serde::Serialize;

/// kiln's exit codes. Stable: CI systems branch on them. Documented in README.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The job succeeded: tests passed and the change is committed on the work branch.
    Success = 0,
    /// An error kiln did not foresee (a bug); the message says what.
    Internal = 1,
    /// The job file, operator config or command line is invalid; nothing ran.
    Invalid = 2,
    /// The machine failed: Docker unreachable, an image missing, a disk full.
    Infrastructure = 3,
    /// A policy escalated the change to a human.
    PolicyEscalate = 10,
    /// A policy denied the change.
    PolicyDeny = 11,
    /// Tests still failed after the last attempt, or the attempts stopped converging
    /// (`kiln policy test`: a case did not match).
    TestsFailed = 12,
    /// A policy asked for review: the change awaits a reviewer.
    AwaitingReview = 13,
    /// `kiln audit verify`: the audit log's chain is broken (a record edited, removed or moved).
    AuditBroken = 14,
    /// kiln was interrupted (Ctrl-C or SIGTERM) and cleaned up.
    Interrupted = 130,
}

impl ExitCode {
    /// The code `code` stands for, if kiln documents it.
    pub fn from_code(code: i64) -> Option<ExitCode> {
        [
            ExitCode::Success,
            ExitCode::Internal,
            ExitCode::Invalid,
            ExitCode::Infrastructure,
            ExitCode::PolicyEscalate,
            ExitCode::PolicyDeny,
            ExitCode::TestsFailed,
            ExitCode::AwaitingReview,
            ExitCode::AuditBroken,
            ExitCode::Interrupted,
        ]
        .into_iter()
        .find(|c| *c as i64 == code)
    }
}

impl serde::Serialize for ExitCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
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
    /// The job's model budget was spent and a call refused: the stage making it was stopped.
    /// Nothing was published; a human decides what next.
    BudgetExhausted,
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
            Status::BudgetExhausted => "budget_exhausted",
            Status::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Succeeded,
            Status::TestsFailed,
            Status::NotConverging,
            Status::AwaitingReview,
            Status::PolicyEscalated,
            Status::PolicyDenied,
            Status::ReviewEscalated,
            Status::MergeEscalated,
            Status::BudgetExhausted,
            Status::Error,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// The exit code of a job that ran to its end with this status.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Status::Succeeded => ExitCode::Success,
            Status::TestsFailed | Status::NotConverging => ExitCode::TestsFailed,
            Status::AwaitingReview => ExitCode::AwaitingReview,
            Status::PolicyEscalated
            | Status::ReviewEscalated
            | Status::MergeEscalated
            | Status::BudgetExhausted => ExitCode::PolicyEscalate,
            Status::PolicyDenied => ExitCode::PolicyDeny,
            Status::Error => ExitCode::Internal,
        }
    }
}
