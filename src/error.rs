//! kiln's errors, and the one place they map to the documented exit codes.

use crate::audit::AuditError;
use crate::config::ConfigError;
use crate::escalation::EscalationError;
use crate::images::ImageError;
use crate::job::JobError;
use crate::policy::{AuthorError, BundleError};
use crate::publish::PublishError;
use crate::sandbox::SandboxError;
use crate::workspace::WorkspaceError;

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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Author(#[from] AuthorError),
    #[error(transparent)]
    Escalation(#[from] EscalationError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Job(_) | Error::Config(_) | Error::Usage(_) | Error::Bundle(_) => {
                ExitCode::Invalid
            }
            Error::Author(AuthorError::Cargo(_)) => ExitCode::Infrastructure,
            Error::Author(_) => ExitCode::Invalid,
            Error::Escalation(EscalationError::Io { .. }) => ExitCode::Infrastructure,
            Error::Escalation(_) => ExitCode::Invalid,
            Error::Publish(e) if e.is_bad_input() => ExitCode::Invalid,
            Error::Publish(_) | Error::Audit(_) => ExitCode::Infrastructure,
            Error::Workspace(e) if e.is_bad_input() => ExitCode::Invalid,
            Error::Image(ImageError::Unknown(_)) => ExitCode::Invalid,
            Error::Workspace(_) | Error::Sandbox(_) | Error::Image(_) | Error::Io { .. } => {
                ExitCode::Infrastructure
            }
            Error::Internal(_) => ExitCode::Internal,
        }
    }
}
