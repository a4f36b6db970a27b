//! The work branch: a name kiln may write, and nothing else.

use std::fmt;

use serde::Serialize;

/// A branch name that passed every check in [`BranchName::parse`]: under the configured prefix,
/// not protected, and a name git's own ref-format rules accept. Only this type reaches git.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BranchName(String);

/// Why a branch name was refused; each says what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BranchError {
    #[error("branch `{name}` is not under the `{prefix}` prefix; name it `{prefix}<something>`")]
    OutsidePrefix { name: String, prefix: String },
    #[error("branch `{0}` is only the prefix; add a name after it")]
    EmptyAfterPrefix(String),
    #[error("branch `{0}` is protected; kiln never writes it")]
    Protected(String),
    #[error("branch `{name}` contains `{part}`, which kiln refuses in branch names")]
    Forbidden { name: String, part: &'static str },
    #[error("branch `{0}` contains a control character or a space")]
    ControlCharacter(String),
    #[error("branch `{0}` is not a valid git branch name")]
    InvalidRef(String),
    #[error(
        "branch `{name}…` is {len} bytes long; at most {MAX_BRANCH_BYTES} (git writes each part as a file, plus `.lock`)"
    )]
    TooLong { name: String, len: usize },
    #[error(
        "branch `{0}` contains an invisible or direction-changing character, which makes it look like another name"
    )]
    Invisible(String),
}

/// The longest branch name kiln accepts, in bytes: git writes a ref's every part as a file
/// (`<part>.lock` while it updates it), which filesystems cap at 255 bytes, and hosting
/// services cap whole refs near that.
pub const MAX_BRANCH_BYTES: usize = 240;

/// Characters that show nothing or turn the text's direction: zero-width spaces and joiners,
/// bidirectional marks, embeddings, overrides and isolates, the word joiner, the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

impl BranchName {
    /// `prefix` must end in `/` (the operator config checks that); `protected` are full names.
    pub fn parse(name: &str, prefix: &str, protected: &[String]) -> Result<Self, BranchError> {
        if name.len() > MAX_BRANCH_BYTES {
            let shown: String = name.chars().take(40).collect();
            return Err(BranchError::TooLong {
                name: shown.escape_debug().to_string(),
                len: name.len(),
            });
        }
        if name.chars().any(is_invisible) {
            return Err(BranchError::Invisible(name.escape_unicode().to_string()));
        }
        for part in ["..", "@{", "//"] {
            if name.contains(part) {
                return Err(BranchError::Forbidden {
                    name: name.into(),
                    part,
                });
            }
        }
        if name.ends_with(".lock") || name.contains(".lock/") {
            return Err(BranchError::Forbidden {
                name: name.into(),
                part: ".lock",
            });
        }
        if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(BranchError::ControlCharacter(
                name.escape_debug().to_string(),
            ));
        }
        let bare = name.strip_prefix("refs/heads/").unwrap_or(name);
        if protected.iter().any(|p| p == bare || p == name) {
            return Err(BranchError::Protected(name.into()));
        }
        let Some(rest) = bare.strip_prefix(prefix) else {
            return Err(BranchError::OutsidePrefix {
                name: name.into(),
                prefix: prefix.into(),
            });
        };
        if rest.is_empty() || rest == "/" {
            return Err(BranchError::EmptyAfterPrefix(name.into()));
        }
        let full = format!("refs/heads/{bare}");
        if !is_valid_refname(&full) || bare.ends_with('/') || bare.ends_with('.') {
            return Err(BranchError::InvalidRef(name.into()));
        }
        Ok(BranchName(bare.to_string()))
    }

    /// The short name, like `factory/fix-login`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full ref, like `refs/heads/factory/fix-login`.
    pub fn refname(&self) -> String {
        format!("refs/heads/{}", self.0)
    }
}

/// git's rules for a ref's name (`git check-ref-format`), checked here rather than through
/// libgit2: its first use loads the system's CA store through OpenSSL (some 90 ms), which a
/// job's parse should not wait for. The tests hold it to libgit2's answer.
fn is_valid_refname(name: &str) -> bool {
    name != "@"
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.contains("@{")
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && !part.ends_with(".lock")
                && !part.chars().any(|c| {
                    c.is_ascii_control()
                        || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
                })
        })
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Result<BranchName, BranchError> {
        BranchName::parse(
            name,
            "factory/",
            &["main".into(), "master".into(), "factory/release".into()],
        )
    }

    #[test]
    fn accepts_names_under_the_prefix() {
        assert_eq!(
            parse("factory/fix-login").unwrap().as_str(),
            "factory/fix-login"
        );
        assert_eq!(
            parse("refs/heads/factory/a/b").unwrap().refname(),
            "refs/heads/factory/a/b"
        );
    }

    #[test]
    fn rejects_branch_outside_factory_prefix() {
        for name in [
            "main",
            "master",
            "develop",
            "refs/heads/main",
            "factoryx/a",
            "Factory/a",
        ] {
            assert!(parse(name).is_err(), "{name} accepted");
        }
        assert!(matches!(parse("main"), Err(BranchError::Protected(_))));
        assert!(matches!(
            parse("factory/release"),
            Err(BranchError::Protected(_))
        ));
    }

    #[test]
    fn rejects_traversal_and_ref_syntax() {
        for name in [
            "factory/",
            "factory/../main",
            "factory/a..b",
            "factory/a@{1}",
            "factory//a",
            "factory/a.lock",
            "factory/a.lock/b",
            "factory/a\u{7}",
            "factory/a b",
            "factory/a~1",
            "factory/a^",
            "factory/a:b",
            "factory/a?",
            "factory/a*",
            "factory/a[",
            "factory/a\\b",
            "factory/.hidden",
            "factory/a/",
            "factory/a.",
        ] {
            assert!(parse(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn refuses_overlong_and_invisible_names() {
        let long = format!("factory/{}", "x".repeat(MAX_BRANCH_BYTES));
        assert!(matches!(parse(&long), Err(BranchError::TooLong { .. })));
        let at_limit = format!("factory/{}", "x".repeat(MAX_BRANCH_BYTES - 8));
        assert!(parse(&at_limit).is_ok());
        for sneaky in [
            "factory/fix\u{202E}nigol",
            "factory/a\u{200B}b",
            "factory/\u{FEFF}x",
        ] {
            assert!(
                matches!(parse(sneaky), Err(BranchError::Invisible(_))),
                "{sneaky:?}"
            );
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A name that passes is one git accepts, under the prefix, short enough for any
        /// filesystem, with nothing invisible in it.
        #[test]
        fn a_name_that_passes_is_safe_to_write(
            name in prop_oneof!["factory/[a-zA-Z0-9._/@{}~^:?*\\[\\\\-]{0,30}", "factory/.{0,300}", ".{0,40}"],
        ) {
            if let Ok(branch) = parse(&name) {
                prop_assert!(branch.as_str().starts_with("factory/"));
                prop_assert!(branch.as_str().len() <= MAX_BRANCH_BYTES);
                prop_assert!(git2::Reference::is_valid_name(&branch.refname()));
                prop_assert!(!branch.as_str().chars().any(|c| is_invisible(c) || c.is_control()));
                prop_assert!(!branch.as_str().contains(".."));
            }
        }

        /// kiln's check of a ref's name says what libgit2's says.
        #[test]
        fn the_refname_check_agrees_with_libgit2(
            name in prop_oneof![
                "refs/heads/[a-z./@{}~^:?*\\[\\\\ \t-]{0,12}",
                "refs/heads/.{0,20}",
                "refs/heads/([a-z]{1,3}(\\.lock|\\.|/|//|@|@\\{)){1,4}",
            ],
        ) {
            prop_assert_eq!(is_valid_refname(&name), git2::Reference::is_valid_name(&name), "{:?}", name);
        }
    }
}
