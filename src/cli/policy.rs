//! `kiln policy new | build | test | eval | inspect`: writing, testing and running policies.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use kiln::config::Config;
use kiln::policy::{
    Bundle, Decision, Gate, GateInput, GateResult, JobInfo, Mode, PolicyEngine, author,
};
use kiln::{Error, ExitCode};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Make a new policy crate from the template (with the SDK beside it).
    New {
        name: String,
        /// Folder to make it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a policy crate (or workspace) for wasm32, check it against the ABI, print the sha256 to pin.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a policy against its fixture cases (DIR/cases/*.json); exit 12 on any mismatch.
    Test {
        dir: PathBuf,
        /// Test this module instead of building DIR.
        #[arg(long)]
        module: Option<PathBuf>,
    },
    /// Judge a diff with a bundle; exits 0 allow, 13 review, 10 escalate, 11 deny.
    Eval {
        #[arg(long)]
        bundle: PathBuf,
        /// A unified diff file.
        #[arg(long, conflicts_with_all = ["repo", "base", "head"])]
        diff: Option<PathBuf>,
        /// A repository on this machine, with --base and --head.
        #[arg(long, requires_all = ["base", "head"])]
        repo: Option<PathBuf>,
        #[arg(long)]
        base: Option<String>,
        #[arg(long)]
        head: Option<String>,
        /// The job says its tests are fixed (test-integrity escalates any test change).
        #[arg(long)]
        tests_fixed: bool,
        /// A glob of the job's `[test] protect` (repeatable): test-integrity escalates changes to it.
        #[arg(long, value_name = "GLOB")]
        protect: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show a module's metadata, ABI version, imports, exports and sha256.
    Inspect {
        module: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Sarif,
}

pub fn exec(config: &Config, command: PolicyCommand) -> Result<ExitCode, Error> {
    let engine = PolicyEngine::new(kiln::policy::default_cache_dir())?;
    match command {
        PolicyCommand::New { name, dir } => {
            let made = author::new(&dir, &name)?;
            eprintln!(
                "made {}; next: kiln policy build {0} && kiln policy test {0}",
                made.display()
            );
            Ok(ExitCode::Success)
        }
        PolicyCommand::Build { dir } => {
            for built in author::build(&dir, &engine)? {
                println!(
                    "{}  {}  ({})",
                    built.sha256,
                    built.path.display(),
                    built.crate_name
                );
            }
            Ok(ExitCode::Success)
        }
        PolicyCommand::Test { dir, module } => test(&dir, module.as_deref(), &engine),
        PolicyCommand::Eval {
            bundle,
            diff,
            repo,
            base,
            head,
            tests_fixed,
            protect,
            format,
        } => {
            let source = match (diff, repo, base, head) {
                (Some(diff), None, None, None) => Source::Patch(diff),
                (None, Some(repo), Some(base), Some(head)) => {
                    Source::Revisions { repo, base, head }
                }
                _ => {
                    return Err(Error::Usage(
                        "give --diff FILE, or --repo R --base X --head Y".into(),
                    ));
                }
            };
            let job = JobInfo {
                id: "eval".into(),
                repo: String::new(),
                branch: String::new(),
                prompt: String::new(),
                tests_fixed,
                protect,
            };
            eval(&bundle, config, source, job, format, engine)
        }
        PolicyCommand::Inspect { module, json } => inspect(&module, json, &engine),
    }
}

enum Source {
    Patch(PathBuf),
    Revisions {
        repo: PathBuf,
        base: String,
        head: String,
    },
}

fn eval(
    bundle: &Path,
    config: &Config,
    source: Source,
    mut job: JobInfo,
    format: Format,
    engine: PolicyEngine,
) -> Result<ExitCode, Error> {
    let bundle = Bundle::load(bundle, config.policy.max_fuel)?;
    let (diff, repo) = match &source {
        Source::Patch(path) => {
            // A patch is as large as the gate reads, at most (its text is the budget's unit).
            let bytes = kiln::model::fs::read_bytes_capped(path, config.policy.max_diff.bytes())
                .map_err(Error::io(format!("cannot read {}", path.display())))?;
            let diff = kiln::workspace::parse_patch(&bytes).map_err(|e| {
                Error::Usage(format!(
                    "{} is not a unified diff: {}",
                    path.display(),
                    e.message()
                ))
            })?;
            (diff, path.display().to_string())
        }
        Source::Revisions { repo, base, head } => {
            let diff = kiln::workspace::diff_revisions(repo, base, head, config.policy.max_diff)
                .map_err(|e| {
                    Error::Usage(format!(
                        "cannot diff {base}..{head} in {}: {}",
                        repo.display(),
                        e.message()
                    ))
                })?;
            (diff, repo.display().to_string())
        }
    };
    job.repo = repo;
    let input = GateInput {
        job,
        diff: &diff,
        tests: Vec::new(),
        reviewer: None,
    };
    let result = Gate::new(engine, bundle).evaluate(&input);
    match format {
        Format::Json => super::print_json(&result)?,
        Format::Sarif => super::print_json(&kiln::policy::to_sarif(&result))?,
        Format::Text => print_text(&result),
    }
    Ok(gate_exit(result.decision))
}

/// The gate's exit code: 0 allow, 13 review (awaiting review), 10 escalate, 11 deny.
pub fn gate_exit(decision: Decision) -> ExitCode {
    match decision {
        Decision::Allow => ExitCode::Success,
        Decision::Review => ExitCode::AwaitingReview,
        Decision::Escalate => ExitCode::PolicyEscalate,
        Decision::Deny => ExitCode::PolicyDeny,
    }
}

pub fn print_text(result: &GateResult) {
    println!("decision: {}", result.decision.as_str());
    for policy in &result.policies {
        let mode = if policy.mode == Mode::Warn {
            " (warn only)"
        } else {
            ""
        };
        println!(
            "  {:<22} {:<9} {:>6} µs{mode}",
            policy.name,
            policy.decision.as_str(),
            policy.duration_us
        );
        for f in &policy.findings {
            let place = match (&f.path, f.line) {
                (Some(p), Some(l)) => format!("{p}:{l}: "),
                (Some(p), None) => format!("{p}: "),
                _ => String::new(),
            };
            println!("    {:?} {}: {place}{}", f.severity, f.rule, f.message);
        }
    }
    let merge = &result.auto_merge;
    if merge.eligible {
        println!("auto-merge: eligible");
    } else if !merge.allowed_by_bundle {
        println!("auto-merge: not allowed by the bundle");
    } else {
        let failed: Vec<String> = merge
            .failed_conditions
            .iter()
            .map(|c| format!("{c:?}"))
            .collect();
        println!("auto-merge: not eligible (failed: {})", failed.join(", "));
    }
    if let Some(e) = &result.escalation {
        println!(
            "escalation: {} {}",
            e.action,
            e.channel.as_deref().unwrap_or("")
        );
    }
}

fn test(dir: &Path, module: Option<&Path>, engine: &PolicyEngine) -> Result<ExitCode, Error> {
    let module = match module {
        Some(path) => path.to_path_buf(),
        None => {
            let built = author::build(dir, engine)?;
            match built.as_slice() {
                [one] => one.path.clone(),
                _ => {
                    return Err(Error::Usage(format!(
                        "{} built {} modules; name one with --module",
                        dir.display(),
                        built.len()
                    )));
                }
            }
        }
    };
    let bytes =
        std::fs::read(&module).map_err(Error::io(format!("cannot read {}", module.display())))?;
    let results = author::test(dir, &bytes, engine)?;
    let failed = results.iter().filter(|r| r.mismatch.is_some()).count();
    for r in &results {
        match &r.mismatch {
            None => println!("PASS {}", r.name),
            Some(diff) => println!("FAIL {}\n{diff}", r.name),
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::TestsFailed
    })
}

fn inspect(path: &Path, json: bool, engine: &PolicyEngine) -> Result<ExitCode, Error> {
    let bytes =
        std::fs::read(path).map_err(Error::io(format!("cannot read {}", path.display())))?;
    let refused = |e: kiln::policy::PolicyFailure| {
        Error::Usage(format!("{} is not a kiln policy: {e}", path.display()))
    };
    let policy = engine.load(&bytes).map_err(refused)?;
    let metadata = engine.metadata(&policy).map_err(refused)?;
    let report = serde_json::json!({
        "module": path.display().to_string(),
        "sha256": policy.sha256,
        "abi_version": policy.abi(),
        "name": metadata.name,
        "version": metadata.version,
        "description": metadata.description,
        "config_schema": metadata.config_schema,
        "imports": policy.imports(),
        "exports": policy.exports(),
    });
    if json {
        super::print_json(&report)?;
    } else {
        println!(
            "{} {} (ABI {})",
            metadata.name,
            metadata.version,
            policy.abi()
        );
        println!("  {}", metadata.description);
        println!("  sha256:  {}", policy.sha256);
        println!("  imports: {}", policy.imports().join(", "));
        println!("  exports: {}", policy.exports().join(", "));
        println!("  config:  {}", metadata.config_schema);
    }
    Ok(ExitCode::Success)
}
