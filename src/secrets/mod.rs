//! Credentials a stage uses without holding them: the operator's `[secrets]`, read on the host;
//! the placeholder a stage sees in its place; and the [`Redactor`] that keeps every configured
//! value (and its base64 forms) out of everything kiln writes.

mod redact;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use redact::{Redactor, StreamRedactor};

use crate::config::SecretSource;
use crate::job::SecretCheck;

/// The shortest secret kiln accepts: redacting a shorter one would mangle ordinary text.
pub const MIN_SECRET_LEN: usize = 8;
/// The longest secret read from a file or the environment.
const MAX_SECRET_LEN: usize = 16 << 10;

/// Why a secret cannot be used; every one is the operator's to fix (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{0}` is not in the operator config's [secrets]")]
    Unknown(String),
    #[error("secret {name}: environment variable `{var}` is not set (or not UTF-8)")]
    Unset { name: String, var: String },
    #[error("secret {name}: cannot read {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret {name}: {path} is over 16 KiB, or not UTF-8")]
    Unreadable { name: String, path: PathBuf },
    #[error("secret {name}: no `env` or `file`")]
    NoSource { name: String },
    #[error("secret {0}: the value must be {MIN_SECRET_LEN} bytes to 16 KiB long")]
    Length(String),
    #[error(
        "secret {0}: the value must be printable ASCII without spaces (it goes into an HTTP header)"
    )]
    NotHeaderSafe(String),
}

/// Reads secret `name`'s value on the host. It must be one line of printable ASCII (it goes
/// into an HTTP header) of at least [`MIN_SECRET_LEN`] bytes.
pub fn read_value(name: &str, source: &SecretSource) -> Result<String, SecretError> {
    let name_ = || name.to_string();
    let value = match (&source.env, &source.file) {
        (Some(var), _) => std::env::var(var).map_err(|_| SecretError::Unset {
            name: name_(),
            var: var.clone(),
        })?,
        (None, Some(file)) => {
            let text = std::fs::read(file).map_err(|source| SecretError::Read {
                name: name_(),
                path: file.clone(),
                source,
            })?;
            let unreadable = || SecretError::Unreadable {
                name: name_(),
                path: file.clone(),
            };
            if text.len() > MAX_SECRET_LEN {
                return Err(unreadable());
            }
            let text = String::from_utf8(text).map_err(|_| unreadable())?;
            text.strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_string()
        }
        (None, None) => return Err(SecretError::NoSource { name: name_() }),
    };
    if value.len() < MIN_SECRET_LEN || value.len() > MAX_SECRET_LEN {
        return Err(SecretError::Length(name_()));
    }
    if !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(SecretError::NotHeaderSafe(name_()));
    }
    Ok(value)
}

/// A secret a stage uses: the value it never sees, the placeholder it sees instead, the hosts
/// the proxy adds the value for.
#[derive(Clone)]
pub struct Binding {
    pub name: String,
    pub placeholder: String,
    pub value: String,
    pub hosts: Vec<String>,
    /// The headers the placeholder is replaced in.
    pub headers: Vec<String>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("name", &self.name)
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Binding {
    /// Reads `name` from `secrets` and makes a fresh placeholder for it.
    fn new(name: &str, secrets: &BTreeMap<String, SecretSource>) -> Result<Binding, SecretError> {
        let source = secrets
            .get(name)
            .ok_or_else(|| SecretError::Unknown(name.into()))?;
        Ok(Binding {
            name: name.to_string(),
            placeholder: format!(
                "kiln-placeholder-{}-{}",
                name.to_ascii_lowercase().replace('_', "-"),
                ulid::Ulid::new().to_string().to_ascii_lowercase()
            ),
            value: read_value(name, source)?,
            hosts: source.hosts.clone(),
            headers: source.headers.clone(),
        })
    }
}

/// The operator's secrets as a running kiln holds them: where each value is, and the redactor
/// made once, at start, from every value readable then. Built at the edge and handed down.
#[derive(Clone, Default)]
pub struct Secrets {
    sources: Arc<BTreeMap<String, SecretSource>>,
    redactor: Redactor,
}

impl Secrets {
    /// Reads every configured secret once for the redactor; one that cannot be read is named in
    /// a warning (it is not redacted, and no job can use it).
    pub fn load(sources: &BTreeMap<String, SecretSource>) -> Secrets {
        let mut values = Vec::new();
        for (name, source) in sources {
            match read_value(name, source) {
                Ok(value) => values.push((name.clone(), value)),
                Err(why) => tracing::warn!("{why}; it is not redacted, and no job can use it"),
            }
        }
        Secrets {
            sources: Arc::new(sources.clone()),
            redactor: Redactor::new(&values),
        }
    }

    /// What hides every secret (and its base64 forms) in what kiln writes.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Reads `name` afresh and makes a new placeholder for it, for one stage run.
    pub fn bind(&self, name: &str) -> Result<Binding, SecretError> {
        Binding::new(name, &self.sources)
    }
}

impl SecretCheck for Secrets {
    fn readable(&self, name: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match self.sources.get(name) {
            Some(source) => read_value(name, source).map(drop)?,
            None => return Err(SecretError::Unknown(name.into()).into()),
        }
        Ok(())
    }

    fn found_in(&self, text: &str) -> Option<String> {
        self.redactor.find(text).map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_one_header_safe_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        let from_file = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let source: SecretSource = toml::from_str(&format!(
                "file = {:?}\nhosts = ['a.test']",
                file.display().to_string()
            ))
            .unwrap();
            read_value("K", &source)
        };
        assert_eq!(
            from_file("sk-test-0123456789\n").unwrap(),
            "sk-test-0123456789"
        );
        assert!(from_file("short\n").is_err());
        assert!(from_file("two words here\n").is_err());
        assert!(from_file("line-one-long\nline-two\n").is_err());
        let unset: SecretSource =
            toml::from_str("env = 'KILN_TEST_SURELY_UNSET_VAR'\nhosts = ['a.test']").unwrap();
        assert!(
            read_value("K", &unset)
                .unwrap_err()
                .to_string()
                .contains("KILN_TEST_SURELY_UNSET_VAR")
        );
    }
}
