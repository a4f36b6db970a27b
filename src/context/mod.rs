//! Context selection: the smallest useful set of a repository's files for a request, most useful
//! first, each with why it is there, cut at a byte budget.
//!
//! The seeds the caller names come first; then files by a blend of two rankings: BM25 of the
//! prompt's terms against paths and contents ([`lexical`]), and nearness in the file graph
//! ([`graph`]: imports resolved as each language does, and names used where another file defines
//! them, read by tree-sitter in a child process under limits, [`parse`]) to the seeds or, with
//! none, to the best matches; then the tests of what was chosen, by naming convention and by
//! import. The repository is input, never code: nothing in it runs, links are not followed,
//! sizes, counts and parse time are capped ([`index`], [`parse`]).

mod analysis;
pub mod graph;
mod history;
pub mod index;
pub mod lexical;
mod naming;
pub mod parse;
mod paths;
mod resolve;
mod select;
mod tsconfig;

use serde::Serialize;

use crate::model::ByteSize;
pub use analysis::{Analysis, Parser};
pub use index::{Index, Note};
pub use naming::is_test;
pub use select::select;

/// What a selection is asked for.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub prompt: &'a str,
    /// Paths of the tree the caller knows matter; they come first.
    pub seeds: &'a [String],
    pub budget: ByteSize,
}

/// One chosen file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Selected {
    pub path: String,
    pub bytes: u64,
    /// 1.0 for a seed; otherwise relative to the best match, in (0, 1].
    pub score: f64,
    pub why: Vec<String>,
}

/// The chosen files, most useful first, and what they add up to against the budget.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    pub files: Vec<Selected>,
    pub budget: u64,
    pub used: u64,
    /// What the index or the budget left out, and why.
    pub notes: Vec<Note>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read repository {path}: {message}")]
    Repository { path: String, message: String },
    #[error("`{0}` is not a branch, tag or commit of the repository")]
    UnknownBase(String),
    #[error("seed `{0}` is not a file of the tree at the base")]
    UnknownSeed(String),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl ContextError {
    /// True when the request is at fault (exit 2), false for the machine (exit 3).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ContextError::Git(_))
    }
}
