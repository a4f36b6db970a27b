//! `kiln audit verify`: check the audit log's hash chain (a file, or the chain of a shared store)
//! and name the first bad record.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use kiln::config::Config;
use kiln::store::Location;
use kiln::{Error, ExitCode};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every record's hash and link; exits 0 when the chain is whole, 14 when it is broken.
    Verify {
        /// The log. Default: the operator config's `audit_log`.
        #[arg(conflicts_with = "store")]
        file: Option<PathBuf>,
        /// The chain that servers sharing this PostgreSQL store keep (postgres://USER@HOST/DB).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// A file whose first line is the store's password.
        #[arg(long, value_name = "FILE", requires = "store")]
        store_password_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn exec(config: &Config, command: AuditCommand) -> Result<ExitCode, Error> {
    let AuditCommand::Verify {
        file,
        store,
        store_password_file,
        json,
    } = command;
    // A file's records are its lines; a store's, its rows in order.
    let place = if store.is_some() { "record" } else { "line" };
    let (shown, verified) = if store.is_some() {
        let args = super::store::StoreArgs {
            store,
            store_password_file,
        };
        let Location::Postgres(target) = args.location(config, Path::new(""))? else {
            return Err(Error::Usage("--store: name a postgres:// URL".into()));
        };
        let verified = tokio::task::block_in_place(|| kiln::audit::verify_shared(&target))?;
        (target.shown().to_string(), verified)
    } else {
        let path = file.or_else(|| config.audit_log.clone()).ok_or_else(|| {
            Error::Usage(
                "name the audit log or --store, or set `audit_log` in the operator config".into(),
            )
        })?;
        (path.display().to_string(), kiln::audit::verify(&path)?)
    };
    if json {
        super::print_json(&verified)?;
    }
    match &verified.broken {
        None => {
            eprintln!(
                "{shown}: {} records, chain intact; head {}",
                verified.records, verified.head
            );
            Ok(ExitCode::Success)
        }
        Some(broken) => {
            eprintln!(
                "{shown}: broken at {place} {}{}: {}; the {} records before it are intact",
                broken.line,
                broken
                    .seq
                    .map(|s| format!(" (seq {s})"))
                    .unwrap_or_default(),
                broken.why,
                verified.records
            );
            Ok(ExitCode::AuditBroken)
        }
    }
}
