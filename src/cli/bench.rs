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
    },
}

pub async fn exec(command: BenchCommand) -> Result<ExitCode, Error> {
    match command {
        BenchCommand::Overhead { runs, image } => overhead(runs, &image).await,
    }
}

async fn overhead(runs: usize, image: &str) -> Result<ExitCode, Error> {
    if runs < 2 {
        return Err(Error::Usage("--runs must be at least 2".into()));
    }
    let sandbox = Sandbox::connect().await?;
    sandbox.require_image(image).await?;
    let figures = kiln::bench::overhead(&sandbox, image, runs).await?;
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

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
