//! Credentials a stage uses without holding them: the operator's `[secrets]`, read on the host;
//! the placeholder a stage sees in its place; and the [`Redactor`] that keeps every configured
//! value (and its base64 forms) out of everything kiln writes.

mod redact;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use redact::{Redactor, StreamRedactor};

/// The shortest secret kiln accepts: redacting a shorter one would mangle ordinary text.
pub const MIN_SECRET_LEN: usize = 8;
/// The longest secret read from a file or the environment.
const MAX_SECRET_LEN: usize = 16 << 10;

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
    pub fn check(&self, name: &str) -> Result<(), String> {
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
            match crate::egress::Host::parse(host) {
                Ok(crate::egress::Host::Name(normal)) if &normal == host => {}
                Ok(crate::egress::Host::Name(normal)) => {
                    return Err(format!("{name}: write host `{host}` as `{normal}`"));
                }
                Ok(crate::egress::Host::Ip(_)) => {
                    return Err(format!(
                        "{name}: `{host}` is an address; a secret is bound to host names"
                    ));
                }
                Err(why) => return Err(format!("{name}: {why}")),
            }
        }
        Ok(())
    }

    /// Reads the value on the host. It must be one line of printable ASCII (it goes into an
    /// HTTP header) of at least [`MIN_SECRET_LEN`] bytes.
    pub fn read(&self, name: &str) -> Result<String, String> {
        let value = match (&self.env, &self.file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                format!("secret {name}: environment variable `{var}` is not set (or not UTF-8)")
            })?,
            (None, Some(file)) => {
                let text = std::fs::read(file)
                    .map_err(|e| format!("secret {name}: cannot read {}: {e}", file.display()))?;
                if text.len() > MAX_SECRET_LEN {
                    return Err(format!("secret {name}: {} is over 16 KiB", file.display()));
                }
                let text = String::from_utf8(text)
                    .map_err(|_| format!("secret {name}: {} is not UTF-8", file.display()))?;
                text.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_string()
            }
            (None, None) => return Err(format!("secret {name}: no `env` or `file`")),
        };
        if value.len() < MIN_SECRET_LEN || value.len() > MAX_SECRET_LEN {
            return Err(format!(
                "secret {name}: the value must be {MIN_SECRET_LEN} bytes to 16 KiB long"
            ));
        }
        if !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(format!(
                "secret {name}: the value must be printable ASCII without spaces (it goes into an HTTP header)"
            ));
        }
        Ok(value)
    }
}

/// Checks every entry of `[secrets]`.
pub fn check(secrets: &BTreeMap<String, SecretSource>) -> Result<(), String> {
    secrets
        .iter()
        .try_for_each(|(name, source)| source.check(name))
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
    pub fn new(name: &str, secrets: &BTreeMap<String, SecretSource>) -> Result<Binding, String> {
        let source = secrets
            .get(name)
            .ok_or_else(|| format!("secret {name} is not in the operator config's [secrets]"))?;
        Ok(Binding {
            name: name.to_string(),
            placeholder: format!(
                "kiln-placeholder-{}-{}",
                name.to_ascii_lowercase().replace('_', "-"),
                ulid::Ulid::new().to_string().to_ascii_lowercase()
            ),
            value: source.read(name)?,
            hosts: source.hosts.clone(),
            headers: source.headers.clone(),
        })
    }
}

/// The redactor for every configured secret whose value can be read now; the ones that cannot
/// are named in the second part (no job can use them either).
pub fn redactor(secrets: &BTreeMap<String, SecretSource>) -> (Redactor, Vec<String>) {
    let mut values = Vec::new();
    let mut unreadable = Vec::new();
    for (name, source) in secrets {
        match source.read(name) {
            Ok(value) => values.push((name.clone(), value)),
            Err(why) => unreadable.push(why),
        }
    }
    (Redactor::new(&values), unreadable)
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

    #[test]
    fn values_are_one_header_safe_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        let from_file = |text: &str| {
            std::fs::write(&file, text).unwrap();
            SecretSource {
                env: None,
                file: Some(file.clone()),
                hosts: vec!["a.test".into()],
                headers: default_headers(),
            }
            .read("K")
        };
        assert_eq!(
            from_file("sk-test-0123456789\n").unwrap(),
            "sk-test-0123456789"
        );
        assert!(from_file("short\n").is_err());
        assert!(from_file("two words here\n").is_err());
        assert!(from_file("line-one-long\nline-two\n").is_err());
        let unset = SecretSource {
            env: Some("KILN_TEST_SURELY_UNSET_VAR".into()),
            file: None,
            hosts: vec!["a.test".into()],
            headers: default_headers(),
        };
        assert!(
            unset
                .read("K")
                .unwrap_err()
                .contains("KILN_TEST_SURELY_UNSET_VAR")
        );
    }
}
