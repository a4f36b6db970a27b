//! Policy bundles: which modules run, pinned by sha256, with their config and mode, and the
//! auto-merge rules of the seed article's `review_config.yaml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::host::sha256_hex;
use crate::model::fs::{read_bytes_capped, read_capped};

/// The largest module a bundle may pin (the policy host refuses larger ones too).
const MAX_MODULE_BYTES: u64 = 16 << 20;
/// The largest bundle file kiln reads.
const MAX_BUNDLE_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The policy's decision counts.
    #[default]
    Enforce,
    /// The policy's findings are reported; its decision does not count.
    Warn,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
        }
    }
}

/// A condition that must hold for auto-merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The last attempt's tests passed.
    AllTestsPass,
    /// A reviewer approved (no reviewer yet means this does not hold).
    ReviewerApproval,
    /// No enforced policy escalated or denied.
    NoEscalationPatterns,
}

impl Condition {
    /// The name a bundle uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::AllTestsPass => "all_tests_pass",
            Condition::ReviewerApproval => "reviewer_approval",
            Condition::NoEscalationPatterns => "no_escalation_patterns",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    #[serde(default)]
    auto_merge_allowed: bool,
    #[serde(default)]
    auto_merge_conditions: Vec<Condition>,
    #[serde(default = "default_action")]
    escalation_action: String,
    #[serde(default)]
    escalation_channel: Option<String>,
    #[serde(default, rename = "policy")]
    policies: Vec<PolicyEntry>,
}

fn default_action() -> String {
    "notify_human".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    name: String,
    /// Path of the .wasm module, relative to the bundle file.
    module: PathBuf,
    sha256: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default = "empty_config")]
    config: toml::Value,
    /// Fuel for one evaluation; default 1,000,000,000, at most the operator's `max_fuel`.
    fuel: Option<u64>,
}

fn empty_config() -> toml::Value {
    toml::Value::Table(Default::default())
}

/// A loaded bundle: every module read and its pin checked.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub path: PathBuf,
    pub auto_merge_allowed: bool,
    pub auto_merge_conditions: Vec<Condition>,
    pub escalation_action: String,
    pub escalation_channel: Option<String>,
    pub policies: Vec<BundledPolicy>,
}

#[derive(Clone, Debug)]
pub struct BundledPolicy {
    pub name: String,
    pub module_path: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub mode: Mode,
    pub config: serde_json::Value,
    pub fuel: Option<u64>,
}

/// A bundle kiln refuses before anything runs (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("bundle {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("policy `{policy}`: cannot read module {module}: {message}")]
    Module {
        policy: String,
        module: PathBuf,
        message: String,
    },
    #[error(
        "policy `{policy}`: module {module} does not match its pin\n  pinned:   {pinned}\n  actual:   {actual}\nrebuild it, or pin the new hash if you meant to change it"
    )]
    PinMismatch {
        policy: String,
        module: PathBuf,
        pinned: String,
        actual: String,
    },
}

impl Bundle {
    /// Reads the bundle at `path`, every module's pin checked. `max_fuel` is the operator's
    /// ceiling on any policy's `fuel`.
    pub fn load(path: &Path, max_fuel: u64) -> Result<Bundle, BundleError> {
        let read = |message: String| BundleError::Read {
            path: path.into(),
            message,
        };
        let invalid = |message: String| BundleError::Invalid {
            path: path.into(),
            message,
        };
        let text = read_capped(path, MAX_BUNDLE_BYTES).map_err(|e| read(e.to_string()))?;
        let file: BundleFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if file.policies.is_empty() {
            return Err(invalid(
                "it names no policy; a gate with no policy judges nothing (add a [[policy]])"
                    .into(),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut policies = Vec::new();
        for entry in file.policies {
            if policies
                .iter()
                .any(|p: &BundledPolicy| p.name == entry.name)
            {
                return Err(invalid(format!("policy `{}` is listed twice", entry.name)));
            }
            let pinned = entry.sha256.to_ascii_lowercase();
            if pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "policy `{}`: sha256 must be 64 hex digits",
                    entry.name
                )));
            }
            if let Some(fuel) = entry.fuel.filter(|f| *f == 0 || *f > max_fuel) {
                return Err(invalid(format!(
                    "policy `{}`: fuel is {fuel}; it must be 1 to {max_fuel} (the operator's [policy] max_fuel)",
                    entry.name
                )));
            }
            let module_path = dir.join(&entry.module);
            let bytes = read_bytes_capped(&module_path, MAX_MODULE_BYTES).map_err(|e| {
                BundleError::Module {
                    policy: entry.name.clone(),
                    module: module_path.clone(),
                    message: e.to_string(),
                }
            })?;
            let actual = sha256_hex(&bytes);
            if actual != pinned {
                return Err(BundleError::PinMismatch {
                    policy: entry.name,
                    module: module_path,
                    pinned,
                    actual,
                });
            }
            let config = serde_json::to_value(&entry.config).map_err(|e| invalid(e.to_string()))?;
            if !config.is_object() {
                return Err(invalid(format!(
                    "policy `{}`: config must be a table",
                    entry.name
                )));
            }
            policies.push(BundledPolicy {
                name: entry.name,
                module_path,
                bytes,
                sha256: actual,
                mode: entry.mode,
                config,
                fuel: entry.fuel,
            });
        }
        Ok(Bundle {
            path: path.into(),
            auto_merge_allowed: file.auto_merge_allowed,
            auto_merge_conditions: file.auto_merge_conditions,
            escalation_action: file.escalation_action,
            escalation_channel: file.escalation_channel,
            policies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any bundle text loads or is refused with an error naming the bundle; never a panic,
        /// and a module path is never read unless it is a regular file.
        #[test]
        fn any_bundle_text_loads_or_is_refused_by_name(
            name in "[a-z]{0,8}",
            module in prop_oneof!["[a-z./]{0,20}", Just("/dev/zero".to_string()), Just("/".to_string())],
            sha in "[0-9a-f]{0,64}",
            fuel in any::<u64>(),
            extra in "[a-z_ =\"\\[\\]0-9\n]{0,60}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bundle.toml");
            let text = format!(
                "{extra}\n[[policy]]\nname = {:?}\nmodule = {:?}\nsha256 = {:?}\nfuel = {fuel}\n",
                name, module, sha
            );
            std::fs::write(&path, text).unwrap();
            if let Err(e) = Bundle::load(&path, 1_000_000) {
                let text = e.to_string();
                prop_assert!(text.contains("bundle") || text.contains("policy `"), "{text}");
            }
        }
    }
}
