//! `kiln store migrate`: set up or upgrade a job store's schema; and the `--store` options every
//! command that opens a store takes.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use kiln::config::Config;
use kiln::store::{Location, Store};
use kiln::{Error, ExitCode};

/// Which store: a shared PostgreSQL, or the state folder's SQLite.
#[derive(Args, Clone, Default)]
pub struct StoreArgs {
    /// A PostgreSQL many servers share: postgres://USER@HOST[:PORT]/DB, without a password.
    /// Default: the operator config's [store] url, else SQLite in the state folder.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// A file whose first line is the store's password. Default: the config's [store]
    /// password_file, else $KILN_STORE_PASSWORD (or the variable [store] password_env names).
    #[arg(long, value_name = "FILE")]
    pub store_password_file: Option<PathBuf>,
}

impl StoreArgs {
    /// Where the store is, `sqlite` being the file when no PostgreSQL is named.
    pub fn location(&self, config: &Config, sqlite: &Path) -> Result<Location, Error> {
        let mut store = config.store.clone();
        if let Some(file) = &self.store_password_file {
            store.password_file = Some(file.clone());
        }
        Location::resolve(self.store.as_deref(), &store, sqlite)
            .map_err(|e| Error::Usage(e.to_string()))
    }
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Make the store's schema, or bring it up to this kiln's version (a store newer than this
    /// kiln is refused). Servers of an older kiln refuse the store once it is migrated.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn exec(
    config: &Config,
    state_dir: Option<PathBuf>,
    command: StoreCommand,
) -> Result<ExitCode, Error> {
    let StoreCommand::Migrate { store } = command;
    let sqlite = state_dir
        .or_else(super::serve::default_state_dir)
        .map(|d| d.join("kiln.db"))
        .unwrap_or_else(|| PathBuf::from("kiln.db"));
    let at = store.location(config, &sqlite)?;
    let (found, now) = tokio::task::block_in_place(|| Store::migrate(&at))?;
    if found == now {
        eprintln!("{at}: already at schema version {now}");
    } else {
        eprintln!("{at}: schema version {found} → {now}");
    }
    Ok(ExitCode::Success)
}
