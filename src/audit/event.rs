//! What an audit record says happened: one typed event per kind, so every place that records a
//! push or a state change writes the same fields.

use serde::Serialize;

/// One event: `kind` is the record's kind, the fields its `data`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", content = "data")]
pub enum Event {
    /// A job moved to another state (queued, running, cancelled, or how it ended).
    #[serde(rename = "job.state")]
    JobState(JobState),
    /// The policy gate judged a change; the modules are named with their hashes.
    #[serde(rename = "policy.decision")]
    PolicyDecision {
        decision: String,
        auto_merge: bool,
        policies: Vec<PolicyRecord>,
    },
    /// A human approved an escalated change.
    #[serde(rename = "escalation.approved")]
    EscalationApproved {
        by: String,
        note: Option<String>,
        commit: String,
    },
    /// An approval could not publish; the escalation is open again.
    #[serde(rename = "escalation.reopened")]
    EscalationReopened { why: String },
    /// A human rejected an escalated change.
    #[serde(rename = "escalation.rejected")]
    EscalationRejected { by: String, note: String },
    /// kiln wrote a ref: the work branch, or a merge target landed by compare-and-swap.
    #[serde(rename = "push")]
    Push(Push),
}

/// `job.state`: the state a job moved to, and what that state needs said.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobState {
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// How many times the job has started, when a restart moved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The `kiln serve` that moved it (its server id), when servers share a store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl JobState {
    /// A move to `to` with nothing more to say.
    pub fn to(to: impl Into<String>) -> JobState {
        JobState {
            to: to.into(),
            ..JobState::default()
        }
    }
}

/// One policy module of a gate decision.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyRecord {
    pub name: String,
    pub sha256: String,
    pub mode: String,
    pub decision: String,
}

/// `push`: one ref kiln wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Push {
    /// The repository written to (a URL without its user info).
    pub dest: String,
    #[serde(rename = "ref")]
    pub refname: String,
    /// What the ref held before; `None` for a new branch.
    pub old: Option<String>,
    pub new: String,
}

impl Event {
    /// The record's `kind` and `data`.
    pub(super) fn parts(&self) -> (String, serde_json::Value) {
        let mut value = serde_json::to_value(self).expect("an audit event serializes");
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        (kind, value["data"].take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_kind_and_data() {
        let (kind, data) = Event::Push(Push {
            dest: "/r.git".into(),
            refname: "refs/heads/factory/x".into(),
            old: None,
            new: "abc".into(),
        })
        .parts();
        assert_eq!(kind, "push");
        assert_eq!(data["ref"], "refs/heads/factory/x");
        assert!(data["old"].is_null());
        let (kind, data) = Event::JobState(JobState::to("cancelled")).parts();
        assert_eq!(kind, "job.state");
        assert_eq!(data, serde_json::json!({"to": "cancelled"}));
    }
}
