//! Path globs for policies: `*` matches within one path segment, `**` any number of segments,
//! `?` one character. A pattern with no `/` matches the file name anywhere (like .gitignore).

/// Whether `path` (relative, `/`-separated) matches `pattern`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    if !pattern.contains('/') {
        return path.rsplit('/').next().is_some_and(|name| segment(pattern.as_bytes(), name.as_bytes()));
    }
    let pattern: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    segments(&pattern, &path)
}

fn segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((name, path_rest)) => segment(first.as_bytes(), name.as_bytes()) && segments(rest, path_rest),
            None => false,
        },
    }
}

fn segment(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| segment(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && segment(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && segment(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn double_star_spans_segments() {
        assert!(glob_match("**/auth/**", "src/auth/login.rs"));
        assert!(glob_match("**/auth/**", "auth/x"));
        assert!(!glob_match("**/auth/**", "src/author/x"));
        assert!(glob_match("**/migrations/**", "db/migrations/001.sql"));
        assert!(glob_match(".github/workflows/**", ".github/workflows/ci.yml"));
    }

    #[test]
    fn single_star_stays_in_a_segment_and_bare_names_match_anywhere() {
        assert!(glob_match("src/*.rs", "src/main.rs"));
        assert!(!glob_match("src/*.rs", "src/a/main.rs"));
        assert!(glob_match("Cargo.lock", "crates/x/Cargo.lock"));
        assert!(glob_match("*_test.go", "pkg/a_test.go"));
        assert!(glob_match("test_?.py", "test_a.py"));
    }
}
