//! The kiln command line: parse, call the library, map errors to the documented exit codes.

use std::path::PathBuf;
use std::process::ExitCode as ProcessExit;

use clap::{Parser, Subcommand, ValueEnum};
use kiln::config::Config;
use kiln::job::Job;
use kiln::run::{Progress, RunOptions};
use kiln::sandbox::Sandbox;
use kiln::{Error, ExitCode};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Run untrusted code-generation jobs in fresh, locked-down containers"
)]
struct Cli {
    /// Operator config (TOML); built-in defaults when absent.
    #[arg(long, global = true, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// How diagnostics are logged on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one job end to end: generate, test, retry, commit on the work branch.
    Run {
        /// The job file: TOML, or the seed article's JSON job record (.json).
        job: PathBuf,
        /// Also write the JSON report here (`-` for stdout).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Root folder for artifacts; the job's go in `<DIR>/<job id>/`. Default: operator config, `.kiln/jobs`.
        #[arg(long)]
        artifacts: Option<PathBuf>,
        /// Repository that receives the work branch (made bare if absent). Default: `<artifacts>/<id>/repo.git`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove what crashed runs left: kiln containers, volumes and workspaces whose kiln process is gone.
    Gc {
        /// Remove every kiln container, volume and workspace, even those of running jobs.
        #[arg(long)]
        all: bool,
    },
    /// Build and list the images kiln uses.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Benchmarks that print figures against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build images from the recipes in images/ (all of them when no name is given).
    Build {
        names: Vec<String>,
        /// Skip images that are already built from the current recipe.
        #[arg(long)]
        missing: bool,
    },
    /// Show kiln's images and whether each is current, stale or missing.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Per-container overhead of kiln's sandbox against bare `docker run --rm`.
    Overhead {
        #[arg(long, default_value_t = 30)]
        runs: usize,
        #[arg(long, default_value = kiln::images::BUSYBOX)]
        image: String,
    },
}

fn main() -> ProcessExit {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kiln: cannot start the async runtime: {e}");
            return ProcessExit::from(ExitCode::Infrastructure as u8);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e}");
            e.exit_code()
        }
    };
    ProcessExit::from(code as u8)
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Error> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    match cli.command {
        Command::Run {
            job,
            report,
            artifacts,
            out,
        } => run(&config, &job, report, artifacts, out).await,
        Command::Gc { all } => {
            let sandbox = Sandbox::connect().await?;
            let objects = sandbox.gc(all).await?;
            let workspaces = kiln::workspace::gc_workspaces(all)
                .map_err(Error::io("cannot clean workspaces"))?;
            eprintln!("removed {objects} containers and volumes, {workspaces} workspaces");
            Ok(ExitCode::Success)
        }
        Command::Image {
            command: ImageCommand::Build { names, missing },
        } => build_images(&names, missing).await,
        Command::Image {
            command: ImageCommand::List { json },
        } => {
            let sandbox = Sandbox::connect().await?;
            let rows = kiln::images::list(&sandbox).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows)
                        .map_err(|e| Error::Internal(e.to_string()))?
                );
            } else {
                println!(
                    "{:<10} {:<22} {:<8} {:<12} SIZE",
                    "NAME", "TAG", "STATE", "ID"
                );
                for r in rows {
                    let size = r
                        .size_bytes
                        .map(|b| format!("{:.1}MiB", b as f64 / 1048576.0))
                        .unwrap_or_default();
                    println!(
                        "{:<10} {:<22} {:<8} {:<12} {size}",
                        r.name,
                        r.tag,
                        r.state,
                        r.id.unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::Success)
        }
        Command::Bench {
            command: BenchCommand::Overhead { runs, image },
        } => {
            if runs < 2 {
                return Err(Error::Usage("--runs must be at least 2".into()));
            }
            let sandbox = Sandbox::connect().await?;
            sandbox.require_image(&image).await?;
            let figures = kiln::bench::overhead(&sandbox, &image, runs).await?;
            println!("per-container overhead, {runs} runs each, image {image}");
            for f in &figures {
                println!(
                    "  {:<50} p50 {:>7.1} ms   p95 {:>7.1} ms",
                    f.name,
                    ms(f.percentile(50.0)),
                    ms(f.percentile(95.0))
                );
            }
            let (kiln, bare) = (&figures[0], &figures[1]);
            println!(
                "ratio kiln/bare: p50 {:.2}   p95 {:.2}",
                ms(kiln.percentile(50.0)) / ms(bare.percentile(50.0)),
                ms(kiln.percentile(95.0)) / ms(bare.percentile(95.0))
            );
            Ok(ExitCode::Success)
        }
    }
}

/// Builds the named recipes (all when none is named); with `missing`, only those not current.
async fn build_images(names: &[String], missing: bool) -> Result<ExitCode, Error> {
    let recipes = if names.is_empty() {
        kiln::images::RECIPES.iter().collect()
    } else {
        names
            .iter()
            .map(|n| kiln::images::Recipe::find(n))
            .collect::<Result<Vec<_>, _>>()?
    };
    let sandbox = Sandbox::connect().await?;
    let current: Vec<&str> = if missing {
        let rows = kiln::images::list(&sandbox).await?;
        rows.into_iter()
            .filter(|r| r.state == "current")
            .map(|r| r.name)
            .collect()
    } else {
        Vec::new()
    };
    for recipe in recipes {
        if current.contains(&recipe.name) {
            eprintln!("  image {} is current", recipe.tag);
            continue;
        }
        let timer = Progress::default().start(format!("image {}", recipe.tag));
        kiln::images::build(&sandbox, recipe).await?;
        timer.done("built");
    }
    Ok(ExitCode::Success)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(
    config: &Config,
    job_path: &std::path::Path,
    report: Option<PathBuf>,
    artifacts: Option<PathBuf>,
    out: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    let job = Job::load(job_path, config)?;
    let progress = Progress::default();
    progress.line(&format!("job {}", job.id));
    let opts = RunOptions {
        artifacts_root: artifacts.unwrap_or_else(|| config.artifacts_dir.clone()),
        out,
    };
    let sandbox = Sandbox::connect().await?;
    kiln::run::preflight(&job, &sandbox, &opts).await?;

    let work = kiln::run::run_job(&job, config, &sandbox, &opts, progress);
    let outcome = tokio::select! {
        result = work => Some(result),
        () = interrupted() => None,
    };
    // Every path ends here: whatever the job left in Docker goes, whether it passed, failed or was cut short.
    if let Err(e) = sandbox.reap_job(&job.id).await {
        eprintln!("kiln: cleaning up job {}: {e}; run `kiln gc`", job.id);
    }
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
    if let Some(path) = report {
        if path.as_os_str() == "-" {
            println!(
                "{}",
                serde_json::to_string_pretty(&report_value)
                    .map_err(|e| Error::Internal(e.to_string()))?
            );
        } else {
            kiln::run::write_json(&path, &report_value)?;
        }
    }
    Ok(report_value.exit_code)
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
