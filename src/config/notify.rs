//! `[notify]`: who hears of an escalation, and how hard kiln tries to tell them.

use std::time::Duration;

use serde::Deserialize;

/// `[notify]`: where an escalation is announced.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// An `http://` or `https://` URL that gets the escalation as a JSON POST. Default none.
    pub webhook: Option<String>,
    /// A host command (argv) run with the escalation JSON on stdin. Default none.
    pub command: Option<Vec<String>>,
    /// How long one delivery may take. Default 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries after a failed delivery. Default 3.
    pub retries: u32,
    /// The wait before the first retry, doubled for each next one. Default 1s.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: None,
            command: None,
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

impl NotifyConfig {
    pub(super) fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.webhook {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("[notify] webhook is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(
                    "[notify] webhook must be an http:// or https:// URL with a host".into(),
                );
            }
        }
        if self
            .command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            return Err("[notify] command must be a non-empty argv list".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err("[notify] timeout must be more than 0 and at most 5m".into());
        }
        if self.retries > 10 {
            return Err("[notify] retries must be at most 10".into());
        }
        if self.backoff > Duration::from_secs(60) {
            return Err("[notify] backoff must be at most 1m".into());
        }
        Ok(())
    }
}
