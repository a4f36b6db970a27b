//! kiln's errors, and the one place they map to the documented exit codes.

use crate::artifacts::ArtifactError;
use crate::audit::AuditError;
use crate::config::ConfigError;
use crate::context::ContextError;
use crate::egress::CaError;
use crate::escalation::EscalationError;
use crate::images::ImageError;
use crate::job::JobError;
use crate::model::ExitCode;
use crate::policy::{AuthorError, BundleError, EngineError};
use crate::publish::PublishError;
use crate::sandbox::SandboxError;
use crate::secrets::SecretError;
use crate::store::StoreError;
use crate::workspace::WorkspaceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Context(#[from] ContextError),
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
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Talking to a `kiln serve`: it could not be reached, or its answer could not be read.
    #[error("{context}: {source}")]
    Http {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    /// A `kiln serve` answered with a failure of its own.
    #[error("{0}")]
    Server(String),
    /// kiln could not serialize its own value: a bug.
    #[error("cannot serialize: {0}")]
    Json(#[source] serde_json::Error),
    /// A blocking task kiln started panicked or was cancelled: a bug.
    #[error("a background task failed: {0}")]
    Join(#[source] tokio::task::JoinError),
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
            Error::Job(_)
            | Error::Config(_)
            | Error::Usage(_)
            | Error::Bundle(_)
            | Error::Secret(_)
            | Error::Ca(CaError::Pem(_) | CaError::NoCertificate) => ExitCode::Invalid,
            Error::Ca(_) => ExitCode::Internal,
            Error::Author(AuthorError::Cargo(_)) => ExitCode::Infrastructure,
            Error::Author(_) => ExitCode::Invalid,
            Error::Escalation(
                EscalationError::Io { .. } | EscalationError::Artifact(ArtifactError::Io { .. }),
            ) => ExitCode::Infrastructure,
            Error::Escalation(EscalationError::Json(_) | EscalationError::Artifact(_)) => {
                ExitCode::Internal
            }
            Error::Escalation(_) => ExitCode::Invalid,
            Error::Publish(e) if e.is_bad_input() => ExitCode::Invalid,
            Error::Publish(_)
            | Error::Audit(_)
            | Error::Store(_)
            | Error::Engine(_)
            | Error::Http { .. }
            | Error::Server(_) => ExitCode::Infrastructure,
            Error::Workspace(e) if e.is_bad_input() => ExitCode::Invalid,
            Error::Context(e) if e.is_bad_input() => ExitCode::Invalid,
            Error::Context(_) => ExitCode::Infrastructure,
            Error::Image(ImageError::Unknown(_)) => ExitCode::Invalid,
            Error::Workspace(_) | Error::Sandbox(_) | Error::Image(_) | Error::Io { .. } => {
                ExitCode::Infrastructure
            }
            Error::Artifact(ArtifactError::Io { .. }) => ExitCode::Infrastructure,
            Error::Artifact(ArtifactError::Json { .. }) | Error::Json(_) | Error::Join(_) => {
                ExitCode::Internal
            }
            Error::Internal(_) => ExitCode::Internal,
        }
    }
}
