//! `kiln run`: one job end to end, cleaned up on every path including Ctrl-C and SIGTERM.

use std::path::PathBuf;

use clap::Args;
use kiln::config::Config;
use kiln::job::Job;
use kiln::publish::Destination;
use kiln::run::{Context, Progress, RunOptions};
use kiln::sandbox::Sandbox;
use kiln::secrets::Redactor;
use kiln::{Error, ExitCode};

#[derive(Args)]
pub struct RunArgs {
    /// The job file: TOML, or the seed article's JSON job record (.json).
    job: PathBuf,
    /// Also write the JSON report here (`-` for stdout).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Root folder for artifacts; the job's go in `<DIR>/<job id>/`. Default: operator config, `.kiln/jobs`.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Where the work branch is published: a repository path (made bare if absent) or a URL
    /// pushed to with the operator's [publish] credentials. Default: `<artifacts>/<id>/repo.git`.
    #[arg(long)]
    out: Option<String>,
    /// Policy bundle to judge the passing change with; only an `allow` publishes the branch.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Write the gate's findings as SARIF 2.1.0 here (no results when the gate did not run).
    #[arg(long, requires = "policies")]
    sarif: Option<PathBuf>,
}

pub async fn exec(config: &Config, args: RunArgs) -> Result<ExitCode, Error> {
    run(config, args).await
}

async fn run(config: &Config, args: RunArgs) -> Result<ExitCode, Error> {
    let RunArgs {
        job: job_path,
        report,
        artifacts,
        out,
        policies,
        sarif,
    } = args;
    kiln::workspace::warm_up();
    let ctx = Context::open(config.clone())?;
    let job = Job::load(&job_path, config, &ctx.secrets)?;
    // The bundle and its pins are checked, and its modules compiled, before anything runs.
    let gate = super::load_gate(policies.as_deref(), config)?;
    let progress = Progress::default();
    progress.line(&format!("job {}", job.id));
    let opts = RunOptions {
        artifacts_root: artifacts.unwrap_or_else(|| config.artifacts_dir.clone()),
        out: out.map(|o| Destination::parse(&o)),
        holds: None,
        trace_parent: trace_parent_from_env(),
    };
    let sandbox = Sandbox::connect().await?;
    // The workspace volumes (and their holder container) are made while preflight and the
    // clone go on, not in front of the generator.
    let prepared = {
        let (sandbox, size) = (sandbox.clone(), job.limits.workspace);
        tokio::spawn(async move { sandbox.prepare_volumes(size).await })
    };
    let outcome = match kiln::run::preflight(&job, &ctx, &sandbox, &opts).await {
        Err(e) => Some(Err(e)),
        Ok(()) => {
            let work = kiln::run::run_job(&job, &ctx, &sandbox, &opts, gate, progress.clone());
            tokio::select! {
                result = work => Some(result),
                () = interrupted() => None,
            }
        }
    };
    // Made or not, the volumes made ahead are settled before the spares are removed.
    if let Ok(Err(e)) = prepared.await {
        tracing::debug!("volumes made ahead: {e}");
    }
    // Every path ends here: whatever the job left in Docker goes, whether it passed, failed or
    // was cut short. What its stages handed over for removal goes first.
    sandbox.swept().await;
    if let Err(e) = sandbox.reap_job(&job.id).await {
        eprintln!("kiln: cleaning up job {}: {e}; run `kiln gc`", job.id);
    }
    sandbox.release_spare_volumes().await;
    let Some(result) = outcome else {
        eprintln!(
            "kiln: interrupted; job {} stopped and its containers removed",
            job.id
        );
        return Ok(ExitCode::Interrupted);
    };
    let report_value = result?;
    progress.line(&format!(
        "{}: {}\nartifacts: {}",
        report_value.status.as_str(),
        report_value.reason,
        report_value.artifacts
    ));
    let redactor = ctx.redactor();
    if let Some(path) = sarif {
        let sarif = match &report_value.gate {
            Some(result) => kiln::policy::to_sarif(result),
            None => kiln::policy::empty_sarif(),
        };
        write_json(redactor, &path, &sarif)?;
    }
    if let Some(path) = report {
        if path.as_os_str() == "-" {
            println!("{}", redactor.json(&report_value).map_err(Error::Json)?);
        } else {
            write_json(redactor, &path, &report_value)?;
        }
    }
    Ok(report_value.exit_code)
}

/// Writes `value` as pretty JSON to `path` (a file the caller named), secrets hidden.
fn write_json(
    redactor: &Redactor,
    path: &std::path::Path,
    value: &impl serde::Serialize,
) -> Result<(), Error> {
    let text = redactor.json(value).map_err(Error::Json)? + "\n";
    std::fs::write(path, text).map_err(Error::io(format!("cannot write {}", path.display())))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The caller's trace from `TRACEPARENT` (as CI systems that trace their steps set it); a
/// malformed one is ignored with a warning, as W3C trace context says.
pub fn trace_parent_from_env() -> Option<kiln::model::TraceParent> {
    let value = std::env::var("TRACEPARENT").ok()?;
    match value.parse() {
        Ok(parent) => Some(parent),
        Err(e) => {
            eprintln!("kiln: TRACEPARENT ignored: {e}");
            None
        }
    }
}
