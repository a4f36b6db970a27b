//! `[secrets.NAME]`: where each credential is on the host and which hosts it may be sent to.
//! Only the shape is checked here; the `secrets` module reads the values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::model::host::written_host_name;

/// One `[secrets.NAME]` entry: where the value is on the host, and the hosts it may be sent to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Environment variable of the kiln process holding the value.
    pub env: Option<String>,
    /// File holding the value (a trailing newline is dropped).
    pub file: Option<PathBuf>,
    /// Host names (no ports) whose requests the proxy may add it to, inside TLS.
    pub hosts: Vec<String>,
    /// The request headers (case-insensitive) in which the proxy replaces the placeholder; in
    /// any other header it stays the placeholder, so a host that echoes some header back cannot
    /// be made to echo the key. Default: `authorization`, `x-api-key`, `api-key`.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
}

fn default_headers() -> Vec<String> {
    ["authorization", "x-api-key", "api-key"]
        .map(String::from)
        .to_vec()
}

impl SecretSource {
    /// Checks the entry's shape; says nothing of whether the value can be read.
    pub(super) fn check(&self, name: &str) -> Result<(), String> {
        let name_ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(format!(
                "`{name}` is not an environment variable name (letters, digits, `_`)"
            ));
        }
        if self.env.is_some() == self.file.is_some() {
            return Err(format!("{name}: give `env` or `file`, one of them"));
        }
        if self.hosts.is_empty() {
            return Err(format!(
                "{name}: `hosts` is empty; name the hosts it is for"
            ));
        }
        let token = |h: &String| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        if self.headers.is_empty() || !self.headers.iter().all(token) {
            return Err(format!(
                "{name}: `headers` must name at least one header, each letters, digits, `-` or `_`"
            ));
        }
        for host in &self.hosts {
            written_host_name(host).map_err(|why| format!("{name}: host {why}"))?;
        }
        Ok(())
    }
}

/// Checks every entry of `[secrets]`.
pub(super) fn check(secrets: &BTreeMap<String, SecretSource>) -> Result<(), String> {
    secrets
        .iter()
        .try_for_each(|(name, source)| source.check(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SecretSource {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn entries_name_one_source_and_host_names() {
        assert!(
            source("env = 'K'\nhosts = ['api.example.com']")
                .check("K")
                .is_ok()
        );
        for (name, text) in [
            ("K", "env = 'K'\nfile = '/x'\nhosts = ['a.test']"),
            ("K", "hosts = ['a.test']"),
            ("K", "env = 'K'\nhosts = []"),
            ("K", "env = 'K'\nhosts = ['10.0.0.1']"),
            ("K", "env = 'K'\nhosts = ['A.test']"),
            ("K", "env = 'K'\nhosts = ['a.test']\nheaders = []"),
            ("K", "env = 'K'\nhosts = ['a.test']\nheaders = ['x: y']"),
            ("1K", "env = 'K'\nhosts = ['a.test']"),
            ("K-1", "env = 'K'\nhosts = ['a.test']"),
        ] {
            assert!(source(text).check(name).is_err(), "{name}: {text}");
        }
        assert!(toml::from_str::<SecretSource>("env = 'K'\nhosts = ['a']\nheader = 'x'").is_err());
    }
}
