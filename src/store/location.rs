//! Where a store is: a SQLite file, or a shared PostgreSQL named by URL. A PostgreSQL password
//! never comes in the URL (a command line and a config file are read by too many): it is read
//! from a file or an environment variable when the store is opened.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::StoreError;
use crate::config::StoreConfig;

/// How long kiln waits for PostgreSQL to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A store's place.
#[derive(Clone, Debug)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(PgTarget),
}

/// A PostgreSQL database to connect to, the password already read.
#[derive(Clone)]
pub struct PgTarget {
    config: Box<postgres::Config>,
    /// `postgres://user@host:port/db`, without the password: what errors and logs name.
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(target) => f.write_str(&target.shown),
        }
    }
}

impl Location {
    /// The store `url` names (or the config's `[store] url`), else the SQLite file `default`.
    /// The password of a PostgreSQL URL comes from `[store] password_file`, else the variable
    /// `[store] password_env`, else none (the server may trust the connection).
    pub fn resolve(
        url: Option<&str>,
        config: &StoreConfig,
        default: &Path,
    ) -> Result<Location, StoreError> {
        let Some(url) = url.or(config.url.as_deref()) else {
            return Ok(Location::Sqlite(default.to_path_buf()));
        };
        let bad = |why: String| StoreError::Url(url_shown(url), why);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(
                "a shared store is a postgres://USER@HOST[:PORT]/DB URL".into(),
            ));
        }
        let mut pg = postgres::Config::from_str(url).map_err(|e| bad(e.to_string()))?;
        if pg.get_password().is_some() {
            return Err(bad(format!(
                "the URL holds a password; put it in a file ([store] password_file) or in ${}",
                config.password_env
            )));
        }
        if pg.get_dbname().is_none() || pg.get_user().is_none() {
            return Err(bad(
                "name both the user and the database: postgres://USER@HOST/DB".into(),
            ));
        }
        if let Some(file) = &config.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                bad(format!(
                    "cannot read the password file {}: {e}",
                    file.display()
                ))
            })?;
            pg.password(text.lines().next().unwrap_or_default());
        } else if let Ok(password) = std::env::var(&config.password_env) {
            pg.password(password);
        }
        pg.connect_timeout(CONNECT_TIMEOUT);
        pg.application_name("kiln");
        let shown = format!(
            "postgres://{}@{}/{}",
            pg.get_user().unwrap_or_default(),
            hosts_shown(&pg),
            pg.get_dbname().unwrap_or_default()
        );
        Ok(Location::Postgres(PgTarget {
            config: Box::new(pg),
            shown,
        }))
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

impl PgTarget {
    /// A new connection, within the connect timeout.
    pub fn connect(&self) -> Result<postgres::Client, StoreError> {
        self.config
            .connect(postgres::NoTls)
            .map_err(|e| StoreError::Unreachable(self.shown.clone(), Box::new(e)))
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn hosts_shown(pg: &postgres::Config) -> String {
    let ports = pg.get_ports();
    pg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `url` with any password replaced, for an error message.
fn url_shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(url: &str) -> Result<Location, StoreError> {
        Location::resolve(Some(url), &StoreConfig::default(), Path::new("/x/kiln.db"))
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_repeating_it() {
        let err = resolve("postgres://kiln:hunter2@db/kiln")
            .unwrap_err()
            .to_string();
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_url_names_its_store_and_none_means_sqlite() {
        let at = resolve("postgres://kiln@db.internal:5433/queue").unwrap();
        assert!(at.is_shared());
        assert_eq!(at.to_string(), "postgres://kiln@db.internal:5433/queue");
        let local =
            Location::resolve(None, &StoreConfig::default(), Path::new("/x/kiln.db")).unwrap();
        assert!(!local.is_shared());
        assert!(resolve("mysql://kiln@db/q").is_err());
        assert!(resolve("postgres://db/q").is_err(), "no user");
    }

    #[test]
    fn the_password_comes_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let config = StoreConfig {
            password_file: Some(file),
            ..StoreConfig::default()
        };
        let at = Location::resolve(Some("postgres://kiln@db/q"), &config, Path::new("/x")).unwrap();
        let Location::Postgres(target) = at else {
            panic!("a postgres URL is a shared store")
        };
        assert_eq!(target.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{target:?}").contains("s3cret"));
    }
}
