//! The job spec: parse a job file (TOML, or the seed article's JSON record), check every field,
//! and fill defaults, so later stages only ever see a valid [`Job`].
//!
//! Every field is documented in docs/job.md; keep the two in step.

mod agent;
mod branch;
mod check;
mod file;
mod seed;
mod source;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use branch::{BranchError, BranchName};
pub use check::recheck_stage;
pub use file::{ContextMode, MergeSpec, NetworkMode, SandboxFile};
pub use source::RepoSource;

use crate::config::{Config, Loosening};
use crate::model::fs::read_capped;
use crate::model::{Agent, Globs, JobId, Limits, StageSpec};
use file::JobFile;

/// The largest prompt (inline or `prompt_file`) kiln accepts.
const MAX_PROMPT_BYTES: u64 = 1 << 20;

/// How a job's text is written: TOML, or the seed article's JSON job record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// `.json` is the seed article's record; anything else TOML.
    pub fn of_path(path: &Path) -> Format {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Format::Json
        } else {
            Format::Toml
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Json => "json",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        [Format::Toml, Format::Json]
            .into_iter()
            .find(|f| f.as_str() == text)
    }
}

/// What checking a job asks of the operator's secrets. `secrets::Secrets`, built once when kiln
/// starts, answers; the job check itself reads nothing.
pub trait SecretCheck {
    /// Why secret `name` cannot be used now, if it cannot (not configured, not readable).
    fn readable(&self, name: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
    /// The name of a configured secret whose value `text` holds, if any.
    fn found_in(&self, text: &str) -> Option<String>;
}

/// Fields carried over from the seed article's JSON job record, kept for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SeedFields {
    pub job_id: String,
    pub priority: Option<i64>,
    pub review_agent: Option<String>,
}

/// A checked job: every field valid, every default filled in.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: JobId,
    pub repo: RepoSource,
    /// Branch, tag or commit to start from; `None` means the repository's HEAD.
    pub base: Option<String>,
    pub branch: BranchName,
    pub prompt: String,
    pub context_files: Globs,
    pub test_requirements: Option<String>,
    /// The job says its tests are fixed: policies treat any test change as suspect.
    pub tests_fixed: bool,
    /// Globs of `[test] protect`: the tests run with the base version of these paths.
    pub protect: Globs,
    /// For `kiln serve`: lower runs sooner, 0 to 9.
    pub priority: i64,
    /// For `kiln serve`: globs of the paths the job may change (declared, else `context_files`;
    /// empty means anything). No two running jobs on one repository may overlap.
    pub touches: Globs,
    pub generate: StageSpec,
    pub test: StageSpec,
    /// The reviewer agent, run after the tests pass; `None` when the job has no `[review]`.
    pub review: Option<StageSpec>,
    /// Where the merge queue lands the change; `None`: the work branch is only published.
    pub merge: Option<MergeSpec>,
    pub limits: Limits,
    pub max_attempts: u32,
    pub sandbox: SandboxFile,
    /// The loosenings `sandbox` asks for, each permitted by the operator config.
    pub loosened: Vec<Loosening>,
    pub seed: Option<SeedFields>,
    pub context: ContextSpec,
}

/// `[context]` checked: how the generator's starting files are chosen.
#[derive(Clone, Debug, Serialize)]
pub struct ContextSpec {
    pub mode: ContextMode,
    /// The most bytes of files selected (`auto`). Default 64KiB.
    pub budget: crate::model::ByteSize,
    /// Globs of the files selection starts from (`auto`). Default: `context_files`.
    pub seeds: Globs,
}

/// Everything wrong with a job file is one of these; all map to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job file {path} is invalid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("job file {path}: `{field}` {message}")]
    Field {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl Job {
    /// Reads and checks a job file: `.json` is the seed article's job record, anything else TOML.
    /// Nothing outside the file (and its `prompt_file`) is touched.
    pub fn load(path: &Path, config: &Config, secrets: &dyn SecretCheck) -> Result<Job, JobError> {
        let text = read_capped(path, MAX_PROMPT_BYTES * 2).map_err(|source| JobError::Read {
            path: path.into(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(
            &text,
            Format::of_path(path),
            Some(dir),
            path,
            config,
            secrets,
        )
    }

    /// Checks a job given as text in `format`. Relative paths
    /// resolve against `dir`; with no `dir` (a job submitted to a server), they are refused.
    /// `origin` names the job in messages.
    pub fn parse(
        text: &str,
        format: Format,
        dir: Option<&Path>,
        origin: &Path,
        config: &Config,
        secrets: &dyn SecretCheck,
    ) -> Result<Job, JobError> {
        let path = origin;
        let syntax = |message: String| JobError::Syntax {
            path: path.into(),
            message,
        };
        if text.len() as u64 > MAX_PROMPT_BYTES * 2 {
            return Err(syntax(format!(
                "it is {} bytes, over the {} limit",
                text.len(),
                MAX_PROMPT_BYTES * 2
            )));
        }
        let (file, seed) = if format == Format::Json {
            let record: seed::SeedRecord =
                serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?;
            record.into_job_file().map_err(syntax)?
        } else {
            (
                toml::from_str::<JobFile>(text).map_err(|e| syntax(e.to_string()))?,
                None,
            )
        };
        let job = file
            .check(dir, config, secrets, seed)
            .map_err(|(field, message)| JobError::Field {
                path: path.into(),
                field,
                message,
            })?;
        // A secret reaches a stage only through the proxy; a job carrying one would hand it to
        // the container (and to every artifact before redaction).
        let text = serde_json::to_string(&job).unwrap_or_default();
        match secrets.found_in(&text) {
            Some(name) => Err(JobError::Syntax {
                path: path.into(),
                message: format!(
                    "it holds the value of the operator's secret {name}; remove it (a stage gets a secret only through `[<stage>.network] secrets`)"
                ),
            }),
            None => Ok(job),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(text: &str) -> Result<Job, JobError> {
        load_with(text, &Config::default())
    }

    fn load_with(text: &str, config: &Config) -> Result<Job, JobError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("repo")).unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        Job::load(&path, config, &crate::secrets::Secrets::default())
    }

    #[test]
    fn a_budget_is_settled_from_the_operator_default_under_its_ceiling() {
        use crate::config::ModelConfig;
        use crate::model::spend::{ApiKind, Budget};
        let mut config = Config::default();
        let head = "repo = 'repo'\nbranch = 'factory/x'\nprompt = 'p'";
        let with_budget = |budget: &str| {
            job(head).replace(
                "[generate]\n",
                &format!("[generate]\n        budget = {budget}\n"),
            )
        };
        let err = load_with(&with_budget("{ usd = 1.0 }"), &config).unwrap_err();
        assert!(err.to_string().contains("[egress.models]"), "{err}");
        config.egress.models.insert(
            "model.test".into(),
            ModelConfig {
                kind: ApiKind::Anthropic,
                input_per_mtok: 3.0,
                output_per_mtok: 15.0,
                cached_per_mtok: None,
            },
        );
        config.egress.budget = Budget {
            tokens: Some(1000),
            ..Budget::default()
        };
        config.egress.budget_ceiling = Budget {
            usd: Some(5.0),
            ..Budget::default()
        };
        let job_ = load_with(&with_budget("{ usd = 1.0 }"), &config).unwrap();
        assert_eq!(
            job_.generate.budget,
            Some(Budget {
                usd: Some(1.0),
                tokens: Some(1000),
                requests: None
            })
        );
        let err = load_with(&with_budget("{ usd = 10.0 }"), &config).unwrap_err();
        assert!(err.to_string().contains("generate.budget"), "{err}");
        assert!(err.to_string().contains("ceiling"), "{err}");
        let err = load_with(&with_budget("{ dollars = 1.0 }"), &config).unwrap_err();
        assert!(err.to_string().contains("dollars"), "{err}");
        let on_test = job(head).replace(
            "timeout = \"30s\"",
            "timeout = \"30s\"\n        budget = { requests = 1 }",
        );
        let err = load_with(&on_test, &config).unwrap_err();
        assert!(err.to_string().contains("test.budget"), "{err}");
        // A model host reached without kiln adding its key could not be counted.
        config
            .egress
            .permit
            .push(crate::model::Allow::parse("model.test:443").unwrap());
        let unkeyed = with_budget("{ usd = 1.0 }").replace(
            "[test]",
            "[generate.network]\n        allow = [\"model.test:443\"]\n        [test]",
        );
        let err = load_with(&unkeyed, &config).unwrap_err();
        assert!(err.to_string().contains("bind the key"), "{err}");
    }

    const STAGES: &str = r#"
        [generate]
        image = "kiln/busybox"
        command = ["sh", "-c", "true"]
        [test]
        image = "kiln/busybox"
        command = ["true"]
        timeout = "30s"
    "#;

    fn job(head: &str) -> String {
        format!("{head}\n{STAGES}")
    }

    #[test]
    fn fills_defaults_for_a_minimal_job() {
        let job = load(&job(
            "repo = 'repo'\nbranch = 'factory/x'\nprompt = 'do it'",
        ))
        .unwrap();
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.limits, Limits::default());
        assert_eq!(job.test.timeout, Duration::from_secs(30));
        assert_eq!(job.generate.timeout, Duration::from_secs(600));
        assert!(matches!(job.repo, RepoSource::Folder(_)));
    }

    #[test]
    fn rejects_unknown_keys_naming_them() {
        let err = load(&job(
            "repo = 'repo'\nbranch = 'factory/x'\nprompt = 'p'\nbrnach = 'y'",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("brnach"), "{err}");
        let err = load(&job(
            "repo = 'repo'\nbranch = 'factory/x'\nprompt = 'p'\n[limits]\nmemroy = '1g'",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("memroy"), "{err}");
    }

    #[test]
    fn rejects_protected_branch_and_remote_repo() {
        let err = load(&job("repo = 'repo'\nbranch = 'main'\nprompt = 'p'")).unwrap_err();
        assert!(err.to_string().contains("`branch`"), "{err}");
        let err = load(&job(
            "repo = 'https://example.invalid/x.git'\nbranch = 'factory/x'\nprompt = 'p'",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("remote URL"), "{err}");
        let err = load(&job(
            "repo = 'git@host:x.git'\nbranch = 'factory/x'\nprompt = 'p'",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("remote URL"), "{err}");
    }

    #[test]
    fn caps_attempts_at_the_operator_limit() {
        let err = load(&job(
            "repo = 'repo'\nbranch = 'factory/x'\nprompt = 'p'\n[retry]\nmax_attempts = 9",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("max_attempts"), "{err}");
    }

    #[test]
    fn refuses_loosening_the_operator_did_not_permit() {
        let err = load(&job(
            "repo = 'repo'\nbranch = 'factory/x'\nprompt = 'p'\n[sandbox]\nnetwork = 'bridge'",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("permit_loosening"), "{err}");
    }

    #[test]
    fn rejects_bad_globs_and_missing_prompt() {
        let err = load(&job(
            "repo = 'repo'\nbranch = 'factory/x'\nprompt = 'p'\ncontext_files = ['src/[']",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("context_files"), "{err}");
        let err = load(&job("repo = 'repo'\nbranch = 'factory/x'")).unwrap_err();
        assert!(err.to_string().contains("prompt"), "{err}");
    }

    use proptest::prelude::*;

    /// A TOML string of `text`.
    fn quoted(text: &str) -> String {
        toml::Value::String(text.into()).to_string()
    }

    /// A job file whose every value a hostile submitter chose, near enough to the schema to
    /// reach the checks behind the parser.
    fn hostile_job() -> impl Strategy<Value = String> {
        let text = || prop_oneof!["factory/[a-z/.@{}-]{0,20}", ".{0,30}", "[a-z]{0,300}"];
        (
            text(),
            text(),
            proptest::collection::vec(text(), 0..4),
            "[0-9]{0,12}[kmgKMGiB]{0,3}|-?[0-9]{1,20}",
            "[a-z0-9.:\\[\\]-]{0,30}",
            any::<i64>(),
        )
            .prop_map(|(branch, prompt, globs, size, allow, priority)| {
                let globs: Vec<String> = globs.iter().map(|g| quoted(g)).collect();
                format!(
                    "repo = '/'\nbranch = {}\nprompt = {}\ncontext_files = [{}]\npriority = {priority}\n\
                     [generate]\nimage = 'i'\ncommand = ['true']\n[generate.network]\nallow = [{}]\n\
                     [test]\nimage = 'i'\ncommand = ['true']\n[limits]\nmemory = {}\n",
                    quoted(&branch),
                    quoted(&prompt),
                    globs.join(", "),
                    quoted(&allow),
                    quoted(&size),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any job text, TOML or the seed article's JSON, is a checked job or an error naming
        /// what is wrong; never a panic.
        #[test]
        fn any_job_text_is_a_job_or_a_clear_error(
            text in prop_oneof![hostile_job(), ".{0,200}"],
            json in any::<bool>(),
        ) {
            let format = if json { Format::Json } else { Format::Toml };
            let parsed = Job::parse(
                &text,
                format,
                None,
                Path::new("request"),
                &Config::default(),
                &crate::secrets::Secrets::default(),
            );
            match parsed {
                Ok(job) => {
                    prop_assert!(job.branch.as_str().starts_with("factory/"));
                    prop_assert!(job.limits.memory <= Config::default().limits.memory);
                    prop_assert!((0..=9).contains(&job.priority));
                }
                Err(e) => prop_assert!(e.to_string().starts_with("job file request")),
            }
        }
    }
}
