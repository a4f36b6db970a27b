//! SARIF 2.1.0 of a gate result, so GitHub code scanning and GitLab show findings at file and line.

use serde_json::{Value, json};

use super::{GateResult, Severity};

/// A SARIF log with no results, for a run whose gate did not run (tests failed first).
pub fn empty_sarif() -> Value {
    log(Vec::new(), Vec::new(), Value::Null)
}

pub fn to_sarif(result: &GateResult) -> Value {
    let mut rules = Vec::new();
    let mut results = Vec::new();
    for policy in &result.policies {
        for finding in &policy.findings {
            let id = format!("{}/{}", policy.name, finding.rule);
            if !rules.iter().any(|r: &Value| r["id"] == id.as_str()) {
                rules.push(json!({
                    "id": id,
                    "shortDescription": {"text": format!("{} ({})", finding.rule, policy.name)},
                    "properties": {"policy": policy.name, "policySha256": policy.sha256},
                }));
            }
            let mut entry = json!({
                "ruleId": id,
                "level": match finding.severity {
                    Severity::Note => "note",
                    Severity::Warning => "warning",
                    Severity::Error => "error",
                },
                "message": {"text": finding.message},
                "properties": {"decision": policy.decision, "mode": policy.mode},
            });
            if let Some(path) = &finding.path {
                let mut location = json!({"artifactLocation": {"uri": path}});
                if let Some(line) = finding.line.filter(|l| *l > 0) {
                    location["region"] = json!({"startLine": line});
                }
                entry["locations"] = json!([{"physicalLocation": location}]);
            }
            results.push(entry);
        }
    }
    log(rules, results, json!(result.decision))
}

fn log(rules: Vec<Value>, results: Vec<Value>, decision: Value) -> Value {
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "kiln",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
            "properties": {"decision": decision},
        }],
    })
}
