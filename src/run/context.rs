//! What every run, approval and server shares, built once at the edge from the operator config
//! and handed down: the config itself, the secrets (and the redactor made from them), and the
//! audit log. The config stays plain data; this is where what it names is opened.

use std::sync::Arc;

use crate::audit::{AuditError, AuditLog, Event};
use crate::config::Config;
use crate::model::JobId;
use crate::secrets::{Redactor, Secrets};

#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub secrets: Secrets,
    /// The operator's audit log, if the config names one.
    pub audit: Option<AuditLog>,
    /// The id of the `kiln serve` this runs under, named in the job's audit records when
    /// servers share a store.
    pub server: Option<String>,
}

impl Context {
    /// Reads the secrets (for the redactor) and opens the audit log the config names.
    pub fn open(config: Config) -> Result<Context, AuditError> {
        let secrets = Secrets::load(&config.secrets);
        let audit = match &config.audit_log {
            Some(path) => Some(AuditLog::open(path)?.redacting(secrets.redactor().clone())),
            None => None,
        };
        Ok(Context {
            config: Arc::new(config),
            secrets,
            audit,
            server: None,
        })
    }

    pub fn redactor(&self) -> &Redactor {
        self.secrets.redactor()
    }

    /// Appends `event` about `job` to the audit log, if there is one. A record that cannot be
    /// written is an error: nothing goes unrecorded.
    pub async fn record(&self, job: &JobId, event: Event) -> Result<(), AuditError> {
        if let Some(audit) = &self.audit {
            audit.record(Some(job), event).await?;
        }
        Ok(())
    }
}
