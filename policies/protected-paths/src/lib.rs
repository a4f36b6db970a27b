//! protected-paths: a change outside the `allowed` globs (when any are given), or to a
//! `protected` path (CI config, build scripts, lockfiles by default), escalates or denies.

use kiln_policy_sdk::{Decision, Input, Output, config, config_decision, glob_match, policy};

const PROTECTED: [&str; 16] = [
    ".github/workflows/**", ".gitlab-ci.yml", ".ci/**", ".circleci/**", "Jenkinsfile", "build.rs",
    "Makefile", "Dockerfile", "Cargo.lock", "package-lock.json", "yarn.lock", "pnpm-lock.yaml",
    "poetry.lock", "Pipfile.lock", "go.sum", "Gemfile.lock",
];

fn evaluate(input: &Input<'_>) -> Result<Output, String> {
    let allowed: Vec<String> = config(input, "allowed", Vec::new())?;
    let protected: Vec<String> = config(input, "protected", PROTECTED.map(String::from).to_vec())?;
    let decision = config_decision(input, Decision::Escalate)?;
    let mut output = Output::new(Decision::Allow);
    for file in &input.diff.files {
        for path in file.paths() {
            if let Some(glob) = protected.iter().find(|g| glob_match(g, path)) {
                output.find(decision, "protected", format!("changes `{path}`, protected by `{glob}`"), Some(&*file.path), None);
            } else if !allowed.is_empty() && !allowed.iter().any(|g| glob_match(g, path)) {
                output.find(decision, "outside_allowed", format!("changes `{path}`, outside the allowed paths"), Some(&*file.path), None);
            }
        }
    }
    Ok(output)
}

policy!(
    name = "protected-paths",
    version = "1.0.0",
    description = "Escalates or denies changes outside allowed paths, or to CI config, build scripts and lockfiles",
    config_schema = r#"{"allowed": "globs a change may touch (default: any)",
        "protected": "globs no change may touch (default: CI config, build scripts, lockfiles)",
        "decision": "review | escalate | deny (default escalate)"}"#,
    reads = "files",
    evaluate
);
