//! `[store]`: where `kiln serve` keeps its job queue. Default: SQLite in the state folder, for
//! one server. A `postgres://` URL is a queue many servers share; its password is read from a
//! file or the environment when the store is opened, never written in the URL.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[store]` as the operator writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://USER@HOST[:PORT]/DB`; `kiln serve --store` overrides it. Default: none
    /// (SQLite under the state folder).
    pub url: Option<String>,
    /// A file holding the password (its first line). Read when the store is opened.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password, when no file is named. Default
    /// `KILN_STORE_PASSWORD`.
    pub password_env: String,
    /// How long a running job's claim lasts without its server's heartbeat: a server that dies
    /// loses its jobs to another after this. Default 30s; between 2s and 1h.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            password_file: None,
            password_env: "KILN_STORE_PASSWORD".into(),
            lease: Duration::from_secs(30),
        }
    }
}

impl StoreConfig {
    /// The shape checks: a lease within its bounds.
    pub fn check(&self) -> Result<(), String> {
        if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&self.lease) {
            return Err("[store] lease: must be between 2s and 1h".into());
        }
        Ok(())
    }
}
