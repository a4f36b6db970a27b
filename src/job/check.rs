//! A job file checked against the operator config: every field valid, every default filled in,
//! every loosening, network host, secret and merge target one the operator permits.

use std::path::Path;
use std::time::Duration;

use super::file::{JobFile, LimitsFile, NetworkMode, SandboxFile};
use super::source::{repo_source, resolve};
use super::{Agent, BranchName, Job, MAX_PROMPT_BYTES, SecretCheck, SeedFields, agent};
use crate::config::{Config, Loosening};
use crate::model::fs::read_capped;
use crate::model::{Globs, Host, Invalid, JobId, Limits, StageSpec};

type FieldError = (&'static str, String);

impl JobFile {
    pub(super) fn check(
        self,
        dir: Option<&Path>,
        config: &Config,
        secrets: &dyn SecretCheck,
        seed: Option<SeedFields>,
    ) -> Result<Job, FieldError> {
        let repo = repo_source(&self.repo, dir).map_err(|m| ("repo", m))?;
        if let Some(base) = &self.base
            && (base.is_empty() || base.starts_with('-') || base.chars().any(char::is_control))
        {
            return Err((
                "base",
                format!("`{}` is not a branch, tag or commit", base.escape_debug()),
            ));
        }
        let branch = BranchName::parse(
            &self.branch,
            &config.branch_prefix,
            &config.protected_branches,
        )
        .map_err(|e| ("branch", e.to_string()))?;
        let prompt = match (self.prompt, self.prompt_file) {
            (Some(p), None) => p,
            // A submitted job (no folder of its own) could name any file the server can read.
            (None, Some(_)) if dir.is_none() => {
                return Err((
                    "prompt_file",
                    "is not accepted in a submitted job: give the prompt inline".into(),
                ));
            }
            (None, Some(file)) => {
                let file = resolve(dir, &file).map_err(|m| ("prompt_file", m))?;
                read_capped(&file, MAX_PROMPT_BYTES).map_err(|e| {
                    (
                        "prompt_file",
                        format!("cannot be read from {}: {e}", file.display()),
                    )
                })?
            }
            (Some(_), Some(_)) => {
                return Err(("prompt", "and `prompt_file` are both set; keep one".into()));
            }
            (None, None) => {
                return Err(("prompt", "is missing; set `prompt` or `prompt_file`".into()));
            }
        };
        if prompt.trim().is_empty() {
            return Err(("prompt", "is empty".into()));
        }
        let context_files = Globs::new(self.context_files).map_err(|m| ("context_files", m.0))?;
        let touches = if self.touches.is_empty() {
            context_files.clone()
        } else {
            Globs::new(self.touches).map_err(|m| ("touches", m.0))?
        };
        let priority = self
            .priority
            .or(seed.as_ref().and_then(|s| s.priority))
            .unwrap_or(5);
        if !(0..=9).contains(&priority) {
            return Err((
                "priority",
                format!("is {priority}; it must be 0 (soonest) to 9"),
            ));
        }
        let mut generate = stage(self.generate, &config.defaults.generate, "generate")?;
        let test = stage(self.test, &config.defaults.test, "test")?;
        if test.budget.is_some() {
            return Err((
                "test.budget",
                "belongs in [generate] or [review]: the tests make no model calls kiln counts"
                    .into(),
            ));
        }
        if !generate.protect.is_empty() {
            return Err((
                "generate.protect",
                "belongs in [test]: it names what the tests run with".into(),
            ));
        }
        let protect = Globs::new(test.protect.clone()).map_err(|m| ("test.protect", m.0))?;
        for (field, spec) in [("generate.network", &generate), ("test.network", &test)] {
            check_network(spec, config, secrets).map_err(|m| (field, m))?;
        }
        budget(&mut generate, config).map_err(|m| ("generate.budget", m))?;
        let mut review = match self.review {
            Some(spec) => Some(stage(Some(spec), &None, "review")?),
            None => None,
        };
        if let Some(review) = &mut review {
            check_network(review, config, secrets).map_err(|m| ("review.network", m))?;
            budget(review, config).map_err(|m| ("review.budget", m))?;
        }
        if review.as_ref().is_some_and(|r| !r.protect.is_empty()) {
            return Err((
                "review.protect",
                "belongs in [test]: it names what the tests run with".into(),
            ));
        }
        if let Some(merge) = &self.merge
            && !config.publish.merge_targets.contains(&merge.target)
        {
            return Err((
                "merge.target",
                format!(
                    "is `{}`, which the operator config does not list in [publish] merge_targets ({})",
                    merge.target.escape_debug(),
                    config.publish.merge_targets.join(", ")
                ),
            ));
        }
        let limits = merge_limits(self.limits.unwrap_or_default(), &config.limits)?;
        limits.check().map_err(|m| ("limits", m.0))?;
        let max_attempts = self.retry.max_attempts.unwrap_or(config.max_attempts);
        if max_attempts == 0 || max_attempts > config.max_attempts {
            return Err((
                "retry.max_attempts",
                format!(
                    "is {max_attempts}; it must be between 1 and {} (the operator's cap)",
                    config.max_attempts
                ),
            ));
        }
        let loosened = loosenings(&self.sandbox);
        if let Some(denied) = loosened
            .iter()
            .find(|l| !config.permit_loosening.contains(l))
        {
            return Err((
                "sandbox",
                format!(
                    "asks to loosen `{denied:?}`, which the operator config does not permit (permit_loosening)"
                ),
            ));
        }
        let budget = self
            .context
            .budget
            .unwrap_or(crate::model::ByteSize::kib(64));
        if !(crate::model::ByteSize::kib(1)..=crate::model::ByteSize::mib(16)).contains(&budget) {
            return Err((
                "context",
                format!("budget is {budget}; it must be between 1KiB and 16MiB"),
            ));
        }
        let seeds = match self.context.seeds {
            Some(seeds) => Globs::new(seeds).map_err(|m| ("context", m.0))?,
            None => context_files.clone(),
        };
        let context = super::ContextSpec {
            mode: self.context.mode.unwrap_or_default(),
            budget,
            seeds,
        };
        Ok(Job {
            id: JobId::new(),
            repo,
            base: self.base,
            branch,
            prompt,
            context_files,
            test_requirements: self.test_requirements,
            tests_fixed: self.tests_fixed,
            protect,
            priority,
            touches,
            generate,
            test,
            review,
            merge: self.merge,
            limits,
            max_attempts,
            sandbox: self.sandbox,
            loosened,
            seed,
            context,
        })
    }
}

fn stage(
    given: Option<StageSpec>,
    default: &Option<StageSpec>,
    name: &'static str,
) -> Result<StageSpec, FieldError> {
    let mut spec = given.or_else(|| default.clone()).ok_or((
        name,
        "is missing, and the operator config has no default for it".to_string(),
    ))?;
    if spec.agent != Agent::Command && name != "generate" {
        return Err((name, "has an `agent`; agents belong in [generate]".into()));
    }
    agent::apply(&mut spec).map_err(|m| (name, m))?;
    if spec.image.trim().is_empty() {
        return Err((name, "has an empty `image`".into()));
    }
    if spec.command.is_empty() || spec.command[0].is_empty() {
        return Err((
            name,
            "has an empty `command`; give the argv as a list".into(),
        ));
    }
    if spec.timeout.is_zero() || spec.timeout > Duration::from_secs(24 * 3600) {
        return Err((name, "timeout must be more than 0 and at most 24h".into()));
    }
    Ok(spec)
}

/// Checks a stage, limits and loosenings kept from an earlier check (an escalation's merge re-test)
/// against the operator config as it is now: the config may have tightened since.
pub fn recheck_stage(
    config: &Config,
    spec: &StageSpec,
    limits: &Limits,
    loosened: &[Loosening],
    secrets: &dyn SecretCheck,
) -> Result<(), Invalid> {
    let fail = |(field, message): FieldError| Invalid(format!("`{field}` {message}"));
    let asked = LimitsFile {
        memory: Some(limits.memory),
        cpus: Some(limits.cpus),
        pids: Some(limits.pids),
        workspace: Some(limits.workspace),
        tmp: Some(limits.tmp),
        output: Some(limits.output),
    };
    merge_limits(asked, &config.limits).map_err(fail)?;
    if let Some(denied) = loosened
        .iter()
        .find(|l| !config.permit_loosening.contains(l))
    {
        return Err(Invalid(format!(
            "`sandbox` loosens `{denied:?}`, which the operator config no longer permits"
        )));
    }
    stage(Some(spec.clone()), &None, "test").map_err(fail)?;
    check_network(spec, config, secrets).map_err(|m| fail(("test.network", m)))
}

/// The job's limits: each one it sets, if at most the operator's (the operator's `[limits]` are
/// both the defaults and the ceilings), else the operator's.
fn merge_limits(file: LimitsFile, ceiling: &Limits) -> Result<Limits, FieldError> {
    fn capped<T: PartialOrd + std::fmt::Display + Copy>(
        field: &'static str,
        asked: Option<T>,
        ceiling: T,
    ) -> Result<T, FieldError> {
        match asked {
            Some(asked) if asked > ceiling => Err((
                field,
                format!(
                    "is {asked}, over the operator's ceiling of {ceiling} ([limits] in the operator config)"
                ),
            )),
            Some(asked) => Ok(asked),
            None => Ok(ceiling),
        }
    }
    Ok(Limits {
        memory: capped("limits.memory", file.memory, ceiling.memory)?,
        cpus: capped("limits.cpus", file.cpus, ceiling.cpus)?,
        pids: capped("limits.pids", file.pids, ceiling.pids)?,
        workspace: capped("limits.workspace", file.workspace, ceiling.workspace)?,
        tmp: capped("limits.tmp", file.tmp, ceiling.tmp)?,
        output: capped("limits.output", file.output, ceiling.output)?,
    })
}

fn loosenings(sandbox: &SandboxFile) -> Vec<Loosening> {
    let mut loosened = Vec::new();
    if sandbox.network == NetworkMode::Bridge {
        loosened.push(Loosening::Network);
    }
    if sandbox.writable_rootfs {
        loosened.push(Loosening::WritableRootfs);
    }
    if sandbox.root_user {
        loosened.push(Loosening::RootUser);
    }
    loosened
}

/// Settles a stage's budget: the job's own (at most the operator's ceiling), each field it
/// leaves out from the operator's default; none when nothing limits it. A budget is counted in
/// the tunnels kiln opens to add a model API's key, so every model host the stage may reach
/// must have its key bound (`secrets`): otherwise its calls could not be counted.
fn budget(spec: &mut StageSpec, config: &Config) -> Result<(), String> {
    let asked = spec.budget.unwrap_or_default();
    asked
        .check(&config.egress.budget_ceiling)
        .map_err(|e| e.0)?;
    let budget = asked.or(config.egress.budget);
    if budget.is_unlimited() {
        spec.budget = None;
        return Ok(());
    }
    if config.egress.models.is_empty() {
        return Err(
            "the operator config lists no model host ([egress.models]) whose spend kiln could count"
                .into(),
        );
    }
    if let Some(network) = &spec.network {
        for allow in &network.allow {
            let Host::Name(host) = &allow.host else {
                continue;
            };
            let keyed = network.secrets.iter().any(|name| {
                config
                    .secrets
                    .get(name)
                    .is_some_and(|s| s.hosts.contains(host))
            });
            if config.egress.models.contains_key(host) && !keyed {
                return Err(format!(
                    "`{host}` is a model host, and a budget is counted only where kiln adds its \
                     key: bind the key with `secrets` (or leave the host out)"
                ));
            }
        }
    }
    spec.budget = Some(budget);
    Ok(())
}

/// An allowlist names at least one `host:port`, each one the operator permits (`[egress]
/// permit`); `[x.network]` left out means no network. Each secret is one the operator
/// configured, readable now, and bound to a host on the allowlist.
fn check_network(
    spec: &StageSpec,
    config: &Config,
    secrets: &dyn SecretCheck,
) -> Result<(), String> {
    let Some(network) = &spec.network else {
        return Ok(());
    };
    if network.allow.is_empty() {
        return Err("`allow` is empty; leave the table out for no network".into());
    }
    let permitted = &config.egress.permit;
    if let Some(denied) = network.allow.iter().find(|a| !permitted.contains(a)) {
        return Err(format!(
            "`{}` is not among the hosts the operator config permits ([egress] permit)",
            denied
        ));
    }
    for name in &network.secrets {
        let source = config
            .secrets
            .get(name)
            .ok_or_else(|| format!("secret `{name}` is not in the operator config's [secrets]"))?;
        secrets.readable(name).map_err(|e| e.to_string())?;
        let reachable = network
            .allow
            .iter()
            .any(|a| matches!(&a.host, Host::Name(h) if source.hosts.contains(h)));
        if !reachable {
            return Err(format!(
                "secret `{name}` is for {}, none of which is on `allow`",
                source.hosts.join(", ")
            ));
        }
    }
    Ok(())
}
