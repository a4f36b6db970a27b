//! `kiln bench`: benchmarks that print figures against a baseline measured in the same run.

use std::time::Duration;

use clap::Subcommand;
use kiln::sandbox::Sandbox;
use kiln::{Error, ExitCode};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Per-container overhead of kiln's sandbox against bare `docker run --rm`.
    Overhead {
        #[arg(long, default_value_t = 30)]
        runs: usize,
        #[arg(long, default_value = kiln::images::BUSYBOX)]
        image: String,
        /// Also measure under this runtime registered with dockerd (`runsc`), interleaved with
        /// the engine's default; repeatable.
        #[arg(long = "runtime", value_name = "NAME")]
        runtimes: Vec<String>,
    },
    /// A whole trivial job through `kiln run` against two bare `docker run` of the same
    /// commands, interleaved.
    Job {
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// The policy gate: a bundle over a 10,000-line diff across 200 files, warm and cold.
    Policy {
        #[arg(long, default_value_t = 200)]
        runs: usize,
        #[arg(long, default_value = "policies/bundles/default.toml")]
        bundle: std::path::PathBuf,
    },
    /// Trivial jobs through kiln serve against an xargs -P2 loop of docker run; server memory
    /// with many jobs queued. With --store, the same jobs through a server on that shared
    /// PostgreSQL (an empty database; it is migrated), and the claim latency of each store with
    /// 10,000 jobs queued.
    Serve {
        #[arg(long, default_value_t = 200)]
        jobs: usize,
        #[arg(long, default_value_t = 1000)]
        queued: usize,
        /// A PostgreSQL to measure against SQLite: postgres://USER@HOST[:PORT]/DB.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Context selection on real history: recall and precision of kiln's pick against BM25's
    /// and the top source folder's, at each commit's parent with its message as the prompt.
    Context {
        /// A git repository on this machine (a clone, or a bare one). Repeatable.
        #[arg(long = "repo", required = true)]
        repos: Vec<std::path::PathBuf>,
        #[arg(long, default_value_t = 30)]
        commits: usize,
        #[arg(long, default_value = "64KiB")]
        budget: kiln::model::ByteSize,
    },
    /// Small HTTP requests through the egress proxy against the same requests direct, on loopback.
    Egress {
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
}

pub async fn exec(command: BenchCommand) -> Result<ExitCode, Error> {
    match command {
        BenchCommand::Overhead {
            runs,
            image,
            runtimes,
        } => overhead(runs, &image, runtimes).await,
        BenchCommand::Job { runs } => tokio::task::block_in_place(|| super::bench_job::exec(runs)),
        BenchCommand::Policy { runs, bundle } => {
            tokio::task::block_in_place(|| policy(runs, &bundle))
        }
        BenchCommand::Serve {
            jobs,
            queued,
            store,
        } => super::bench_serve::exec(jobs, queued, store).await,
        BenchCommand::Egress { requests } => egress(requests).await,
        BenchCommand::Context {
            repos,
            commits,
            budget,
        } => tokio::task::block_in_place(|| context(&repos, commits, budget)),
    }
}

fn context(
    repos: &[std::path::PathBuf],
    commits: usize,
    budget: kiln::model::ByteSize,
) -> Result<ExitCode, Error> {
    if commits == 0 {
        return Err(Error::Usage("--commits must be at least 1".into()));
    }
    let parser = std::env::current_exe().map_err(Error::io("cannot find the kiln binary"))?;
    println!("context selection at each commit's parent, the message as prompt, budget {budget}");
    println!(
        "{:<34} {:>7} {:>7}  {:>14} {:>14} {:>14} {:>14} {:>14}   {:>8} {:>8} {:>8} {:>8}",
        "repository",
        "files",
        "commits",
        "kiln R/P",
        "BM25 R/P",
        "folder R/P",
        "kiln+seed R/P",
        "BM25+seed R/P",
        "cold ms",
        "cached ms",
        "warm ms",
        "grep ms"
    );
    let (mut kiln_recall, mut bm25_recall, mut seeded_recall, mut n) = (0.0, 0.0, 0.0, 0.0);
    for repo in repos {
        let f = kiln::bench::context(repo, commits, budget, &parser)?;
        let rp = |s: &kiln::bench::Scores| {
            let (r, p, _) = s.mean();
            format!("{r:.2}/{p:.2}")
        };
        let name = repo.display().to_string();
        let name = if name.len() > 34 {
            name[name.len() - 34..].to_string()
        } else {
            name
        };
        println!(
            "{:<34} {:>7} {:>7}  {:>14} {:>14} {:>14} {:>14} {:>14}   {:>8.1} {:>8.1} {:>8.2} {:>8.1}",
            name,
            f.files,
            f.commits,
            rp(&f.kiln),
            rp(&f.bm25),
            rp(&f.folder),
            rp(&f.kiln_seeded),
            rp(&f.bm25_seeded),
            ms(f.cold),
            ms(f.cached),
            ms(f.warm),
            ms(f.grep)
        );
        kiln_recall += f.kiln.mean().0;
        bm25_recall += f.bm25.mean().0;
        seeded_recall += f.kiln_seeded.mean().0;
        n += 1.0;
    }
    // A ratio over a baseline that found nothing says nothing.
    let ratio = if bm25_recall > 0.0 {
        format!("{:.2}", kiln_recall / bm25_recall)
    } else {
        "n/a (BM25 found none)".into()
    };
    println!(
        "mean recall: kiln {:.2}, BM25 {:.2}, ratio kiln/BM25 {ratio}; kiln with one seed {:.2}",
        kiln_recall / n,
        bm25_recall / n,
        seeded_recall / n
    );
    Ok(ExitCode::Success)
}

async fn egress(requests: usize) -> Result<ExitCode, Error> {
    if requests < 2 {
        return Err(Error::Usage("--requests must be at least 2".into()));
    }
    let f = kiln::bench::egress(requests).await?;
    println!("{requests} small requests on loopback, a new connection each, interleaved");
    println!("plain HTTP:");
    print_pair(&f.plain, requests);
    println!("HTTPS to a host a secret is bound to (a new handshake each; the proxy's is two):");
    print_pair(&f.opened, requests);
    Ok(ExitCode::Success)
}

fn print_pair(pair: &kiln::bench::Pair, requests: usize) {
    for figures in [&pair.direct, &pair.proxied] {
        println!(
            "  {:<30} p50 {:>7.3} ms   p99 {:>7.3} ms",
            figures.name,
            ms(figures.percentile(50.0)),
            ms(figures.percentile(99.0))
        );
    }
    println!(
        "  added by the proxy: p50 {:.3} ms   p99 {:.3} ms",
        ms(pair.proxied.percentile(50.0)) - ms(pair.direct.percentile(50.0)),
        ms(pair.proxied.percentile(99.0)) - ms(pair.direct.percentile(99.0))
    );
    println!(
        "  throughput: direct {:.0} req/s, proxied {:.0} req/s, ratio proxied/direct {:.2}",
        requests as f64 / pair.direct_total.as_secs_f64(),
        requests as f64 / pair.proxied_total.as_secs_f64(),
        pair.direct_total.as_secs_f64() / pair.proxied_total.as_secs_f64()
    );
}

async fn overhead(runs: usize, image: &str, extra: Vec<String>) -> Result<ExitCode, Error> {
    if runs < 2 {
        return Err(Error::Usage("--runs must be at least 2".into()));
    }
    let sandbox = Sandbox::connect().await?;
    sandbox.require_image(image).await?;
    sandbox.require_confinement(&[]).await?;
    let mut runtimes = vec![None];
    for name in &extra {
        runtimes.push(Some(sandbox.runtime(name).await?));
    }
    let figures = kiln::bench::overhead(&sandbox, image, runs, &runtimes).await?;
    println!("per-container overhead, {runs} runs each, image {image}");
    let default_p50 = ms(figures[0].kiln.percentile(50.0));
    for runtime in &figures {
        let name = runtime
            .runtime
            .as_ref()
            .map_or("engine default (runc)", |r| r.name.as_str());
        println!("runtime {name}:");
        for f in [&runtime.kiln, &runtime.bare, &runtime.with_volume] {
            println!(
                "  {:<50} p50 {:>7.1} ms   p95 {:>7.1} ms",
                f.name,
                ms(f.percentile(50.0)),
                ms(f.percentile(95.0))
            );
        }
        let (kiln, bare) = (&runtime.kiln, &runtime.bare);
        println!(
            "  ratio kiln/bare: p50 {:.2}   p95 {:.2}",
            ms(kiln.percentile(50.0)) / ms(bare.percentile(50.0)),
            ms(kiln.percentile(95.0)) / ms(bare.percentile(95.0))
        );
        for f in [&runtime.start_kiln, &runtime.start_bare] {
            println!(
                "  {:<50} p50 {:>7.1} ms   p95 {:>7.1} ms",
                f.name,
                ms(f.percentile(50.0)),
                ms(f.percentile(95.0))
            );
        }
        let (made_ahead, run) = (&runtime.start_kiln, &runtime.start_bare);
        println!(
            "  ratio stage start kiln/docker run: p50 {:.2}   p95 {:.2}",
            ms(made_ahead.percentile(50.0)) / ms(run.percentile(50.0)),
            ms(made_ahead.percentile(95.0)) / ms(run.percentile(95.0))
        );
        if runtime.runtime.is_some() {
            println!(
                "  kiln under {name} / kiln under the default: p50 {:.2}",
                ms(kiln.percentile(50.0)) / default_p50
            );
        }
    }
    Ok(ExitCode::Success)
}

fn policy(runs: usize, bundle: &std::path::Path) -> Result<ExitCode, Error> {
    if runs < 2 {
        return Err(Error::Usage("--runs must be at least 2".into()));
    }
    let f = kiln::bench::policy_gate(bundle, runs)?;
    println!(
        "policy gate, bundle {}, input {} KiB (200 files, 10,000 added lines)",
        bundle.display(),
        f.input_bytes / 1024
    );
    for figures in [&f.warm, &f.parse, &f.cold_compiled, &f.cold_cached] {
        println!(
            "  {:<46} p50 {:>8.2} ms   p99 {:>8.2} ms   ({} runs)",
            figures.name,
            ms(figures.percentile(50.0)),
            ms(figures.percentile(99.0)),
            figures.samples.len()
        );
    }
    let per_policy: Vec<String> = f
        .per_policy
        .iter()
        .map(|(name, us)| format!("{name} {:.1} ms", *us as f64 / 1000.0))
        .collect();
    println!("  mean per policy: {}", per_policy.join(", "));
    println!(
        "ratio warm gate / host parse: p50 {:.2}",
        ms(f.warm.percentile(50.0)) / ms(f.parse.percentile(50.0))
    );
    println!(
        "ratio cold compiling / cold cached: p50 {:.1}",
        ms(f.cold_compiled.percentile(50.0)) / ms(f.cold_cached.percentile(50.0))
    );
    Ok(ExitCode::Success)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
