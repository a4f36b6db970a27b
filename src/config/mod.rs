//! Operator configuration: what the people running kiln decide, never the job author.
//!
//! Read from `--config FILE` (TOML); every field has a default, so kiln runs with none. Plain
//! data and its own shape checks: the config opens nothing and reads no secret. What it names
//! (the audit log, the secrets' values, the publish token) is opened by the module that uses it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod egress;
mod notify;
mod publish;
mod sandbox;
mod secrets;
mod store;
mod telemetry;

pub use egress::{EgressConfig, ModelConfig};
pub use notify::NotifyConfig;
pub use publish::PublishConfig;
pub use sandbox::SandboxConfig;
pub use secrets::SecretSource;
pub use store::StoreConfig;
pub use telemetry::TelemetryConfig;

use crate::model::fs::read_capped;
use crate::model::{ByteSize, Limits, StageSpec};

/// The largest operator config kiln reads.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A sandbox default a job may loosen, if the operator permits it here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loosening {
    /// The container gets Docker's default bridge network instead of none.
    Network,
    /// The root filesystem is writable.
    WritableRootfs,
    /// The command runs as root (uid 0) inside the container.
    RootUser,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Work branches must start with this; it must end in `/`.
    pub branch_prefix: String,
    /// Branch names kiln refuses whatever the prefix.
    pub protected_branches: Vec<String>,
    /// The most attempts any job may ask for in `[retry] max_attempts`.
    pub max_attempts: u32,
    /// Which sandbox defaults a job's `[sandbox]` table may loosen. Empty: none.
    pub permit_loosening: Vec<Loosening>,
    /// Where each job's artifacts go (`<dir>/<job id>/`), unless `--artifacts` says otherwise.
    pub artifacts_dir: PathBuf,
    /// Default limits for jobs that leave a `[limits]` field out.
    pub limits: Limits,
    /// Author and committer of the commit kiln makes on the work branch.
    pub commit: CommitIdentity,
    /// Stages used by jobs that give none (the seed article's JSON job record has no images).
    pub defaults: StageDefaults,
    /// Who hears of an escalation. Only the operator config names these, never a job.
    pub notify: NotifyConfig,
    /// Credentials for publishing and the branches the merge queue may land on.
    pub publish: PublishConfig,
    /// The hash-chained audit log every run, approval and rejection appends to. Default: none.
    pub audit_log: Option<PathBuf>,
    /// What a stage with an allowlist may reach beyond it: only the operator opens addresses
    /// that are not public, and sets the egress proxy's caps.
    pub egress: EgressConfig,
    /// `[policy]`: ceilings on what a policy bundle may ask.
    pub policy: PolicyConfig,
    /// `[sandbox]`: the OCI runtimes stages run under (gVisor's `runsc`). Default: the engine's.
    pub sandbox: SandboxConfig,
    /// `[store]`: the job queue `kiln serve` uses; SQLite in its state folder unless a shared
    /// PostgreSQL is named.
    pub store: StoreConfig,
    /// `[telemetry]`: OpenTelemetry traces of every job, over OTLP/HTTP. Default: none.
    pub telemetry: TelemetryConfig,
    /// `[secrets.NAME]`: credentials read on the host, which a stage's `[x.network] secrets`
    /// may use through the egress proxy without ever holding them. Every value is redacted from
    /// everything kiln writes. Default: none.
    pub secrets: std::collections::BTreeMap<String, SecretSource>,
}

/// `[policy]`: what a bundle may ask of the policy engine, at most.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The most fuel one evaluation of one policy may be given (`fuel` in a bundle). Default
    /// 10,000,000,000: ten times the default, some seconds of work.
    pub max_fuel: u64,
    /// How much of a change the gate reads (the unified patch's bytes). A file with a side
    /// larger than this, and every file past it, is listed without its lines, and the gate
    /// denies a change it could not read whole. Default 4 MiB; between 64 KiB and 256 MiB.
    pub max_diff: ByteSize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_fuel: 10_000_000_000,
            max_diff: ByteSize::mib(4),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitIdentity {
    pub name: String,
    pub email: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDefaults {
    pub generate: Option<StageSpec>,
    pub test: Option<StageSpec>,
}

impl Default for CommitIdentity {
    fn default() -> Self {
        CommitIdentity {
            name: "kiln".into(),
            email: "kiln@localhost".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            branch_prefix: "factory/".into(),
            protected_branches: [
                "main",
                "master",
                "trunk",
                "develop",
                "production",
                "release",
                "HEAD",
            ]
            .map(String::from)
            .to_vec(),
            max_attempts: 3,
            permit_loosening: Vec::new(),
            artifacts_dir: PathBuf::from(".kiln/jobs"),
            limits: Limits::default(),
            commit: CommitIdentity::default(),
            defaults: StageDefaults::default(),
            notify: NotifyConfig::default(),
            publish: PublishConfig::default(),
            audit_log: None,
            egress: EgressConfig::default(),
            secrets: std::collections::BTreeMap::new(),
            policy: PolicyConfig::default(),
            sandbox: SandboxConfig::default(),
            store: StoreConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// kiln's cache folder: `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kiln"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read operator config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("operator config {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_capped(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if !self.branch_prefix.ends_with('/') || self.branch_prefix.len() < 2 {
            return Err(format!(
                "branch_prefix `{}` must be a name ending in `/`",
                self.branch_prefix
            ));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(format!(
                "max_attempts is {}; it must be between 1 and 10",
                self.max_attempts
            ));
        }
        if self.policy.max_fuel == 0 {
            return Err("[policy] max_fuel must be at least 1".into());
        }
        let diff = self.policy.max_diff;
        if !(ByteSize::kib(64)..=ByteSize::mib(256)).contains(&diff) {
            return Err(format!(
                "[policy] max_diff is {diff}; it must be between 64KiB and 256MiB"
            ));
        }
        self.notify.check()?;
        self.publish.check()?;
        self.sandbox.check().map_err(|e| format!("[sandbox] {e}"))?;
        self.telemetry.check()?;
        self.store.check()?;
        self.egress.check().map_err(|e| format!("[egress] {e}"))?;
        secrets::check(&self.secrets).map_err(|e| format!("[secrets] {e}"))?;
        self.limits.check().map_err(|e| format!("[limits]: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_keys_and_bad_prefix() {
        assert!(toml::from_str::<Config>("branch_prefx = 'x/'").is_err());
        let config: Config = toml::from_str("branch_prefix = 'factory'").unwrap();
        assert!(config.check().is_err());
    }
}
