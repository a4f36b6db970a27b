//! size: a change over `max_files` files or `max_lines` changed lines asks for review.

use kiln_policy_sdk::{Decision, Input, Output, config, config_decision, policy};

fn evaluate(input: &Input<'_>) -> Result<Output, String> {
    let max_files: usize = config(input, "max_files", 50)?;
    let max_lines: usize = config(input, "max_lines", 1000)?;
    let decision = config_decision(input, Decision::Review)?;
    let stats = &input.diff.stats;
    let mut output = Output::new(Decision::Allow);
    if stats.files_changed > max_files {
        output.find(decision, "too_many_files", format!("changes {} files; the limit is {max_files}", stats.files_changed), None, None);
    }
    let lines = stats.additions + stats.deletions;
    if lines > max_lines {
        output.find(decision, "too_many_lines", format!("changes {lines} lines; the limit is {max_lines}"), None, None);
    }
    Ok(output)
}

policy!(
    name = "size",
    version = "1.0.0",
    description = "Asks for review when a change touches more files or lines than configured",
    config_schema = r#"{"max_files": "integer (default 50)", "max_lines": "added plus removed lines (default 1000)",
        "decision": "review | escalate | deny (default review)"}"#,
    reads = "stats",
    evaluate
);
