//! `kiln gc`: remove what crashed runs left behind.

use clap::Args;
use kiln::sandbox::Sandbox;
use kiln::{Error, ExitCode};

#[derive(Args)]
pub struct GcArgs {
    /// Remove every kiln container, volume and workspace, even those of running jobs.
    #[arg(long)]
    all: bool,
}

pub async fn exec(args: GcArgs) -> Result<ExitCode, Error> {
    let sandbox = Sandbox::connect().await?;
    let objects = sandbox.gc(args.all).await?;
    let workspaces =
        kiln::workspace::gc_workspaces(args.all).map_err(Error::io("cannot clean workspaces"))?;
    eprintln!("removed {objects} containers and volumes, {workspaces} workspaces");
    Ok(ExitCode::Success)
}
