//! `kiln image build | list`: the images kiln uses, built from nothing.

use clap::Subcommand;
use kiln::images::{self, Recipe};
use kiln::run::{Progress, Step};
use kiln::sandbox::Sandbox;
use kiln::{Error, ExitCode};

#[derive(Subcommand)]
pub enum ImageCommand {
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

pub async fn exec(command: ImageCommand) -> Result<ExitCode, Error> {
    match command {
        ImageCommand::Build { names, missing } => build(&names, missing).await,
        ImageCommand::List { json } => list(json).await,
    }
}

/// Builds the named recipes (when none is named, all but the agents'); with `missing`, only
/// those not current.
async fn build(names: &[String], missing: bool) -> Result<ExitCode, Error> {
    let recipes = if names.is_empty() {
        images::RECIPES.iter().filter(|r| !r.only_by_name).collect()
    } else {
        names
            .iter()
            .map(|n| Recipe::find(n))
            .collect::<Result<Vec<_>, _>>()?
    };
    let sandbox = Sandbox::connect().await?;
    let current: Vec<&str> = if missing {
        let rows = images::list(&sandbox).await?;
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
        let timer = Progress::default().start(Step::Other(format!("image {}", recipe.tag)));
        images::build(&sandbox, recipe).await?;
        timer.done("built");
    }
    Ok(ExitCode::Success)
}

async fn list(json: bool) -> Result<ExitCode, Error> {
    let sandbox = Sandbox::connect().await?;
    let rows = images::list(&sandbox).await?;
    if json {
        super::print_json(&rows)?;
        return Ok(ExitCode::Success);
    }
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
    Ok(ExitCode::Success)
}
