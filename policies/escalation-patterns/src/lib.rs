//! escalation-patterns: the seed article's escalation rules. A change to a path matching
//! `path_match`, or an added line containing a `content_match` string, escalates.

use kiln_policy_sdk::{Decision, Input, Output, config, config_decision, glob_match, policy};

const PATHS: [&str; 3] = ["**/auth/**", "**/payments/**", "**/migrations/**"];
const CONTENT: [&str; 3] = ["DELETE FROM", "DROP TABLE", "process.env"];

fn evaluate(input: &Input<'_>) -> Result<Output, String> {
    let paths: Vec<String> = config(input, "path_match", PATHS.map(String::from).to_vec())?;
    let content: Vec<String> = config(input, "content_match", CONTENT.map(String::from).to_vec())?;
    let decision = config_decision(input, Decision::Escalate)?;
    let mut output = Output::new(Decision::Allow);
    for file in &input.diff.files {
        if let Some(glob) = paths.iter().find(|g| file.paths().any(|p| glob_match(g, p))) {
            output.find(decision, "path_match", format!("changes a path under `{glob}`"), Some(&*file.path), None);
        }
        for (line, text) in file.added() {
            if let Some(needle) = content.iter().find(|n| text.contains(n.as_str())) {
                output.find(decision, "content_match", format!("adds `{needle}`"), Some(&*file.path), Some(line));
            }
        }
    }
    Ok(output)
}

policy!(
    name = "escalation-patterns",
    version = "1.0.0",
    description = "Escalates changes under sensitive paths or adding dangerous content",
    config_schema = r#"{"path_match": "globs (default **/auth/**, **/payments/**, **/migrations/**)",
        "content_match": "substrings of added lines (default DELETE FROM, DROP TABLE, process.env)",
        "decision": "review | escalate | deny (default escalate)"}"#,
    evaluate
);
