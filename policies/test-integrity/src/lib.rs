//! test-integrity: the self-repair loop's favourite shortcut is weakening the tests. Deleted test
//! files, removed assertions, added skip markers, and any test change when the job says tests
//! are fixed, and any change to a path the job protects (`[test] protect`), escalate.

use kiln_policy_sdk::{Decision, FileDiff, Input, Output, config, config_decision, glob_match, policy};

const TEST_PATHS: [&str; 10] = [
    "tests/**", "test/**", "**/tests/**", "**/test/**", "**/__tests__/**", "spec/**",
    "test_*.py", "*_test.py", "*_test.go", "*.test.*",
];
const SKIP_MARKERS: [&str; 14] = [
    "#[ignore]", "@pytest.mark.skip", "@pytest.mark.xfail", "pytest.skip(", "@unittest.skip",
    "it.skip(", "describe.skip(", "test.skip(", "xit(", "xdescribe(", "t.Skip(", "@Disabled",
    "@Ignore", "skip(\"",
];
const MARKER_HINTS: [&str; 6] = ["kip", "gnore", "xfail", "xit(", "xdescribe(", "Disabled"];
const ASSERTIONS: [&str; 6] = ["assert", "expect(", "should", "require.", "t.Error", "t.Fatal"];

fn is_test(tests: &[String], file: &FileDiff<'_>) -> bool {
    file.paths().any(|p| tests.iter().any(|g| glob_match(g, p)))
}

fn evaluate(input: &Input<'_>) -> Result<Output, String> {
    let tests: Vec<String> = config(input, "test_paths", TEST_PATHS.map(String::from).to_vec())?;
    let decision = config_decision(input, Decision::Escalate)?;
    let mut output = Output::new(Decision::Allow);
    for file in &input.diff.files {
        if let Some(glob) = input.job.protect.iter().find(|g| file.paths().any(|p| glob_match(g, p))) {
            let message = format!("changes a path the job protects (`{glob}`); the tests ran its base version");
            output.find(decision, "protected_changed", message, Some(&*file.path), None);
        }
    }
    for file in input.diff.files.iter().filter(|f| is_test(&tests, f)) {
        let path = Some(&*file.path);
        if file.status == "deleted" {
            output.find(decision, "test_deleted", "deletes a test file".into(), path, None);
        } else if input.job.tests_fixed {
            output.find(decision, "tests_fixed", "changes a test file, but the job says tests are fixed".into(), path, None);
        }
        for (line, text) in file.removed() {
            if ASSERTIONS.iter().any(|a| text.contains(a)) {
                output.find(decision, "assertion_removed", format!("removes an assertion: `{}`", text.trim()), path, Some(line));
            }
        }
    }
    // Skip markers count wherever they are added: tests live beside code in many languages.
    let hints = aho_corasick::AhoCorasick::new(MARKER_HINTS).map_err(|e| e.to_string())?;
    for file in &input.diff.files {
        for (line, text) in file.added() {
            // Every marker holds one of these; most lines hold none, and are passed over cheaply.
            if !hints.is_match(text) {
                continue;
            }
            if let Some(marker) = SKIP_MARKERS.iter().find(|m| text.contains(*m)) {
                output.find(decision, "skip_added", format!("adds the skip marker `{marker}`"), Some(&*file.path), Some(line));
            }
        }
    }
    Ok(output)
}

policy!(
    name = "test-integrity",
    version = "1.0.0",
    description = "Escalates deleted tests, removed assertions, added skip markers, test changes when tests are fixed, and changes to protected paths",
    config_schema = r#"{"test_paths": "globs of test files (default: tests/, test_*.py, *_test.go, *.test.* ...)",
        "decision": "review | escalate | deny (default escalate)"}"#,
    evaluate
);
