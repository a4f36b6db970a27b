//! Which files are tests, and of what: by the naming conventions of the common languages.

use super::index::Index;

/// The test files of `index` by what they are named for, by the common conventions:
/// `test_x.py`, `x_test.py`, `x_test.go`, `x.test.ts`, `x.spec.js`, `tests/x.rs`,
/// `__tests__/x.js`... are tests of the files named `x`.
pub(super) fn tests_by_subject(index: &Index) -> std::collections::HashMap<&str, Vec<usize>> {
    let mut tests: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, file) in index.files.iter().enumerate() {
        if is_test(&file.path) && !test_subject(&file.path).is_empty() {
            tests.entry(test_subject(&file.path)).or_default().push(i);
        }
    }
    tests
}

/// What a file is named for: its name without folders and extension (`src/pay.test.ts` gives
/// `pay.test`), or its folder's name for a file that stands for its folder (`mod.rs`,
/// `index.ts`, `__init__.py`, `lib.rs`, `main.go`).
pub(super) fn stem_of(path: &str) -> &str {
    let mut parts = path.rsplit('/');
    let name = parts.next().unwrap_or(path);
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    match stem {
        "mod" | "index" | "__init__" | "lib" | "main" => parts.next().unwrap_or(stem),
        _ => stem,
    }
}

/// Whether `path` is a test by its name or its folder.
pub fn is_test(path: &str) -> bool {
    let stem = stem_of(path);
    let folders = path.split('/').rev().skip(1);
    stem.starts_with("test_")
        || ["_test", ".test", ".spec", "_spec"]
            .iter()
            .any(|mark| stem.ends_with(mark))
        || folders
            .into_iter()
            .any(|d| matches!(d, "test" | "tests" | "__tests__" | "spec"))
}

/// What a test file is named for: its stem without the test marks.
fn test_subject(path: &str) -> &str {
    let stem = stem_of(path);
    let stem = stem.strip_prefix("test_").unwrap_or(stem);
    ["_test", ".test", ".spec", "_spec"]
        .iter()
        .find_map(|mark| stem.strip_suffix(mark))
        .unwrap_or(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_are_told_by_their_names_and_folders() {
        for test in [
            "tests/test_pay.py",
            "pay_test.py",
            "pkg/pay_test.go",
            "src/pay.test.ts",
            "src/pay.spec.js",
            "__tests__/pay.js",
            "tests/pay.rs",
        ] {
            assert!(is_test(test), "{test}");
            assert_eq!(test_subject(test), "pay", "{test}");
        }
        // A file that stands for its folder is named for the folder.
        assert_eq!(stem_of("src/pay/mod.rs"), "pay");
        assert_eq!(stem_of("pay/__init__.py"), "pay");
        assert_eq!(test_subject("tests/common/mod.rs"), "common");
        assert!(!is_test("src/pay.py"));
        assert!(!is_test("src/contest.py"));
    }
}
