//! What `/metrics` reports besides the store's counts: histograms of stage durations, container
//! start latency and policy evaluation latency, and counters of attempts, gathered from each
//! job's report as it ends.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::model::spend::{ApiKind, Spend};
use crate::run::Report;

/// Upper bounds, in seconds, of the histogram buckets.
const STAGE_BUCKETS: [f64; 9] = [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];
const START_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const POLICY_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Default)]
struct Histogram {
    /// Cumulative count per bucket, then the total count and sum.
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (bucket, bound) in self.counts.iter_mut().zip(bounds) {
            if value <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Default)]
struct Gathered {
    attempts: u64,
    jobs_ended: u64,
    stages: BTreeMap<&'static str, Histogram>,
    starts: BTreeMap<&'static str, Histogram>,
    policies: Histogram,
    /// Model spend by host and API kind: requests, tokens by type, dollars, estimated.
    models: BTreeMap<(String, &'static str), Spend>,
}

/// The server's gathered metrics.
#[derive(Default)]
pub(super) struct Metrics {
    gathered: Mutex<Gathered>,
}

impl Metrics {
    /// Takes in what a finished job's report says.
    pub(super) fn observe(&self, report: &Report) {
        let mut g = self
            .gathered
            .lock()
            .expect("the metrics lock is never poisoned");
        g.jobs_ended += 1;
        g.attempts += report.attempts.len() as u64;
        for attempt in &report.attempts {
            let stages = [
                ("generate", Some(&attempt.generate)),
                ("test", attempt.test.as_ref()),
                ("review", attempt.review.as_ref().map(|r| &r.stage)),
            ];
            for (stage, report) in stages {
                if let Some(report) = report {
                    g.stages
                        .entry(stage)
                        .or_default()
                        .observe(&STAGE_BUCKETS, report.duration_ms as f64 / 1000.0);
                    g.starts
                        .entry(stage)
                        .or_default()
                        .observe(&START_BUCKETS, report.start_ms as f64 / 1000.0);
                }
            }
        }
        let stages = report.spend.iter().flat_map(|s| [&s.generate, &s.review]);
        for host in stages.flatten().flat_map(|s| &s.hosts) {
            let kind = match host.kind {
                ApiKind::Anthropic => "anthropic",
                ApiKind::Openai => "openai",
            };
            g.models
                .entry((host.host.clone(), kind))
                .or_default()
                .merge(&host.spent);
        }
        if let Some(gate) = &report.gate {
            for policy in &gate.policies {
                g.policies
                    .observe(&POLICY_BUCKETS, policy.duration_us as f64 / 1_000_000.0);
            }
        }
    }

    /// The Prometheus text of what was gathered.
    pub(super) fn render(&self, out: &mut String) {
        let g = self
            .gathered
            .lock()
            .expect("the metrics lock is never poisoned");
        let _ = writeln!(
            out,
            "# HELP kiln_jobs_ended_total Jobs that ran to their end since the server started.\n\
             # TYPE kiln_jobs_ended_total counter\nkiln_jobs_ended_total {}",
            g.jobs_ended
        );
        let _ = writeln!(
            out,
            "# HELP kiln_attempts_total Attempts made by jobs that ended since the server started.\n\
             # TYPE kiln_attempts_total counter\nkiln_attempts_total {}",
            g.attempts
        );
        let _ = writeln!(
            out,
            "# HELP kiln_stage_duration_seconds How long each stage's container ran.\n\
             # TYPE kiln_stage_duration_seconds histogram"
        );
        for (stage, histogram) in &g.stages {
            histogram.write(
                out,
                "kiln_stage_duration_seconds",
                &format!("stage=\"{stage}\""),
                &STAGE_BUCKETS,
            );
        }
        let _ = writeln!(
            out,
            "# HELP kiln_container_start_seconds From asking the engine for a stage's container to its start.\n\
             # TYPE kiln_container_start_seconds histogram"
        );
        for (stage, histogram) in &g.starts {
            histogram.write(
                out,
                "kiln_container_start_seconds",
                &format!("stage=\"{stage}\""),
                &START_BUCKETS,
            );
        }
        let _ = writeln!(
            out,
            "# HELP kiln_policy_evaluation_seconds How long each policy module took on a change.\n\
             # TYPE kiln_policy_evaluation_seconds histogram"
        );
        if g.policies.count > 0 {
            g.policies
                .write(out, "kiln_policy_evaluation_seconds", "", &POLICY_BUCKETS);
        }
        model_counters(out, &g.models);
    }
}

/// The model spend counters, one family at a time, a sample per host and API kind.
fn model_counters(out: &mut String, models: &BTreeMap<(String, &'static str), Spend>) {
    type Samples = fn(&Spend) -> Vec<(&'static str, String)>;
    let families: [(&str, &str, Samples); 4] = [
        (
            "kiln_model_requests_total",
            "Model calls counted by kiln's egress proxy, by host and API.",
            |s| vec![("", s.requests.to_string())],
        ),
        (
            "kiln_model_tokens_total",
            "Tokens model calls used, by host, API and type.",
            |s| {
                let u = &s.usage;
                vec![
                    (",type=\"input\"", u.input.to_string()),
                    (",type=\"cached\"", u.cached.to_string()),
                    (",type=\"output\"", u.output.to_string()),
                ]
            },
        ),
        (
            "kiln_model_cost_usd_total",
            "What model calls cost at the operator's prices, by host and API.",
            |s| vec![("", s.usd.to_string())],
        ),
        (
            "kiln_model_estimated_total",
            "Model calls whose usage could not be read and was estimated.",
            |s| vec![("", s.estimated.to_string())],
        ),
    ];
    for (name, help, samples) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((host, kind), spent) in models {
            for (more, value) in samples(spent) {
                let _ = writeln!(
                    out,
                    "{name}{{host=\"{host}\",kind=\"{kind}\"{more}}} {value}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_cumulatively() {
        let mut h = Histogram::default();
        for v in [0.2, 0.7, 3.0] {
            h.observe(&STAGE_BUCKETS, v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "stage=\"test\"", &STAGE_BUCKETS);
        assert!(
            out.contains("x_bucket{stage=\"test\",le=\"0.5\"} 1"),
            "{out}"
        );
        assert!(out.contains("x_bucket{stage=\"test\",le=\"5\"} 3"), "{out}");
        assert!(
            out.contains("x_bucket{stage=\"test\",le=\"+Inf\"} 3"),
            "{out}"
        );
        assert!(out.contains("x_count{stage=\"test\"} 3"), "{out}");
    }
}
