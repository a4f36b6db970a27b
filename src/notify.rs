//! Telling a human about an escalation: the operator's `[notify]` webhook (a JSON POST, retried
//! with doubling backoff) and host command (the escalation JSON on stdin). Only the operator
//! config names them, never a job. Every delivery attempt is recorded.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::NotifyConfig;

/// The JSON a webhook or command receives (schema `kiln.escalation-notice/v1`): the headline
/// fields a chat message needs, and the whole escalation record (`E`, the escalation's own type).
#[derive(Serialize)]
pub struct Notice<'a, E: Serialize> {
    pub schema: &'static str,
    pub id: &'a str,
    /// Why a human is asked (`policy`, `review`, `reviewer`, `not_converging`, `merge`).
    pub kind: &'a str,
    pub reason: &'a str,
    /// The bundle's escalation channel (`#factory-reviews`), passed through.
    pub channel: Option<&'a str>,
    pub action: Option<&'a str>,
    /// The page a person reads to decide.
    pub summary_html: String,
    pub escalation: &'a E,
}

pub const NOTICE_SCHEMA: &str = "kiln.escalation-notice/v1";

/// One delivery attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook` or `command`.
    pub target: String,
    /// The webhook's origin (scheme, host, port: never its path, which often holds a token),
    /// or the command's program.
    pub to: String,
    pub attempt: u32,
    pub at: String,
    pub ok: bool,
    /// The webhook's HTTP status, or the command's exit code.
    pub status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Delivers `notice` to every target `config` names, retrying each until it succeeds or its
/// retries are spent; returns every attempt.
pub async fn deliver<E: Serialize>(config: &NotifyConfig, notice: &Notice<'_, E>) -> Vec<Delivery> {
    let body = match serde_json::to_vec(notice) {
        Ok(body) => body,
        Err(_) => return Vec::new(),
    };
    let mut deliveries = Vec::new();
    if let Some(url) = &config.webhook {
        let to = origin(url);
        retry(config, "webhook", &to, &mut deliveries, || {
            post(url, &body, config.timeout)
        })
        .await;
    }
    if let Some(argv) = &config.command {
        let to = argv.first().cloned().unwrap_or_default();
        retry(config, "command", &to, &mut deliveries, || {
            run_command(argv, &body, config.timeout)
        })
        .await;
    }
    deliveries
}

async fn retry<F, Fut>(
    config: &NotifyConfig,
    target: &str,
    to: &str,
    deliveries: &mut Vec<Delivery>,
    mut once: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Option<i64>, Result<(), String>)>,
{
    let mut backoff = config.backoff;
    for attempt in 1..=config.retries + 1 {
        let started = Instant::now();
        let at = crate::model::time::now();
        let (status, result) = once().await;
        let ok = result.is_ok();
        if let Err(e) = &result {
            tracing::warn!(target, to, attempt, "escalation notice not delivered: {e}");
        }
        deliveries.push(Delivery {
            target: target.into(),
            to: to.into(),
            attempt,
            at,
            ok,
            status,
            error: result.err(),
            duration_ms: started.elapsed().as_millis() as u64,
        });
        if ok {
            return;
        }
        if attempt <= config.retries {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
}

async fn post(url: &str, body: &[u8], timeout: Duration) -> (Option<i64>, Result<(), String>) {
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => return (None, Err(e.to_string())),
    };
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::USER_AGENT,
            concat!("kiln/", env!("CARGO_PKG_VERSION")),
        )
        .body(body.to_vec())
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            let code = Some(i64::from(status.as_u16()));
            if status.is_success() {
                (code, Ok(()))
            } else {
                (code, Err(format!("HTTP {status}")))
            }
        }
        // Without the URL: its path may hold a token.
        Err(e) => (None, Err(e.without_url().to_string())),
    }
}

async fn run_command(
    argv: &[String],
    body: &[u8],
    timeout: Duration,
) -> (Option<i64>, Result<(), String>) {
    use tokio::io::AsyncWriteExt;
    let mut child = match tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return (None, Err(format!("cannot start {}: {e}", argv[0]))),
    };
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input still gets to run and exit.
            let _ = stdin.write_all(body).await;
        }
        child.wait().await
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => (None, Err(format!("no exit within {timeout:?}; killed"))),
        Ok(Err(e)) => (None, Err(e.to_string())),
        Ok(Ok(status)) => {
            let code = status.code().map(i64::from);
            if status.success() {
                (code, Ok(()))
            } else {
                (code, Err(format!("exited with {status}")))
            }
        }
    }
}

/// `scheme://host[:port]` of `url`, or `webhook` when it does not parse.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "webhook".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_recorded_by_its_origin_only() {
        assert_eq!(
            origin("https://hooks.example.com/services/T000/B000/secret-token"),
            "https://hooks.example.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/x?token=1"),
            "http://127.0.0.1:8080"
        );
    }
}
