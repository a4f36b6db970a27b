//! `[telemetry]`: where kiln sends its traces (OpenTelemetry over OTLP/HTTP), if anywhere.

use std::time::Duration;

use serde::Deserialize;

/// `[telemetry]`: traces of every job, exported to an OpenTelemetry collector.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://` or `https://`), as in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: spans are posted as JSON to `<endpoint>/v1/traces`.
    /// Default none: no traces.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of kiln's spans. Default `kiln`.
    pub service_name: String,
    /// How long one export may take; at exit kiln waits at most this for the last spans.
    /// Default 5s; at most 60s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "kiln".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl TelemetryConfig {
    /// Where spans are posted: the endpoint with `/v1/traces`; `None` when traces are off.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.otlp_endpoint {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("[telemetry] otlp_endpoint is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(
                    "[telemetry] otlp_endpoint must be an http:// or https:// URL with a host"
                        .into(),
                );
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(
                    "[telemetry] otlp_endpoint must not carry a query or fragment (kiln adds /v1/traces)"
                        .into(),
                );
            }
        }
        let name = &self.service_name;
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(
                "[telemetry] service_name must be 1 to 128 characters, none of them control characters"
                    .into(),
            );
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err("[telemetry] timeout must be more than 0 and at most 60s".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some(endpoint.into()),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn the_traces_url_is_the_endpoint_with_v1_traces() {
        assert_eq!(TelemetryConfig::default().traces_url(), None);
        let config = with("http://127.0.0.1:4318/");
        config.check().unwrap();
        assert_eq!(
            config.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn a_bad_endpoint_is_refused_naming_the_key() {
        for bad in [
            "127.0.0.1:4318",
            "ftp://collector",
            "http://c:4318/?x=1",
            "http://",
        ] {
            let e = with(bad).check().unwrap_err();
            assert!(e.contains("otlp_endpoint"), "{bad}: {e}");
        }
        let silly = TelemetryConfig {
            service_name: "a\nb".into(),
            ..TelemetryConfig::default()
        };
        assert!(silly.check().unwrap_err().contains("service_name"));
    }
}
