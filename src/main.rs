//! The kiln command line: parse, call the library, map errors to the documented exit codes.
//! Each subcommand is one file under `cli/`.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode as ProcessExit;

use clap::{Parser, Subcommand, ValueEnum};
use kiln::config::Config;
use kiln::telemetry::Telemetry;
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
    #[command(flatten)]
    remote: cli::client::Remote,
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
    /// Run one job end to end: generate, test, retry, judge, commit on the work branch.
    Run(cli::run::RunArgs),
    /// Remove what crashed runs left: kiln containers, volumes and workspaces whose kiln process is gone.
    Gc(cli::gc::GcArgs),
    /// Build and list the images kiln uses.
    Image {
        #[command(subcommand)]
        command: cli::image::ImageCommand,
    },
    /// Write, build, test, inspect and evaluate policies.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// The files of a repository a request needs, most useful first, with why, within a budget.
    Context(cli::context::ContextArgs),
    /// The child `kiln context` parses in, under limits: sources on stdin, what they say on stdout.
    #[command(name = "__parse", hide = true)]
    Parse,
    /// Escalated jobs waiting for a human: list them, show one.
    Escalations {
        #[command(subcommand)]
        command: cli::escalations::EscalationsCommand,
    },
    /// Approve an escalated job: its tested change is published on its work branch.
    Approve(cli::escalations::ApproveArgs),
    /// Reject an escalated job: nothing is published; exits 11.
    Reject(cli::escalations::RejectArgs),
    /// Serve the HTTP API: a durable queue and a scheduler running many jobs.
    Serve(cli::serve::ServeArgs),
    /// Talk to `kiln serve`: submit, status, list, cancel, logs, wait.
    #[command(flatten)]
    Client(cli::client::ClientCommand),
    /// The job store of `kiln serve`: set up or upgrade its schema.
    Store {
        #[command(subcommand)]
        command: cli::store::StoreCommand,
    },
    /// The audit log: check its hash chain.
    Audit {
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// Benchmarks that print figures against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
}

fn main() -> ProcessExit {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => Config::load(path).map_err(Error::from),
        None => Ok(Config::default()),
    };
    // Only the commands that run jobs make spans; the others start no exporter.
    let traced = matches!(
        cli.command,
        Command::Run(_) | Command::Serve(_) | Command::Approve(_)
    );
    let telemetry = match &config {
        Ok(config) if traced => Telemetry::start(&config.telemetry),
        _ => Ok(None),
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("kiln: {e}");
            return ProcessExit::from(ExitCode::Invalid as u8);
        }
    };
    init_logging(cli.log_format, telemetry.as_ref());
    let code = match config.and_then(|config| run(cli, config)) {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            e.exit_code()
        }
    };
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    ProcessExit::from(code as u8)
}

/// Runs the command on an async runtime, which is gone when this returns (the exporter's last
/// spans are sent outside it).
fn run(cli: Cli, config: Config) -> Result<ExitCode, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::io("cannot start the async runtime"))?;
    runtime.block_on(dispatch(cli, config))
}

/// Prints `e` and, as cargo does, each cause under it once: a cause whose text the line above
/// already carries is not repeated.
fn report_error(e: &Error) {
    let mut shown = e.to_string();
    eprintln!("kiln: {shown}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !shown.contains(&text) {
            eprintln!("Caused by: {text}");
        }
        shown = text;
        cause = c.source();
    }
}

/// Diagnostics on stderr, filtered by `KILN_LOG` (default `warn`); with telemetry, kiln's spans
/// also go to the exporter, whatever the filter.
fn init_logging(format: LogFormat, telemetry: Option<&Telemetry>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "warn".into());
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .with(telemetry.map(Telemetry::layer))
        .init();
}

async fn dispatch(cli: Cli, config: Config) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Run(args) => cli::run::exec(&config, args).await,
        Command::Gc(args) => cli::gc::exec(args).await,
        Command::Context(args) => cli::context::exec(args).await,
        Command::Parse => kiln::context::parse::serve_child()
            .map(|()| ExitCode::Success)
            .map_err(Error::io("the parse child")),
        Command::Image { command } => cli::image::exec(command).await,
        Command::Policy { command } => {
            tokio::task::block_in_place(|| cli::policy::exec(&config, command))
        }
        Command::Escalations { command } => cli::escalations::exec(&config, command),
        Command::Approve(args) => cli::escalations::approve(&config, args).await,
        Command::Reject(args) => cli::escalations::reject(&config, args).await,
        Command::Audit { command } => cli::audit::exec(&config, command),
        Command::Store { command } => {
            cli::store::exec(&config, cli.remote.state_dir.clone(), command)
        }
        Command::Serve(args) => cli::serve::exec(&config, cli.remote.state_dir.clone(), args).await,
        Command::Client(command) => cli::client::exec(&cli.remote, command).await,
        Command::Bench { command } => cli::bench::exec(command).await,
    }
}
