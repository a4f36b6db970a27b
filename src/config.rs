//! Operator configuration: what the people running kiln decide, never the job author.
//!
//! Read from `--config FILE` (TOML); every field has a default, so kiln runs with none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::job::{Limits, StageSpec};

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
    pub egress: crate::egress::EgressConfig,
    /// `[secrets.NAME]`: credentials read on the host, which a stage's `[x.network] secrets`
    /// may use through the egress proxy without ever holding them. Every value is redacted from
    /// everything kiln writes. Default: none.
    pub secrets: std::collections::BTreeMap<String, crate::secrets::SecretSource>,
    /// The redactor for `secrets`, made on first use.
    #[serde(skip)]
    redactor: std::sync::OnceLock<crate::secrets::Redactor>,
}

/// `[publish]`: how kiln writes to a remote, and where merges may land. The credentials stay on
/// the host: they are never mounted or passed into any container.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// User name for https pushes with a token. Default: the URL's, else `kiln`.
    pub username: Option<String>,
    /// Environment variable holding the https token (read when kiln pushes).
    pub token_env: Option<String>,
    /// File holding the https token (its first line).
    pub token_file: Option<PathBuf>,
    /// Private key for ssh pushes.
    pub ssh_key: Option<PathBuf>,
    /// Branches the merge queue may update, after a green re-test. Default `["main"]`.
    pub merge_targets: Vec<String>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            username: None,
            token_env: None,
            token_file: None,
            ssh_key: None,
            merge_targets: vec!["main".into()],
        }
    }
}

impl PublishConfig {
    /// The https token, when one is configured.
    pub fn token(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.token_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("[publish] token_env names `{var}`, which is not set"));
        }
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("[publish] token_file {}: {e}", file.display()))?;
            return Ok(text.lines().next().map(|l| l.trim().to_string()));
        }
        Ok(None)
    }

    fn check(&self) -> Result<(), String> {
        if self.token_env.is_some() && self.token_file.is_some() {
            return Err("[publish] give token_env or token_file, not both".into());
        }
        for target in &self.merge_targets {
            let refname = format!("refs/heads/{target}");
            if target.contains("..") || !git2::Reference::is_valid_name(&refname) {
                return Err(format!(
                    "[publish] merge_targets: `{target}` is not a branch name"
                ));
            }
        }
        Ok(())
    }
}

/// `[notify]`: where an escalation is announced.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// An `http://` or `https://` URL that gets the escalation as a JSON POST. Default none.
    pub webhook: Option<String>,
    /// A host command (argv) run with the escalation JSON on stdin. Default none.
    pub command: Option<Vec<String>>,
    /// How long one delivery may take. Default 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries after a failed delivery. Default 3.
    pub retries: u32,
    /// The wait before the first retry, doubled for each next one. Default 1s.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: None,
            command: None,
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

impl NotifyConfig {
    fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.webhook {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("[notify] webhook is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(
                    "[notify] webhook must be an http:// or https:// URL with a host".into(),
                );
            }
        }
        if self
            .command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            return Err("[notify] command must be a non-empty argv list".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err("[notify] timeout must be more than 0 and at most 5m".into());
        }
        if self.retries > 10 {
            return Err("[notify] retries must be at most 10".into());
        }
        if self.backoff > Duration::from_secs(60) {
            return Err("[notify] backoff must be at most 1m".into());
        }
        Ok(())
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
            egress: crate::egress::EgressConfig::default(),
            secrets: std::collections::BTreeMap::new(),
            redactor: std::sync::OnceLock::new(),
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
    /// The audit log, when the config names one.
    pub fn audit(&self) -> Result<Option<crate::audit::AuditLog>, crate::audit::AuditError> {
        self.audit_log
            .as_deref()
            .map(|path| Ok(crate::audit::AuditLog::open(path)?.redacting(self.redactor())))
            .transpose()
    }

    /// What hides every `[secrets]` value (and its base64 forms) in what kiln writes; made from
    /// the values readable at first use. A secret that cannot be read is named in a warning
    /// (no job can use it either).
    pub fn redactor(&self) -> crate::secrets::Redactor {
        self.redactor
            .get_or_init(|| {
                let (redactor, unreadable) = crate::secrets::redactor(&self.secrets);
                for why in unreadable {
                    tracing::warn!("{why}; it is not redacted, and no job can use it");
                }
                redactor
            })
            .clone()
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
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
        self.notify.check()?;
        self.publish.check()?;
        self.egress.check().map_err(|e| format!("[egress] {e}"))?;
        crate::secrets::check(&self.secrets).map_err(|e| format!("[secrets] {e}"))?;
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
