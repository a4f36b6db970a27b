//! The policy gate: review and escalation rules as WebAssembly modules (ABI in policies/ABI.md),
//! run by wasmtime in fresh, fuel- and memory-limited instances. Every failure of a module is a
//! `deny` naming the policy and the cause: a policy that fails, fails closed.

pub mod author;
mod bundle;
mod gate;
mod host;
mod sarif;
mod wire;

use serde::{Deserialize, Serialize};

pub use author::{AuthorError, Built, CaseResult, WASM_TARGET};
pub use bundle::{Bundle, BundleError, BundledPolicy, Condition, Mode};
pub use gate::{Gate, GateInput, GateResult, JobInfo, PolicyResult, TestInfo};
pub use host::{
    EngineError, Limits as PolicyLimits, Metadata, Policy, PolicyEngine, PolicyFailure, Reads,
    sha256_hex,
};
pub use sarif::{empty_sarif, to_sarif};

/// Where compiled policies are cached: `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln/policies`,
/// else `~/.cache/kiln/policies`; `None` (compile every time) when none is known.
pub fn default_cache_dir() -> Option<std::path::PathBuf> {
    crate::config::cache_dir().map(|dir| dir.join("policies"))
}

/// The ABI versions kiln speaks (a module reporting another is refused): 1, whose input is
/// JSON, and 2, whose input is binary (`wire`), which the SDK's policies speak.
pub const ABI_VERSIONS: [i32; 2] = [1, 2];

/// A policy's verdict. Ordered by severity: combining takes the most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Review,
    Escalate,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Review => "review",
            Decision::Escalate => "escalate",
            Decision::Deny => "deny",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Note,
    Warning,
    Error,
}

/// One thing a policy found, at a file and line where it has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub rule: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub severity: Severity,
}

/// What a module returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub decision: Decision,
    #[serde(default)]
    pub findings: Vec<Finding>,
}

impl Verdict {
    /// The fail-closed verdict for a policy that could not give one.
    pub fn failed(policy: &str, failure: &PolicyFailure) -> Verdict {
        Verdict {
            decision: Decision::Deny,
            findings: vec![Finding {
                rule: "kiln.policy-failure".into(),
                message: format!("policy `{policy}` failed closed: {failure}"),
                path: None,
                line: None,
                severity: Severity::Error,
            }],
        }
    }
}
