//! A container stage as a job file or the operator's defaults write it: image, argv, timeout,
//! and the network it may reach.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Allow;

/// Which CLI generates. `command` (the default) runs the job's own argv.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Agent {
    #[default]
    Command,
    ClaudeCode,
    Codex,
    Aider,
}

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
    /// `[generate]` and `[review]`: what the stage may spend on model calls over the whole job
    /// (every attempt), counted by kiln's egress proxy; any of `usd`, `tokens`, `requests`.
    /// Default: the operator's `[egress] budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::model::spend::Budget>,
}

/// A stage's egress allowlist.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub allow: Vec<Allow>,
    /// Names of the operator's `[secrets]` the stage uses: it sees a placeholder in each
    /// variable, and the proxy puts the real value into requests to the secret's hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

fn is_command(agent: &Agent) -> bool {
    *agent == Agent::Command
}

fn default_timeout() -> Duration {
    Duration::from_secs(600)
}
