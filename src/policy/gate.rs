//! The gate: every policy of a bundle on one input, decisions combined deny > escalate > review
//! > allow (warn-mode policies report but do not count), and whether auto-merge may happen.

use std::time::Instant;

use serde::Serialize;

use super::bundle::{Bundle, Condition, Mode};
use super::host::{Limits, Policy, PolicyEngine, PolicyFailure};
use super::{Decision, Finding, Verdict};
use crate::workspace::Diff;

/// What policies learn about the job (ABI `input.job`).
#[derive(Clone, Debug, Serialize)]
pub struct JobInfo {
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub prompt: String,
    pub tests_fixed: bool,
}

/// One attempt's test run (ABI `input.tests[]`).
#[derive(Clone, Debug, Serialize)]
pub struct TestInfo {
    pub attempt: u32,
    pub passed: bool,
    pub exit_code: Option<i64>,
}

/// Everything the gate judges, but each policy's config.
#[derive(Debug, Serialize)]
pub struct GateInput<'a> {
    pub job: JobInfo,
    pub diff: &'a Diff,
    pub tests: Vec<TestInfo>,
    /// The reviewer's verdict; `null` until reviewers exist.
    pub reviewer: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct GateResult {
    pub schema: &'static str,
    pub decision: Decision,
    pub policies: Vec<PolicyResult>,
    pub auto_merge: AutoMerge,
    /// Set when the decision is `escalate`: what the bundle says to do, and where.
    pub escalation: Option<Escalation>,
}

#[derive(Debug, Serialize)]
pub struct PolicyResult {
    pub name: String,
    pub sha256: String,
    pub mode: Mode,
    pub decision: Decision,
    pub findings: Vec<Finding>,
    pub duration_us: u64,
}

#[derive(Debug, Serialize)]
pub struct AutoMerge {
    pub allowed_by_bundle: bool,
    /// True only when the bundle allows auto-merge and every condition holds.
    pub eligible: bool,
    pub failed_conditions: Vec<Condition>,
}

#[derive(Debug, Serialize)]
pub struct Escalation {
    pub action: String,
    pub channel: Option<String>,
}

/// A bundle with its modules compiled, ready to judge any number of inputs.
pub struct Gate {
    engine: PolicyEngine,
    bundle: Bundle,
    loaded: Vec<Result<Policy, PolicyFailure>>,
}

impl Gate {
    /// Compiles (or loads from the cache) every module; a module refused at load is kept as its
    /// failure, so that every evaluation denies for it.
    pub fn new(engine: PolicyEngine, bundle: Bundle) -> Gate {
        let loaded = bundle
            .policies
            .iter()
            .map(|p| engine.load(&p.bytes))
            .collect();
        Gate {
            engine,
            bundle,
            loaded,
        }
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn evaluate(&self, input: &GateInput<'_>) -> GateResult {
        // The input is the same for every policy but its config: serialize it once and splice
        // each config in before the closing brace.
        let mut common = serde_json::to_vec(&serde_json::json!({"abi": super::ABI_VERSION}))
            .expect("a literal serializes");
        common.pop();
        let rest = serde_json::to_vec(input).expect("the gate input serializes");
        common.push(b',');
        common.extend_from_slice(&rest[1..rest.len() - 1]);

        let mut results = Vec::with_capacity(self.bundle.policies.len());
        for (policy, loaded) in self.bundle.policies.iter().zip(&self.loaded) {
            let started = Instant::now();
            let verdict = match loaded {
                Ok(module) => {
                    let mut bytes = common.clone();
                    bytes.extend_from_slice(b",\"config\":");
                    bytes.extend_from_slice(
                        &serde_json::to_vec(&policy.config).expect("config is JSON"),
                    );
                    bytes.push(b'}');
                    let limits = Limits {
                        fuel: policy.fuel.unwrap_or(Limits::default().fuel),
                        ..Limits::default()
                    };
                    self.engine
                        .evaluate(module, &bytes, limits)
                        .unwrap_or_else(|failure| Verdict::failed(&policy.name, &failure))
                }
                Err(failure) => Verdict::failed(&policy.name, failure),
            };
            results.push(PolicyResult {
                name: policy.name.clone(),
                sha256: policy.sha256.clone(),
                mode: policy.mode,
                decision: verdict.decision,
                findings: verdict.findings,
                duration_us: started.elapsed().as_micros() as u64,
            });
        }
        let decision = results
            .iter()
            .filter(|r| r.mode == Mode::Enforce)
            .map(|r| r.decision)
            .max()
            .unwrap_or(Decision::Allow);
        let failed_conditions: Vec<Condition> = self
            .bundle
            .auto_merge_conditions
            .iter()
            .copied()
            .filter(|c| !holds(*c, input, decision))
            .collect();
        GateResult {
            schema: "kiln.gate/v1",
            decision,
            auto_merge: AutoMerge {
                allowed_by_bundle: self.bundle.auto_merge_allowed,
                eligible: self.bundle.auto_merge_allowed
                    && decision == Decision::Allow
                    && failed_conditions.is_empty(),
                failed_conditions,
            },
            escalation: (decision == Decision::Escalate).then(|| Escalation {
                action: self.bundle.escalation_action.clone(),
                channel: self.bundle.escalation_channel.clone(),
            }),
            policies: results,
        }
    }
}

fn holds(condition: Condition, input: &GateInput<'_>, decision: Decision) -> bool {
    match condition {
        Condition::AllTestsPass => input.tests.last().is_some_and(|t| t.passed),
        Condition::ReviewerApproval => {
            input
                .reviewer
                .as_ref()
                .and_then(|r| r.get("verdict"))
                .and_then(|v| v.as_str())
                == Some("approve")
        }
        Condition::NoEscalationPatterns => decision < Decision::Escalate,
    }
}
