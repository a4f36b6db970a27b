//! `kiln serve`: the job server (HTTP API, durable queue, scheduler).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kiln::config::Config;
use kiln::serve::ServeOptions;
use kiln::{Error, ExitCode};

#[derive(Args)]
pub struct ServeArgs {
    /// The address to listen on; loopback unless you mean otherwise.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Jobs running at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Jobs running at once on one repository.
    #[arg(long, default_value_t = 1)]
    per_repo: usize,
    /// Each full interval a job waits makes it one priority level more urgent.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    aging: Duration,
    /// Policy bundle every job's passing change is judged with.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Where every job's work branch is published and merged: a repository path or a URL pushed
    /// to with the operator's [publish] credentials. Default: each job's own repo.git under the
    /// state folder. A request never chooses it.
    #[arg(long)]
    out: Option<String>,
    /// A folder whose repositories (at any depth) jobs may name as their `repo`; repeat for
    /// more. A job naming anything else is refused with 403; with none, every job is.
    #[arg(long = "repos", value_name = "ROOT")]
    repos: Vec<PathBuf>,
    /// On SIGTERM or SIGINT: how long running jobs get to end before they are stopped and handed
    /// back to the queue (they run again at the next start). Everything the server made in
    /// Docker is removed before it exits.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    #[command(flatten)]
    store: super::store::StoreArgs,
    /// With a shared store: how long a running job's lease lasts without this server's
    /// heartbeat (a server that dies loses its jobs to the others after it). Default: the
    /// config's [store] lease (30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// The bearer token's file (at least 32 characters), the same for every server of one
    /// store. Default: the state folder's `token`, made once.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Where the other servers of a shared store reach this one's API (they pass on a running
    /// job's live log from it), e.g. http://10.0.0.5:7878. Default: the listening address.
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

/// The state folder a server uses when none is given.
pub fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("kiln"))
}

/// Serves with the state folder `state_dir` (the global `--state-dir`): where the store, token,
/// address, audit log and job artifacts live.
pub async fn exec(
    config: &Config,
    state_dir: Option<PathBuf>,
    args: ServeArgs,
) -> Result<ExitCode, Error> {
    let state_dir = state_dir
        .or_else(default_state_dir)
        .ok_or_else(|| Error::Usage("give --state-dir (no HOME to default from)".into()))?;
    if args.concurrency == 0 || args.per_repo == 0 {
        return Err(Error::Usage(
            "--concurrency and --per-repo must be at least 1".into(),
        ));
    }
    let gate = super::load_gate(args.policies.as_deref(), config)?;
    let repos = args
        .repos
        .iter()
        .map(|root| {
            std::fs::canonicalize(root)
                .map_err(|e| Error::Usage(format!("--repos {}: {e}", root.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if repos.is_empty() {
        tracing::warn!("no --repos given: every submitted job will be refused");
    }
    let store = args.store.location(config, &state_dir.join("kiln.db"))?;
    let lease = args.lease.unwrap_or(config.store.lease);
    if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&lease) {
        return Err(Error::Usage("--lease: must be between 2s and 1h".into()));
    }
    let options = ServeOptions {
        state_dir,
        listen: args.listen,
        limits: kiln::scheduler::Limits {
            global: args.concurrency,
            per_repo: args.per_repo,
            aging: args.aging,
        },
        out: args.out.as_deref().map(kiln::publish::Destination::parse),
        repos,
        grace: args.grace,
        store,
        lease,
        token_file: args.token_file,
        advertise: args.advertise,
    };
    kiln::serve::serve(options, config.clone(), gate).await?;
    Ok(ExitCode::Success)
}
