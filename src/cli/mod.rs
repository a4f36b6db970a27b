//! The subcommands, one file each; `main.rs` parses and dispatches.

pub mod audit;
pub mod bench;
pub mod bench_job;
pub mod bench_serve;
pub mod client;
pub mod context;
pub mod escalations;
pub mod gc;
pub mod image;
pub mod policy;
pub mod run;
pub mod serve;
pub mod store;

use kiln::Error;

/// Machine output: pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(Error::Json)?;
    println!("{text}");
    Ok(())
}

/// The policy gate of `bundle`, if one is given: its pins checked and its modules compiled, before
/// anything runs.
pub fn load_gate(
    bundle: Option<&std::path::Path>,
    config: &kiln::config::Config,
) -> Result<Option<std::sync::Arc<kiln::policy::Gate>>, Error> {
    let Some(path) = bundle else {
        return Ok(None);
    };
    let bundle = kiln::policy::Bundle::load(path, config.policy.max_fuel)?;
    let engine = kiln::policy::PolicyEngine::new(kiln::policy::default_cache_dir())?;
    let gate = tokio::task::block_in_place(|| kiln::policy::Gate::new(engine, bundle));
    Ok(Some(std::sync::Arc::new(gate)))
}
