//! The policy gate on a passing change: every bundled policy on the generator's typed diff, the
//! tests so far and the reviewer's verdict; its result goes to the report, `gate.json`,
//! `gate.sarif` and the audit log.

use std::sync::Arc;

use tracing::{Instrument, info_span};

use super::{Runner, Step, blocking};
use crate::audit::{Event, PolicyRecord};
use crate::error::Error;
use crate::model::Diff;
use crate::policy::{Decision, Gate, GateInput, JobInfo, TestInfo, to_sarif};
use crate::review::ReviewVerdict;

impl Runner<'_> {
    /// Every test run so far, as the gate and the reviewer see them.
    pub(super) fn tests(&self) -> Vec<TestInfo> {
        self.attempts
            .iter()
            .filter_map(|a| {
                a.test.as_ref().map(|t| TestInfo {
                    attempt: a.attempt,
                    passed: a.passed,
                    exit_code: t.exit_code,
                })
            })
            .collect()
    }

    /// Runs the policy gate on the passing change; its result goes to the report, `gate.json`
    /// and `gate.sarif` in the artifacts.
    pub(super) async fn judge(
        &mut self,
        gate: Arc<Gate>,
        diff: Diff,
        verdict: Option<&ReviewVerdict>,
    ) -> Result<Decision, Error> {
        let job = self.job;
        let timer = self.progress.start(Step::PolicyGate);
        let tests = self.tests();
        let reviewer = verdict
            .map(serde_json::to_value)
            .transpose()
            .map_err(Error::Json)?;
        let info = JobInfo {
            id: job.id.to_string(),
            repo: job.repo.path().display().to_string(),
            branch: job.branch.to_string(),
            prompt: job.prompt.clone(),
            tests_fixed: job.tests_fixed,
            protect: job.protect.patterns().to_vec(),
        };
        let result = blocking(move || {
            let input = GateInput {
                job: info,
                diff: &diff,
                tests,
                reviewer,
            };
            Ok(gate.evaluate(&input))
        })
        .instrument(info_span!("policy"))
        .await?;
        let findings: usize = result.policies.iter().map(|p| p.findings.len()).sum();
        timer.done(&format!(
            "{} ({findings} findings)",
            result.decision.as_str()
        ));
        let files = &self.artifacts;
        let result = files.write_json_async(files.gate_json(), result).await?;
        files
            .write_json_async(files.gate_sarif(), to_sarif(&result))
            .await?;
        let decision = result.decision;
        let policies = result
            .policies
            .iter()
            .map(|p| PolicyRecord {
                name: p.name.clone(),
                sha256: p.sha256.clone(),
                mode: p.mode.as_str().into(),
                decision: p.decision.as_str().into(),
            })
            .collect();
        self.record(Event::PolicyDecision {
            decision: decision.as_str().into(),
            auto_merge: result.auto_merge.eligible,
            policies,
        })
        .await?;
        self.gate_result = Some(result);
        Ok(decision)
    }
}
