//! `kiln audit verify`: check the audit log's hash chain and name the first bad record.

use std::path::PathBuf;

use clap::Subcommand;
use kiln::config::Config;
use kiln::{Error, ExitCode};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every record's hash and link; exits 0 when the chain is whole, 14 when it is broken.
    Verify {
        /// The log. Default: the operator config's `audit_log`.
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn exec(config: &Config, command: AuditCommand) -> Result<ExitCode, Error> {
    let AuditCommand::Verify { file, json } = command;
    let path = file.or_else(|| config.audit_log.clone()).ok_or_else(|| {
        Error::Usage("name the audit log, or set `audit_log` in the operator config".into())
    })?;
    let verified = kiln::audit::verify(&path)?;
    if json {
        super::print_json(&verified)?;
    }
    match &verified.broken {
        None => {
            eprintln!(
                "{}: {} records, chain intact; head {}",
                path.display(),
                verified.records,
                verified.head
            );
            Ok(ExitCode::Success)
        }
        Some(broken) => {
            eprintln!(
                "{}: broken at line {}{}: {}; the {} records before it are intact",
                path.display(),
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
