//! A job file as written (TOML, or the seed article's record mapped onto it): the schema, with
//! `deny_unknown_fields` everywhere and nothing checked yet.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{ByteSize, StageSpec};

/// `[sandbox]`: the defaults a job asks to loosen. Each needs the operator's permission.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxFile {
    /// `"none"` (default) or `"bridge"` (Docker's default network; the operator must permit it).
    pub network: NetworkMode,
    /// `true` makes the root filesystem writable. Default false.
    pub writable_rootfs: bool,
    /// `true` runs commands as root inside the container. Default false.
    pub root_user: bool,
}

/// `[merge]`: land the change on a target branch through the merge queue.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MergeSpec {
    /// The branch to merge into; the operator config must list it (`[publish] merge_targets`).
    pub target: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RetryFile {
    pub(super) max_attempts: Option<u32>,
}

/// A job file as written, before any check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobFile {
    pub(super) repo: String,
    pub(super) base: Option<String>,
    pub(super) branch: String,
    pub(super) prompt: Option<String>,
    pub(super) prompt_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) context_files: Vec<String>,
    pub(super) test_requirements: Option<String>,
    #[serde(default)]
    pub(super) tests_fixed: bool,
    /// For `kiln serve`: lower runs sooner (0 to 9). Default 5.
    pub(super) priority: Option<i64>,
    /// For `kiln serve`: globs of the paths the job may change. Default: `context_files`.
    #[serde(default)]
    pub(super) touches: Vec<String>,
    pub(super) generate: Option<StageSpec>,
    pub(super) test: Option<StageSpec>,
    pub(super) review: Option<StageSpec>,
    pub(super) merge: Option<MergeSpec>,
    pub(super) limits: Option<LimitsFile>,
    #[serde(default)]
    pub(super) retry: RetryFile,
    #[serde(default)]
    pub(super) sandbox: SandboxFile,
    #[serde(default)]
    pub(super) context: ContextFile,
}

/// `[context]` as written: how the generator's starting files are chosen.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContextFile {
    pub(super) mode: Option<ContextMode>,
    pub(super) budget: Option<ByteSize>,
    pub(super) seeds: Option<Vec<String>>,
}

/// How the files the generator starts from are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextMode {
    /// `context_files` as written, passed through.
    #[default]
    Globs,
    /// kiln selects them at the base commit (`kiln context`), from the seeds and the prompt.
    Auto,
}

/// `[limits]` as written: any field left out takes the operator's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    pub(super) memory: Option<ByteSize>,
    pub(super) cpus: Option<f64>,
    pub(super) pids: Option<u32>,
    pub(super) workspace: Option<ByteSize>,
    pub(super) tmp: Option<ByteSize>,
    pub(super) output: Option<ByteSize>,
}

/// `[sandbox] network`: the one loosening that is a choice, not a switch.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// No network at all (a stage's `[x.network]` allowlist is the way out).
    #[default]
    None,
    /// Docker's default bridge network.
    Bridge,
}
