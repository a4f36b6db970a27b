//! A kiln policy. `evaluate` gets the job, the typed diff, test results and this policy's config
//! from the bundle, and returns a decision with findings. Build with `kiln policy build .`,
//! test with `kiln policy test .` (cases/ holds the fixtures).

use kiln_policy_sdk::{Decision, Input, Output, config, policy};

fn evaluate(input: &Input<'_>) -> Result<Output, String> {
    let forbidden: Vec<String> = config(input, "forbidden_words", vec!["TODO".to_string()])?;
    let mut output = Output::new(Decision::Allow);
    for file in &input.diff.files {
        for (line, content) in file.added() {
            for word in &forbidden {
                if content.contains(word.as_str()) {
                    output.find(Decision::Review, "forbidden_word", format!("adds `{word}`"), Some(&*file.path), Some(line));
                }
            }
        }
    }
    Ok(output)
}

policy!(
    name = "template",
    version = "1.0.0",
    description = "Asks for review when a change adds a forbidden word",
    config_schema = r#"{"forbidden_words": "list of strings (default [\"TODO\"])"}"#,
    evaluate
);
