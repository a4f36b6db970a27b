//! The subcommands, one file each; `main.rs` parses and dispatches.

pub mod audit;
pub mod bench;
pub mod bench_serve;
pub mod client;
pub mod escalations;
pub mod gc;
pub mod image;
pub mod policy;
pub mod run;
pub mod serve;

use kiln::Error;

/// Machine output: pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
    println!("{text}");
    Ok(())
}
