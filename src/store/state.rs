//! A job's state in the store, and how the store's typed columns (state, status, stage, format)
//! are written and read: as the same words the API shows, refused when unknown.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;

use crate::job::Format;
use crate::model::{Phase, Status};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Escalated,
    AwaitingReview,
    Rejected,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Escalated => "escalated",
            State::AwaitingReview => "awaiting_review",
            State::Rejected => "rejected",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        [
            State::Queued,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Escalated,
            State::AwaitingReview,
            State::Rejected,
            State::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// True once the job will not run again.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }
}

/// A typed value kept in a text column.
macro_rules! text_column {
    ($type:ty) => {
        impl ToSql for $type {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $type {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                <$type>::parse(text).ok_or_else(|| {
                    FromSqlError::Other(format!("`{text}` is not a {}", stringify!($type)).into())
                })
            }
        }
    };
}

text_column!(State);
text_column!(Status);
text_column!(Phase);
text_column!(Format);
