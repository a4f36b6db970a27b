//! What the proxy records of each request, and what a stage's report says of them all.

use serde::Serialize;

use super::Exchange;
use crate::secrets::Redactor;

/// One request through the proxy.
#[derive(Clone, Debug, Serialize)]
pub struct Request {
    /// Milliseconds since the Unix epoch when it arrived.
    pub at_ms: u64,
    /// `CONNECT`, or the HTTP method of a plain request.
    pub method: String,
    /// `host:port` as asked (at most 300 characters).
    pub target: String,
    /// Where kiln connected, when it did.
    pub address: Option<String>,
    pub allowed: bool,
    /// Why it was refused, or how an allowed one ended early.
    pub reason: Option<String>,
    /// Bytes from the sandbox to the destination, and back.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// For a tunnel kiln opened (its host has a bound secret): each request inside it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<Exchange>,
}

/// What a stage's report says of its egress; every request is in `attempt-N/<stage>.egress.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub refused: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Requests past the record cap, counted only.
    pub unrecorded: usize,
    /// The first refused targets, each once.
    pub refused_targets: Vec<String>,
}

impl Summary {
    pub fn of(requests: &[Request], unrecorded: usize) -> Summary {
        let mut refused_targets: Vec<String> = Vec::new();
        for r in requests.iter().filter(|r| !r.allowed) {
            if refused_targets.len() < 20 && !refused_targets.contains(&r.target) {
                refused_targets.push(r.target.clone());
            }
        }
        Summary {
            requests: requests.len() + unrecorded,
            refused: requests.iter().filter(|r| !r.allowed).count(),
            bytes_up: requests.iter().map(|r| r.bytes_up).sum(),
            bytes_down: requests.iter().map(|r| r.bytes_down).sum(),
            unrecorded,
            refused_targets,
        }
    }
}

/// `record` with every secret in the sandbox's text (target, reason, paths) hidden.
pub(super) fn hide_secrets(record: &mut Request, redactor: &Redactor) {
    if redactor.is_empty() {
        return;
    }
    let hide = |text: &mut String| *text = redactor.text(text).into_owned();
    hide(&mut record.target);
    record.reason.iter_mut().for_each(hide);
    record.exchanges.iter_mut().for_each(|e| hide(&mut e.path));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_hide_secrets_the_sandbox_wrote() {
        let redactor = Redactor::new(&[("K".into(), "sk-reflected-12345".into())]);
        let mut record = Request {
            at_ms: 0,
            method: "CONNECT".into(),
            target: "sk-reflected-12345.evil.test:443".into(),
            address: None,
            allowed: false,
            reason: Some("sk-reflected-12345.evil.test:443 is not on the job's allowlist".into()),
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            exchanges: Vec::new(),
        };
        hide_secrets(&mut record, &redactor);
        assert_eq!(record.target, "[REDACTED:K].evil.test:443");
        assert!(record.reason.unwrap().starts_with("[REDACTED:K].evil"));
    }
}
