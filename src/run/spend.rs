//! A job's model spend: one meter for its generator's calls and one for its reviewer's, each
//! held to its stage's budget over every attempt, counted by the egress proxies of the stages
//! (`egress::SpendMeter`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::egress::{ModelHost, SpendMeter};
use crate::job::Job;
use crate::model::Stage;
use crate::model::spend::Budget;
use crate::report::{HostSpend, SpendReport, StageSpend};

/// The meters of one job: a generator or reviewer has one when it has a budget or the operator
/// lists model hosts; otherwise its calls are not counted.
#[derive(Debug, Default)]
pub(crate) struct JobSpend {
    generate: Option<Arc<SpendMeter>>,
    review: Option<Arc<SpendMeter>>,
}

impl JobSpend {
    pub fn new(job: &Job, config: &Config) -> JobSpend {
        let hosts: HashMap<String, ModelHost> = config
            .egress
            .models
            .iter()
            .map(|(host, m)| {
                let model = ModelHost {
                    kind: m.kind,
                    price: m.price(),
                };
                (host.clone(), model)
            })
            .collect();
        // A stage is metered when the operator lists model hosts (its spend is reported, and
        // its transcript kept if asked), and held to its budget when it has one.
        let transcripts = config.egress.transcripts;
        let meter = |budget: Option<Budget>| {
            (budget.is_some() || !hosts.is_empty())
                .then(|| SpendMeter::new(hosts.clone(), budget.unwrap_or_default(), transcripts))
        };
        JobSpend {
            generate: meter(job.generate.budget),
            review: job.review.as_ref().and_then(|r| meter(r.budget)),
        }
    }

    /// The meter of `stage`'s calls, if its calls are counted.
    pub fn of(&self, stage: Stage) -> Option<&Arc<SpendMeter>> {
        match stage {
            Stage::Generate => self.generate.as_ref(),
            Stage::Review => self.review.as_ref(),
            Stage::Test | Stage::MergeTest => None,
        }
    }

    /// Why a call was refused for the budget, once one was.
    pub fn cut_short(&self) -> Option<String> {
        [&self.generate, &self.review]
            .into_iter()
            .flatten()
            .find_map(|m| m.cut_short())
    }

    /// What the generator and the reviewer spent, for the report; none when neither was
    /// counted.
    pub fn report(&self) -> Option<SpendReport> {
        let stage = |m: &Option<Arc<SpendMeter>>| {
            m.as_ref().map(|m| StageSpend {
                budget: m.budget(),
                spent: m.spent(),
                hosts: m
                    .by_host()
                    .into_iter()
                    .map(|(host, kind, spent)| HostSpend { host, kind, spent })
                    .collect(),
            })
        };
        let report = SpendReport {
            generate: stage(&self.generate),
            review: stage(&self.review),
        };
        (report.generate.is_some() || report.review.is_some()).then_some(report)
    }
}
