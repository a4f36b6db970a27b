//! The gate: every policy of a bundle on one input, decisions combined deny > escalate > review
//! > allow (warn-mode policies report but do not count), and whether auto-merge may happen.

use std::time::Instant;

use serde::Serialize;

use super::bundle::{Bundle, BundledPolicy, Condition, Mode};
use super::host::{Limits, Policy, PolicyEngine, PolicyFailure, Reads};
use super::{Decision, Finding, Severity, Verdict, wire};
use crate::model::{Diff, DiffStats, FileStatus};

/// What policies learn about the job (ABI `input.job`).
#[derive(Clone, Debug, Serialize)]
pub struct JobInfo {
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub prompt: String,
    pub tests_fixed: bool,
    /// Globs of the job's `[test] protect`: a change to one of these paths is suspect.
    pub protect: Vec<String>,
}

/// One attempt's test run (ABI `input.tests[]`).
#[derive(Clone, Debug, Serialize)]
pub struct TestInfo {
    pub attempt: u32,
    pub passed: bool,
    pub exit_code: Option<i64>,
}

/// Everything the gate judges, but each policy's config.
#[derive(Clone, Debug, Serialize)]
pub struct GateInput<'a> {
    pub job: JobInfo,
    pub diff: &'a Diff,
    pub tests: Vec<TestInfo>,
    /// The reviewer's verdict; `null` until reviewers exist.
    pub reviewer: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GateResult {
    pub schema: &'static str,
    pub decision: Decision,
    pub policies: Vec<PolicyResult>,
    pub auto_merge: AutoMerge,
    /// Set when the decision is `escalate`: what the bundle says to do, and where.
    pub escalation: Option<Escalation>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyResult {
    pub name: String,
    pub sha256: String,
    pub mode: Mode,
    pub decision: Decision,
    /// The module gave no verdict (it failed to load, trapped, ran out of fuel or memory, or
    /// answered nonsense): its `deny` counts whatever its mode.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    pub findings: Vec<Finding>,
    pub duration_us: u64,
    /// What the module wrote to `kiln.log` (capped at 64 KiB).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AutoMerge {
    pub allowed_by_bundle: bool,
    /// True only when the bundle allows auto-merge and every condition holds.
    pub eligible: bool,
    pub failed_conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Escalation {
    pub action: String,
    pub channel: Option<String>,
}

/// A bundle with its modules compiled, ready to judge any number of inputs.
pub struct Gate {
    engine: PolicyEngine,
    bundle: Bundle,
    /// Each module, with how much of the diff it reads, or why it was refused.
    loaded: Vec<Result<(Policy, Reads), PolicyFailure>>,
}

/// The input with only files (no hunks) or only stats, for policies that read no more.
#[derive(Serialize)]
struct SlimInput<'a> {
    job: &'a JobInfo,
    diff: SlimDiff<'a>,
    tests: &'a [TestInfo],
    reviewer: &'a Option<serde_json::Value>,
}

#[derive(Serialize)]
struct SlimDiff<'a> {
    files: Vec<SlimFile<'a>>,
    stats: DiffStats,
}

#[derive(Serialize)]
struct SlimFile<'a> {
    path: &'a str,
    old_path: Option<&'a str>,
    status: FileStatus,
    old_mode: Option<&'a str>,
    new_mode: Option<&'a str>,
    binary: bool,
    additions: usize,
    deletions: usize,
    hunks: [(); 0],
}

impl<'a> SlimInput<'a> {
    fn new(input: &'a GateInput<'a>, reads: Reads) -> Self {
        let files = match reads {
            Reads::Stats => Vec::new(),
            _ => input
                .diff
                .files
                .iter()
                .map(|f| SlimFile {
                    path: &f.path,
                    old_path: f.old_path.as_deref(),
                    status: f.status,
                    old_mode: f.old_mode.as_deref(),
                    new_mode: f.new_mode.as_deref(),
                    binary: f.binary,
                    additions: f.additions,
                    deletions: f.deletions,
                    hunks: [],
                })
                .collect(),
        };
        SlimInput {
            job: &input.job,
            diff: SlimDiff {
                files,
                stats: input.diff.stats,
            },
            tests: &input.tests,
            reviewer: &input.reviewer,
        }
    }
}

/// `{"abi":1,` and the fields of `value`, without the closing brace: each policy's config is
/// spliced in after.
fn prefix(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = b"{\"abi\":1,".to_vec();
    let rest = serde_json::to_vec(value).expect("the gate input serializes");
    bytes.extend_from_slice(&rest[1..rest.len() - 1]);
    bytes
}

/// `input` left at `reads`, encoded for ABI `abi`, without the policy's config.
pub(super) fn common(input: &GateInput<'_>, reads: Reads, abi: i32) -> Vec<u8> {
    match (abi, reads) {
        (1, Reads::Lines) => prefix(input),
        (1, _) => prefix(&SlimInput::new(input, reads)),
        _ => wire::common(
            &input.job,
            input.diff,
            &input.tests,
            input.reviewer.as_ref(),
            reads,
        ),
    }
}

/// One policy's whole input: `common` (from [`common`], for ABI `abi`) and its `config`.
pub(super) fn with_config(common: &[u8], abi: i32, config: &serde_json::Value) -> Vec<u8> {
    if abi != 1 {
        return wire::with_config(common, config);
    }
    let mut bytes = common.to_vec();
    bytes.extend_from_slice(b",\"config\":");
    bytes.extend_from_slice(&serde_json::to_vec(config).expect("config is JSON"));
    bytes.push(b'}');
    bytes
}

impl Gate {
    /// Compiles (or loads from the cache) every module; a module refused at load is kept as its
    /// failure, so that every evaluation denies for it.
    pub fn new(engine: PolicyEngine, bundle: Bundle) -> Gate {
        let loaded = bundle
            .policies
            .iter()
            .map(|p| {
                let policy = engine.load(&p.bytes)?;
                // Every export the gate calls is the module's word: a metadata export that
                // traps, loops or answers nonsense is a failure, and denies, as it would in
                // `kiln policy inspect`.
                let reads = engine.metadata(&policy)?.reads;
                Ok((policy, reads))
            })
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
        // The input is the same for every policy but its config, how much of the diff it
        // reads and its ABI's encoding: encode each variant needed once, and splice each config
        // on after.
        let mut commons: Vec<((Reads, i32), Vec<u8>)> = Vec::new();
        for (policy, reads) in self.loaded.iter().flatten() {
            let key = (*reads, policy.abi());
            if !commons.iter().any(|(k, _)| *k == key) {
                commons.push((key, common(input, key.0, key.1)));
            }
        }
        let common = |loaded: &Result<(Policy, Reads), PolicyFailure>| -> &[u8] {
            let Ok((policy, reads)) = loaded else {
                return &[];
            };
            commons
                .iter()
                .find(|(k, _)| *k == (*reads, policy.abi()))
                .map_or(&[], |(_, bytes)| bytes)
        };
        // Each policy runs in its own store, so the bundle's policies run side by side.
        let parent = tracing::Span::current();
        let mut results: Vec<PolicyResult> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .bundle
                .policies
                .iter()
                .zip(&self.loaded)
                .map(|(policy, loaded)| {
                    let bytes = common(loaded);
                    let parent = &parent;
                    scope.spawn(move || {
                        let span = tracing::info_span!(
                            parent: parent,
                            "policy.module",
                            kiln.policy = %policy.name,
                            kiln.sha256 = %policy.sha256,
                            kiln.decision = tracing::field::Empty,
                        );
                        let result = span.in_scope(|| self.run_one(policy, loaded, bytes));
                        span.record("kiln.decision", result.decision.as_str());
                        result
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(&self.bundle.policies)
                .map(|(handle, policy)| {
                    handle.join().unwrap_or_else(|_| {
                        let failure = PolicyFailure::Trap("the evaluation thread panicked".into());
                        let verdict = Verdict::failed(&policy.name, &failure);
                        PolicyResult {
                            name: policy.name.clone(),
                            sha256: policy.sha256.clone(),
                            mode: policy.mode,
                            decision: verdict.decision,
                            failed: true,
                            findings: verdict.findings,
                            duration_us: 0,
                            log: String::new(),
                        }
                    })
                })
                .collect()
        });
        results.extend(unread(input.diff));
        // A warning policy's decision does not count, but its failure does: a module that
        // cannot answer is no warning.
        let decision = results
            .iter()
            .filter(|r| r.mode == Mode::Enforce || r.failed)
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

impl Gate {
    fn run_one(
        &self,
        policy: &BundledPolicy,
        loaded: &Result<(Policy, Reads), PolicyFailure>,
        common: &[u8],
    ) -> PolicyResult {
        let started = Instant::now();
        let mut log = String::new();
        let mut failed = true;
        let verdict = match loaded {
            Ok((module, _)) => {
                let bytes = with_config(common, module.abi(), &policy.config);
                let limits = Limits {
                    fuel: policy.fuel.unwrap_or(Limits::default().fuel),
                    ..Limits::default()
                };
                let (verdict, written) = self.engine.evaluate_logged(module, &bytes, limits);
                log = written;
                failed = verdict.is_err();
                verdict.unwrap_or_else(|failure| Verdict::failed(&policy.name, &failure))
            }
            Err(failure) => Verdict::failed(&policy.name, failure),
        };
        PolicyResult {
            name: policy.name.clone(),
            sha256: policy.sha256.clone(),
            mode: policy.mode,
            decision: verdict.decision,
            failed,
            findings: verdict.findings,
            duration_us: started.elapsed().as_micros() as u64,
            log,
        }
    }
}

/// The name under which the gate reports a change its policies could not read whole.
pub const DIFF_BUDGET: &str = "kiln.diff-budget";

/// kiln's own deny when the diff left files out (larger than the gate reads): no policy saw
/// them, so none may allow them. `None` when every file was read.
fn unread(diff: &Diff) -> Option<PolicyResult> {
    let findings: Vec<Finding> = diff
        .files
        .iter()
        .filter_map(|f| {
            let why = f.omitted.as_ref()?;
            Some(Finding {
                rule: DIFF_BUDGET.into(),
                message: format!(
                    "{} is {why} ([policy] max_diff): no policy read it, so the change is denied",
                    f.path
                ),
                path: Some(f.path.clone()),
                line: None,
                severity: Severity::Error,
            })
        })
        .collect();
    (!findings.is_empty()).then(|| PolicyResult {
        name: DIFF_BUDGET.into(),
        sha256: String::new(),
        mode: Mode::Enforce,
        decision: Decision::Deny,
        failed: false,
        findings,
        duration_us: 0,
        log: String::new(),
    })
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
