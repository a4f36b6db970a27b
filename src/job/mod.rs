//! The job spec: parse a job file (TOML, or the seed article's JSON record), check every field,
//! and fill defaults, so later stages only ever see a valid [`Job`].
//!
//! Every field is documented in docs/job.md; keep the two in step.

mod agent;
mod branch;
mod seed;
mod size;

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

pub use agent::Agent;
pub use branch::{BranchError, BranchName};
pub use size::ByteSize;

use crate::config::{Config, Loosening};
use crate::ids::JobId;

/// The largest prompt (inline or `prompt_file`) kiln accepts.
const MAX_PROMPT_BYTES: u64 = 1 << 20;

/// One container stage: which image, which argv, how long it may run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// `[generate]` only: the coding agent whose adapter gives the argv, and the image and
    /// network when left out. Default `command`: the stage's own `command`.
    #[serde(default, skip_serializing_if = "is_command")]
    pub agent: Agent,
    /// Image name; it must exist locally (`kiln image build` makes kiln's own). Required
    /// unless an agent's adapter gives it.
    #[serde(default)]
    pub image: String,
    /// The argv run in the container (no shell unless you write one). Required unless an
    /// agent's adapter gives it.
    #[serde(default)]
    pub command: Vec<String>,
    /// Wall-clock limit; the container is killed when it passes. Default 10 minutes.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// `[test]` only: globs of paths the tests run with as they are in the base, whatever the
    /// generator did to them; a change to one is also a finding for the test-integrity policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protect: Vec<String>,
    /// `[<stage>.network]`: the stage may reach these `host:port` pairs through kiln's egress
    /// proxy, and nothing else. Absent: no network at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
}

/// A stage's egress allowlist.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub allow: Vec<AllowEntry>,
    /// Names of the operator's `[secrets]` the stage uses: it sees a placeholder in each
    /// variable, and the proxy puts the real value into requests to the secret's hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// One `host:port` of an allowlist, checked when the job is read.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct AllowEntry(pub crate::egress::Allow);

impl TryFrom<String> for AllowEntry {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        crate::egress::Allow::parse(&text).map(AllowEntry)
    }
}

impl From<AllowEntry> for String {
    fn from(entry: AllowEntry) -> String {
        entry.0.to_string()
    }
}

fn is_command(agent: &Agent) -> bool {
    *agent == Agent::Command
}

fn default_timeout() -> Duration {
    Duration::from_secs(600)
}

/// An allowlist names at least one `host:port`, each one the operator permits (`[egress]
/// permit`); `[x.network]` left out means no network. Each secret is one the operator
/// configured, readable now, and bound to a host on the allowlist.
fn check_network(spec: &StageSpec, config: &Config) -> Result<(), String> {
    let Some(network) = &spec.network else {
        return Ok(());
    };
    if network.allow.is_empty() {
        return Err("`allow` is empty; leave the table out for no network".into());
    }
    let permitted = &config.egress.permit;
    if let Some(denied) = network
        .allow
        .iter()
        .find(|a| !permitted.iter().any(|p| p.0 == a.0))
    {
        return Err(format!(
            "`{}` is not among the hosts the operator config permits ([egress] permit)",
            denied.0
        ));
    }
    for name in &network.secrets {
        let source = config
            .secrets
            .get(name)
            .ok_or_else(|| format!("secret `{name}` is not in the operator config's [secrets]"))?;
        source.read(name)?;
        let reachable = network
            .allow
            .iter()
            .any(|a| matches!(&a.0.host, crate::egress::Host::Name(h) if source.hosts.contains(h)));
        if !reachable {
            return Err(format!(
                "secret `{name}` is for {}, none of which is on `allow`",
                source.hosts.join(", ")
            ));
        }
    }
    Ok(())
}

/// Resource limits applied to every container of a job.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory limit; swap is off, so this is all the container gets. Default 512MiB.
    pub memory: ByteSize,
    /// CPU quota in cores. Default 1.0.
    pub cpus: f64,
    /// Most processes and threads at once. Default 256.
    pub pids: u32,
    /// Size of the workspace filesystem (the repository plus everything written to it). Default 256MiB.
    pub workspace: ByteSize,
    /// Size of the /tmp filesystem. Default 64MiB.
    pub tmp: ByteSize,
    /// Bytes of stdout+stderr kept per container; the rest is dropped and flagged. Default 1MiB.
    pub output: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::mib(512),
            cpus: 1.0,
            pids: 256,
            workspace: ByteSize::mib(256),
            tmp: ByteSize::mib(64),
            output: ByteSize::mib(1),
        }
    }
}

impl Limits {
    pub fn check(&self) -> Result<(), String> {
        let checks = [
            (
                self.memory >= ByteSize::mib(8),
                "memory must be at least 8MiB",
            ),
            (
                self.cpus > 0.0 && self.cpus <= 64.0,
                "cpus must be more than 0 and at most 64",
            ),
            (self.pids >= 8, "pids must be at least 8"),
            (
                self.workspace >= ByteSize::mib(1),
                "workspace must be at least 1MiB",
            ),
            (
                self.workspace <= ByteSize::mib(16 << 10),
                "workspace must be at most 16GiB",
            ),
            (self.tmp >= ByteSize::mib(1), "tmp must be at least 1MiB"),
            (
                self.output >= ByteSize(1024),
                "output must be at least 1KiB",
            ),
            (
                self.output <= ByteSize::mib(256),
                "output must be at most 256MiB",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).into()),
            None => Ok(()),
        }
    }
}

/// `[sandbox]`: the defaults a job asks to loosen. Each needs the operator's permission.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxFile {
    /// `"none"` (default) or `"bridge"`.
    pub network: Option<String>,
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
struct RetryFile {
    max_attempts: Option<u32>,
}

/// A job file as written, before any check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    repo: String,
    base: Option<String>,
    branch: String,
    prompt: Option<String>,
    prompt_file: Option<PathBuf>,
    #[serde(default)]
    context_files: Vec<String>,
    test_requirements: Option<String>,
    #[serde(default)]
    tests_fixed: bool,
    /// For `kiln serve`: lower runs sooner (0 to 9). Default 5.
    priority: Option<i64>,
    /// For `kiln serve`: globs of the paths the job may change. Default: `context_files`.
    #[serde(default)]
    touches: Vec<String>,
    generate: Option<StageSpec>,
    test: Option<StageSpec>,
    review: Option<StageSpec>,
    merge: Option<MergeSpec>,
    limits: Option<LimitsFile>,
    #[serde(default)]
    retry: RetryFile,
    #[serde(default)]
    sandbox: SandboxFile,
}

/// `[limits]` as written: any field left out takes the operator's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<ByteSize>,
    cpus: Option<f64>,
    pids: Option<u32>,
    workspace: Option<ByteSize>,
    tmp: Option<ByteSize>,
    output: Option<ByteSize>,
}

/// Where the repository comes from.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum RepoSource {
    /// A git repository on this machine.
    Git(PathBuf),
    /// A plain folder with no `.git`: kiln snapshots it into a first commit.
    Folder(PathBuf),
}

impl RepoSource {
    pub fn path(&self) -> &Path {
        match self {
            RepoSource::Git(p) | RepoSource::Folder(p) => p,
        }
    }
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
    pub context_files: Vec<String>,
    pub test_requirements: Option<String>,
    /// The job says its tests are fixed: policies treat any test change as suspect.
    pub tests_fixed: bool,
    /// Globs of `[test] protect`: the tests run with the base version of these paths.
    pub protect: Vec<String>,
    /// For `kiln serve`: lower runs sooner, 0 to 9.
    pub priority: i64,
    /// For `kiln serve`: globs of the paths the job may change (declared, else `context_files`;
    /// empty means anything). No two running jobs on one repository may overlap.
    pub touches: Vec<String>,
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
    pub fn load(path: &Path, config: &Config) -> Result<Job, JobError> {
        let text = read_capped(path, MAX_PROMPT_BYTES * 2).map_err(|source| JobError::Read {
            path: path.into(),
            source,
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, json, Some(dir), path, config)
    }

    /// Checks a job given as text (`json`: the seed article's record, else TOML). Relative paths
    /// resolve against `dir`; with no `dir` (a job submitted to a server), they are refused.
    /// `origin` names the job in messages.
    pub fn parse(
        text: &str,
        json: bool,
        dir: Option<&Path>,
        origin: &Path,
        config: &Config,
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
        let (file, seed) = if json {
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
            .check(dir, config, seed)
            .map_err(|(field, message)| JobError::Field {
                path: path.into(),
                field,
                message,
            })?;
        // A secret reaches a stage only through the proxy; a job carrying one would hand it to
        // the container (and to every artifact before redaction).
        let text = serde_json::to_string(&job).unwrap_or_default();
        match config.redactor().find(&text) {
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

type FieldError = (&'static str, String);

impl JobFile {
    fn check(
        self,
        dir: Option<&Path>,
        config: &Config,
        seed: Option<SeedFields>,
    ) -> Result<Job, FieldError> {
        let repo = repo_source(&self.repo, dir).map_err(|m| ("repo", m))?;
        if let Some(base) = &self.base
            && (base.is_empty() || base.starts_with('-') || base.chars().any(char::is_control))
        {
            return Err((
                "base",
                format!("`{}` is not a branch, tag or commit", base.escape_debug()),
            ));
        }
        let branch = BranchName::parse(
            &self.branch,
            &config.branch_prefix,
            &config.protected_branches,
        )
        .map_err(|e| ("branch", e.to_string()))?;
        let prompt = match (self.prompt, self.prompt_file) {
            (Some(p), None) => p,
            // A submitted job (no folder of its own) could name any file the server can read.
            (None, Some(_)) if dir.is_none() => {
                return Err((
                    "prompt_file",
                    "is not accepted in a submitted job: give the prompt inline".into(),
                ));
            }
            (None, Some(file)) => {
                let file = resolve(dir, &file).map_err(|m| ("prompt_file", m))?;
                read_capped(&file, MAX_PROMPT_BYTES).map_err(|e| {
                    (
                        "prompt_file",
                        format!("cannot be read from {}: {e}", file.display()),
                    )
                })?
            }
            (Some(_), Some(_)) => {
                return Err(("prompt", "and `prompt_file` are both set; keep one".into()));
            }
            (None, None) => {
                return Err(("prompt", "is missing; set `prompt` or `prompt_file`".into()));
            }
        };
        if prompt.trim().is_empty() {
            return Err(("prompt", "is empty".into()));
        }
        context_globs(&self.context_files).map_err(|m| ("context_files", m))?;
        context_globs(&self.touches).map_err(|m| ("touches", m))?;
        let priority = self
            .priority
            .or(seed.as_ref().and_then(|s| s.priority))
            .unwrap_or(5);
        if !(0..=9).contains(&priority) {
            return Err((
                "priority",
                format!("is {priority}; it must be 0 (soonest) to 9"),
            ));
        }
        let touches = if self.touches.is_empty() {
            self.context_files.clone()
        } else {
            self.touches
        };
        let generate = stage(self.generate, &config.defaults.generate, "generate")?;
        let test = stage(self.test, &config.defaults.test, "test")?;
        if !generate.protect.is_empty() {
            return Err((
                "generate.protect",
                "belongs in [test]: it names what the tests run with".into(),
            ));
        }
        context_globs(&test.protect).map_err(|m| ("test.protect", m))?;
        for (field, spec) in [("generate.network", &generate), ("test.network", &test)] {
            check_network(spec, config).map_err(|m| (field, m))?;
        }
        let review = match self.review {
            Some(spec) => Some(stage(Some(spec), &None, "review")?),
            None => None,
        };
        if let Some(review) = &review {
            check_network(review, config).map_err(|m| ("review.network", m))?;
        }
        if review.as_ref().is_some_and(|r| !r.protect.is_empty()) {
            return Err((
                "review.protect",
                "belongs in [test]: it names what the tests run with".into(),
            ));
        }
        if let Some(merge) = &self.merge
            && !config.publish.merge_targets.contains(&merge.target)
        {
            return Err((
                "merge.target",
                format!(
                    "is `{}`, which the operator config does not list in [publish] merge_targets ({})",
                    merge.target.escape_debug(),
                    config.publish.merge_targets.join(", ")
                ),
            ));
        }
        let limits = merge_limits(self.limits.unwrap_or_default(), &config.limits);
        limits.check().map_err(|m| ("limits", m))?;
        let max_attempts = self.retry.max_attempts.unwrap_or(config.max_attempts);
        if max_attempts == 0 || max_attempts > config.max_attempts {
            return Err((
                "retry.max_attempts",
                format!(
                    "is {max_attempts}; it must be between 1 and {} (the operator's cap)",
                    config.max_attempts
                ),
            ));
        }
        let loosened = loosenings(&self.sandbox)?;
        if let Some(denied) = loosened
            .iter()
            .find(|l| !config.permit_loosening.contains(l))
        {
            return Err((
                "sandbox",
                format!(
                    "asks to loosen `{denied:?}`, which the operator config does not permit (permit_loosening)"
                ),
            ));
        }
        Ok(Job {
            id: JobId::new(),
            repo,
            base: self.base,
            branch,
            prompt,
            context_files: self.context_files,
            test_requirements: self.test_requirements,
            tests_fixed: self.tests_fixed,
            protect: test.protect.clone(),
            priority,
            touches,
            generate,
            test,
            review,
            merge: self.merge,
            limits,
            max_attempts,
            sandbox: self.sandbox,
            loosened,
            seed,
        })
    }
}

/// Compiles `context_files` globs; the set matches paths relative to the repository root.
pub fn context_globs(globs: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        set.add(Glob::new(g).map_err(|e| format!("glob `{g}` is invalid: {e}"))?);
    }
    set.build().map_err(|e| e.to_string())
}

fn stage(
    given: Option<StageSpec>,
    default: &Option<StageSpec>,
    name: &'static str,
) -> Result<StageSpec, FieldError> {
    let mut spec = given.or_else(|| default.clone()).ok_or((
        name,
        "is missing, and the operator config has no default for it".to_string(),
    ))?;
    if spec.agent != Agent::Command && name != "generate" {
        return Err((name, "has an `agent`; agents belong in [generate]".into()));
    }
    agent::apply(&mut spec).map_err(|m| (name, m))?;
    if spec.image.trim().is_empty() {
        return Err((name, "has an empty `image`".into()));
    }
    if spec.command.is_empty() || spec.command[0].is_empty() {
        return Err((
            name,
            "has an empty `command`; give the argv as a list".into(),
        ));
    }
    if spec.timeout.is_zero() || spec.timeout > Duration::from_secs(24 * 3600) {
        return Err((name, "timeout must be more than 0 and at most 24h".into()));
    }
    Ok(spec)
}

fn merge_limits(file: LimitsFile, default: &Limits) -> Limits {
    Limits {
        memory: file.memory.unwrap_or(default.memory),
        cpus: file.cpus.unwrap_or(default.cpus),
        pids: file.pids.unwrap_or(default.pids),
        workspace: file.workspace.unwrap_or(default.workspace),
        tmp: file.tmp.unwrap_or(default.tmp),
        output: file.output.unwrap_or(default.output),
    }
}

fn loosenings(sandbox: &SandboxFile) -> Result<Vec<Loosening>, FieldError> {
    let mut loosened = Vec::new();
    match sandbox.network.as_deref() {
        None | Some("none") => {}
        Some("bridge") => loosened.push(Loosening::Network),
        Some(other) => {
            return Err((
                "sandbox.network",
                format!("is `{other}`; use \"none\" or \"bridge\""),
            ));
        }
    }
    if sandbox.writable_rootfs {
        loosened.push(Loosening::WritableRootfs);
    }
    if sandbox.root_user {
        loosened.push(Loosening::RootUser);
    }
    Ok(loosened)
}

/// `path` against the job's folder; with none, `path` must be absolute.
fn resolve(dir: Option<&Path>, path: &Path) -> Result<PathBuf, String> {
    match dir {
        Some(dir) => Ok(dir.join(path)),
        None if path.is_absolute() => Ok(path.into()),
        None => Err(format!(
            "`{}` is relative; a submitted job names paths on the server absolutely",
            path.display()
        )),
    }
}

fn repo_source(repo: &str, dir: Option<&Path>) -> Result<RepoSource, String> {
    let path = if let Some(rest) = repo.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if repo.contains("://") || is_scp_like(repo) {
        return Err(format!(
            "`{repo}` is a remote URL; kiln clones only local paths and file:// URLs for now, because \
             remote clones need host-side credentials. Clone it on the host and give that path"
        ));
    } else {
        resolve(dir, Path::new(repo))?
    };
    let meta = std::fs::metadata(&path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    if !meta.is_dir() {
        return Err(format!("`{}` is not a directory", path.display()));
    }
    let is_git =
        path.join(".git").exists() || path.join("HEAD").is_file() && path.join("objects").is_dir();
    Ok(if is_git {
        RepoSource::Git(path)
    } else {
        RepoSource::Folder(path)
    })
}

/// `user@host:path`, git's scp-like remote syntax.
fn is_scp_like(repo: &str) -> bool {
    match repo.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/') && host.contains('@'),
        None => false,
    }
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    file.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "larger than {}",
            ByteSize(cap)
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Job, JobError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("repo")).unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        Job::load(&path, &Config::default())
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
}
