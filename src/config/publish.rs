//! `[publish]`: credentials for writing to a remote (named here, read only by the publisher),
//! and the branches the merge queue may land on.

use std::path::PathBuf;

use serde::Deserialize;

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
    pub(super) fn check(&self) -> Result<(), String> {
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
