//! secrets: an added line holding a credential denies: a private key block, a cloud or forge key
//! id, or a quoted literal assigned to a name like `*_KEY`, `*_TOKEN`, `*_SECRET`, `*_PASSWORD`.
//! The finding never repeats the secret.

use kiln_policy_sdk::{Decision, Input, Output, config_decision, policy};

/// Prefixes of well-known token formats, with the fewest token characters that must follow.
const TOKEN_PREFIXES: [(&str, usize, &str); 9] = [
    ("AKIA", 16, "an AWS access key id"),
    ("ASIA", 16, "an AWS temporary access key id"),
    ("ghp_", 30, "a GitHub personal access token"),
    ("gho_", 30, "a GitHub OAuth token"),
    ("ghs_", 30, "a GitHub app token"),
    ("github_pat_", 30, "a GitHub fine-grained token"),
    ("glpat-", 20, "a GitLab token"),
    ("xoxb-", 20, "a Slack bot token"),
    ("sk-ant-", 20, "an Anthropic API key"),
];
const SECRET_NAMES: [&str; 6] = ["key", "token", "secret", "password", "passwd", "credential"];

fn token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// What kind of credential `line` holds, if any.
pub fn credential(line: &str) -> Option<&'static str> {
    let bytes = line.as_bytes();
    // Key blocks and token formats need a long run of token characters; most lines have none.
    if has_token_run(bytes, 10) {
        if line.contains("-----BEGIN") && line.contains("PRIVATE KEY") {
            return Some("a private key block");
        }
        for (prefix, min, what) in TOKEN_PREFIXES {
            for (at, _) in line.match_indices(prefix) {
                let boundary = at == 0 || !token_char(bytes[at - 1]);
                let run = bytes[at + prefix.len()..].iter().take_while(|c| token_char(**c)).count();
                if boundary && run >= min {
                    return Some(what);
                }
            }
        }
    }
    // An assignment needs a quote and an `=` or `:`.
    let quoted = bytes.iter().any(|b| *b == b'"' || *b == b'\'');
    if quoted && bytes.iter().any(|b| *b == b'=' || *b == b':') {
        return assigned_secret(line);
    }
    None
}

/// Whether `bytes` holds `min` token characters in a row (a cheap first filter).
fn has_token_run(bytes: &[u8], min: usize) -> bool {
    let mut run = 0;
    for &c in bytes {
        run = if token_char(c) { run + 1 } else { 0 };
        if run >= min {
            return true;
        }
    }
    false
}

/// `NAME = "literal"` or `NAME: 'literal'` where NAME ends in a secret word and the literal is
/// at least 8 characters and not a reference to the environment or a placeholder.
fn assigned_secret(line: &str) -> Option<&'static str> {
    let (name, value) = line.split_once(['=', ':'])?;
    let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
    let ident: String = name.chars().rev().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    let ident: String = ident.chars().rev().collect::<String>().to_ascii_lowercase();
    if !SECRET_NAMES.iter().any(|w| ident.ends_with(w)) {
        return None;
    }
    let value = value.trim().trim_end_matches([',', ';']);
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let literal = value[1..].split(quote).next()?;
    let placeholder = literal.len() < 8
        || literal.starts_with(['$', '<', '{'])
        || literal.chars().all(|c| c == literal.chars().next().unwrap_or(' '))
        || ["changeme", "example", "placeholder", "redacted", "xxxx"].iter().any(|p| literal.to_ascii_lowercase().contains(p));
    (!placeholder).then_some("a secret literal assigned to a secret name")
}

fn evaluate(input: &Input<'_>) -> Result<Output, String> {
    let decision = config_decision(input, Decision::Deny)?;
    let mut output = Output::new(Decision::Allow);
    for file in &input.diff.files {
        for (line, text) in file.added() {
            if let Some(what) = credential(text) {
                output.find(decision, "credential", format!("adds {what}"), Some(&*file.path), Some(line));
            }
        }
    }
    Ok(output)
}

policy!(
    name = "secrets",
    version = "1.0.0",
    description = "Denies added lines holding credentials: private keys, cloud key ids, tokens assigned to secret names",
    config_schema = r#"{"decision": "review | escalate | deny (default deny)"}"#,
    evaluate
);

#[cfg(test)]
mod tests {
    use super::credential;

    #[test]
    fn finds_credential_shapes() {
        assert!(credential("-----BEGIN RSA PRIVATE KEY-----").is_some());
        assert!(credential("aws_access_key_id = AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(credential("GITHUB_TOKEN=\"ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\"").is_some());
        assert!(credential("API_KEY = \"s3cr3t-v4lue-1234\"").is_some());
        assert!(credential("  \"db_password\": \"hunter2hunter2\",").is_some());
    }

    #[test]
    fn leaves_references_and_placeholders_alone() {
        assert!(credential("API_KEY = os.environ[\"API_KEY\"]").is_none());
        assert!(credential("const token = process.env.TOKEN;").is_none());
        assert!(credential("API_KEY = \"${API_KEY}\"").is_none());
        assert!(credential("PASSWORD = \"changeme123\"").is_none());
        assert!(credential("println!(\"AKIA is a prefix\")").is_none());
    }
}
