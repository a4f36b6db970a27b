//! kiln's vocabulary: the types and helpers every layer speaks (ids and stages, sizes and
//! limits, host names, stage specs, the typed diff, statuses and exit codes, time, text, files,
//! processes). It imports nothing else of kiln; everything else may import it.

pub mod diff;
pub mod fs;
pub mod globs;
pub mod host;
pub mod ids;
pub mod limits;
pub mod pipe;
pub mod process;
pub mod size;
pub mod spend;
pub mod stage;
pub mod status;
pub mod text;
pub mod time;
pub mod trace;

pub use diff::{Diff, DiffStats, FileDiff, FileStatus, Hunk, Line, LineKind};
pub use globs::Globs;

/// A value of the vocabulary that does not parse or does not hold; the message says what is
/// wrong and, where it can, what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);
pub use host::{Allow, Host};
pub use ids::{JobId, Phase, Stage};
pub use limits::Limits;
pub use size::ByteSize;
pub use stage::{Agent, NetworkSpec, StageSpec};
pub use status::{ExitCode, Status};
pub use trace::TraceParent;
