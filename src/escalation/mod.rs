//! Escalation: when a job ends for a human to decide (a policy escalated or asked for review,
//! the reviewer escalated, the attempts stopped converging), kiln writes everything that human
//! needs into `<artifacts>/<id>/escalation/`: `escalation.json` (schema `kiln.escalation/v1`),
//! `summary.html` (one self-contained page), and, when the tests passed, `candidate.git` holding
//! the tested commit. `kiln approve` and `kiln reject` record the decision in `decision.json`.

mod html;
pub mod transcript;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifacts::{ArtifactError, Artifacts};
use crate::model::Status;
use crate::model::text::{head_text, tail_text};
use crate::model::time::now;
use crate::notify::{NOTICE_SCHEMA, Notice};
use crate::report::Report;

pub const SCHEMA: &str = "kiln.escalation/v1";
/// The folder of a job's escalation, inside its artifacts folder.
pub const DIR: &str = crate::artifacts::ESCALATION_DIR;
/// Where the tested commit of an escalated job waits for a decision, inside [`DIR`].
pub const CANDIDATE_REPO: &str = "candidate.git";
pub const CANDIDATE_REF: &str = "refs/kiln/candidate";
/// Most bytes of each attempt's diff, test output and generator log kept in the bundle.
const DIFF_BYTES: usize = 64 << 10;
const LOG_BYTES: usize = 16 << 10;

/// Why a human is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A policy escalated the change.
    Policy,
    /// A policy asked for review.
    Review,
    /// The reviewer escalated, or its verdict could not be used.
    Reviewer,
    /// The attempts stopped converging.
    NotConverging,
    /// The merge queue could not land the change and no attempts were left.
    Merge,
    /// The job's model budget was spent.
    Budget,
}

impl Kind {
    /// The name the record and the notice use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::Review => "review",
            Kind::Reviewer => "reviewer",
            Kind::NotConverging => "not_converging",
            Kind::Merge => "merge",
            Kind::Budget => "budget",
        }
    }

    /// The escalation a job's end calls for, if any.
    pub fn of(status: Status) -> Option<Kind> {
        match status {
            Status::PolicyEscalated => Some(Kind::Policy),
            Status::AwaitingReview => Some(Kind::Review),
            Status::ReviewEscalated => Some(Kind::Reviewer),
            Status::NotConverging => Some(Kind::NotConverging),
            Status::MergeEscalated => Some(Kind::Merge),
            Status::BudgetExhausted => Some(Kind::Budget),
            _ => None,
        }
    }
}

impl Escalation {
    /// What `[notify]` sends of this escalation.
    pub fn notice(&self, summary_html: String) -> Notice<'_, Escalation> {
        Notice {
            schema: NOTICE_SCHEMA,
            id: &self.id,
            kind: self.kind.as_str(),
            reason: &self.reason,
            channel: self.channel.as_deref(),
            action: self.action.as_deref(),
            summary_html,
            escalation: self,
        }
    }
}

/// `escalation.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Escalation {
    pub schema: String,
    pub id: String,
    pub created_at: String,
    pub kind: Kind,
    /// The job's status when it stopped, and why.
    pub status: String,
    pub reason: String,
    /// What the bundle says to do (`notify_human`) and where (`#factory-reviews`).
    pub action: Option<String>,
    pub channel: Option<String>,
    pub request: Request,
    pub attempts: Vec<Attempt>,
    /// The policy gate's result, when it ran.
    pub gate: Option<serde_json::Value>,
    /// The tested commit, when the tests passed: what `kiln approve` publishes.
    pub candidate: Option<Candidate>,
    /// The branch and repository an approval publishes to.
    pub publish: Publish,
    /// What an approval merges, when the job has a `[merge]` target.
    pub merge: Option<MergeRecord>,
    /// The job's artifacts folder.
    pub artifacts: String,
    /// What the generator and the reviewer spent on model calls, with their budgets (the
    /// report's `spend`), when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<serde_json::Value>,
    /// The model calls the agents made, in brief, when transcripts are kept
    /// (`[egress] transcripts`); whole in `kiln escalations export`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<transcript::Call>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub repo: String,
    pub base: Option<String>,
    pub base_commit: Option<String>,
    pub branch: String,
    pub prompt: String,
    pub test_requirements: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub passed: bool,
    pub test_exit_code: Option<i64>,
    /// The attempt's change against the base, unified, at most 64 KiB.
    pub diff: String,
    pub diff_truncated: bool,
    /// The last 16 KiB of the generator's and the tests' output.
    pub generate_log_tail: String,
    pub test_log_tail: String,
    /// The reviewer's verdict on this attempt, when it ran.
    pub review: Option<serde_json::Value>,
    pub protected_reverted: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidate {
    pub commit: String,
    /// The attempt whose tested tree it holds.
    pub attempt: u32,
}

/// What the merge queue needs to land an approved change: the target and how to re-test.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MergeRecord {
    pub target: String,
    pub test: crate::model::StageSpec,
    pub limits: crate::model::Limits,
    pub loosened: Vec<crate::config::Loosening>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Publish {
    pub branch: String,
    pub out: String,
}

/// `decision.json`: who decided, when, and what came of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    pub decision: Verdict,
    pub by: String,
    pub at: String,
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Rejected,
}

#[derive(Debug, thiserror::Error)]
pub enum EscalationError {
    #[error("no escalation `{id}` under {root}; `kiln escalations list` shows them")]
    Unknown { id: String, root: PathBuf },
    #[error("escalation {0} was already {1}")]
    Decided(String, String),
    #[error(
        "escalation {0} has no tested change to approve (the attempts stopped converging); reject it, or run the job again"
    )]
    NothingToApprove(String),
    #[error("{0}")]
    Invalid(String),
    #[error("escalation {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize the escalation: {0}")]
    Json(#[source] serde_json::Error),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EscalationError + '_ {
    move |source| EscalationError::Io {
        path: path.into(),
        source,
    }
}

/// Builds the escalation of a job that ended with `report` (whose attempt folders are read for
/// diffs and logs) and writes its folder: `escalation.json` and `summary.html`.
///
/// Every configured secret is hidden by the artifacts' redactor in the bundle (the job's own
/// text included), and so in what is announced. Blocking.
pub fn write(
    report: &Report,
    job: &crate::job::Job,
    candidate: Option<Candidate>,
    out: &str,
    artifacts: &Artifacts,
) -> Result<Escalation, EscalationError> {
    let kind = Kind::of(report.status).ok_or_else(|| {
        EscalationError::Invalid(format!(
            "status {} is not escalated",
            report.status.as_str()
        ))
    })?;
    // Artifacts may be large (a diff of a whole workspace): only the bytes kept are read.
    let read = |n: u32, name: &str, from_end: bool, max: usize| {
        read_part(&artifacts.attempt_file(n, name), from_end, max + 4).unwrap_or_default()
    };
    let attempts = report
        .attempts
        .iter()
        .map(|a| {
            let patch = read(a.attempt, "diff.patch", false, DIFF_BYTES);
            let diff = String::from_utf8_lossy(&patch);
            let kept = head_text(&diff, DIFF_BYTES);
            Attempt {
                attempt: a.attempt,
                passed: a.passed,
                test_exit_code: a.test.as_ref().and_then(|t| t.exit_code),
                diff: kept.to_string(),
                diff_truncated: kept.len() < diff.len(),
                generate_log_tail: tail_text(
                    &read(a.attempt, "generate.log", true, LOG_BYTES),
                    LOG_BYTES,
                ),
                test_log_tail: tail_text(&read(a.attempt, "test.log", true, LOG_BYTES), LOG_BYTES),
                review: a
                    .review
                    .as_ref()
                    .and_then(|r| serde_json::to_value(&r.verdict).ok()),
                protected_reverted: a.protected_reverted.clone(),
            }
        })
        .collect();
    let escalation_of_gate = report.gate.as_ref().and_then(|g| g.escalation.as_ref());
    let escalation = Escalation {
        schema: SCHEMA.into(),
        id: report.job.id.clone(),
        created_at: now(),
        kind,
        status: report.status.as_str().into(),
        reason: report.reason.clone(),
        action: Some(
            escalation_of_gate
                .map(|e| e.action.clone())
                .unwrap_or_else(|| "notify_human".into()),
        ),
        channel: escalation_of_gate.and_then(|e| e.channel.clone()),
        request: Request {
            repo: report.job.repo.clone(),
            base: report.job.base.clone(),
            base_commit: report.job.base_commit.clone(),
            branch: report.job.branch.clone(),
            prompt: job.prompt.clone(),
            test_requirements: job.test_requirements.clone(),
        },
        attempts,
        gate: report
            .gate
            .as_ref()
            .and_then(|g| serde_json::to_value(g).ok()),
        candidate,
        publish: Publish {
            branch: report.job.branch.clone(),
            out: out.into(),
        },
        merge: job.merge.as_ref().map(|m| MergeRecord {
            target: m.target.clone(),
            test: job.test.clone(),
            limits: job.limits.clone(),
            loosened: job.loosened.clone(),
        }),
        artifacts: report.artifacts.clone(),
        spend: report
            .spend
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok()),
        calls: transcript::calls(
            artifacts.dir(),
            &report
                .attempts
                .iter()
                .map(|a| a.attempt)
                .collect::<Vec<_>>(),
        ),
    };
    let redactor = artifacts.redactor();
    let escalation = if redactor.is_empty() {
        escalation
    } else {
        let text = serde_json::to_string(&escalation).map_err(EscalationError::Json)?;
        serde_json::from_str(&redactor.text(&text)).map_err(EscalationError::Json)?
    };
    let dir = artifacts.escalation();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    artifacts.write_json(&dir.join("escalation.json"), &escalation)?;
    let page = html::summary(&escalation, None);
    artifacts.write(&dir.join("summary.html"), page.as_bytes())?;
    Ok(escalation)
}

/// At most `max` bytes of the file at `path`: its first, or with `from_end` its last.
fn read_part(path: &Path, from_end: bool, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    if from_end {
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max as u64)))?;
    }
    let mut bytes = Vec::new();
    file.take(max as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// One escalation on disk, with its decision if there is one.
pub struct Found {
    pub dir: PathBuf,
    pub escalation: Escalation,
    pub decision: Option<Decision>,
}

impl Found {
    /// `open`, `approved` or `rejected`.
    pub fn state(&self) -> &'static str {
        match self.decision.as_ref().map(|d| d.decision) {
            None => "open",
            Some(Verdict::Approved) => "approved",
            Some(Verdict::Rejected) => "rejected",
        }
    }
}

/// Every escalation under the artifacts root `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<Found>, EscalationError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(root)(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join(DIR).join("escalation.json").is_file()
            && let Ok(f) = open(root, &name)
        {
            found.push(f);
        }
    }
    found.sort_by(|a, b| a.escalation.created_at.cmp(&b.escalation.created_at));
    Ok(found)
}

/// The escalation of job `id` under the artifacts root `root`.
pub fn open(root: &Path, id: &str) -> Result<Found, EscalationError> {
    let unknown = || EscalationError::Unknown {
        id: id.into(),
        root: root.into(),
    };
    // A job id is a ULID: letters and digits only, so it can never name another folder.
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(unknown());
    }
    let dir = root.join(id).join(DIR);
    let path = dir.join("escalation.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(unknown()),
        Err(e) => return Err(io(&path)(e)),
    };
    let escalation: Escalation = serde_json::from_slice(&bytes)
        .map_err(|e| EscalationError::Invalid(format!("{}: {e}", path.display())))?;
    let decision_path = dir.join("decision.json");
    let decision =
        match std::fs::read(&decision_path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                EscalationError::Invalid(format!("{}: {e}", decision_path.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&decision_path)(e)),
        };
    Ok(Found {
        dir,
        escalation,
        decision,
    })
}

/// Records `decision` for an open escalation; the first decision wins (the file is created
/// exclusively, so two people deciding at once cannot both succeed). The summary page is
/// rewritten to show it.
pub fn decide(found: &mut Found, decision: Decision) -> Result<(), EscalationError> {
    let by = decision.by.trim();
    if by.is_empty() || by.chars().count() > 100 || by.chars().any(char::is_control) {
        return Err(EscalationError::Invalid(
            "--by must name who decides: 1 to 100 characters, no control characters".into(),
        ));
    }
    if decision
        .note
        .as_deref()
        .is_some_and(|n| n.chars().count() > 4000)
    {
        return Err(EscalationError::Invalid(
            "--note is over 4,000 characters".into(),
        ));
    }
    if decision.decision == Verdict::Rejected
        && decision.note.as_deref().is_none_or(|n| n.trim().is_empty())
    {
        return Err(EscalationError::Invalid(
            "a rejection needs --note saying why".into(),
        ));
    }
    if let Some(d) = &found.decision {
        return Err(EscalationError::Decided(
            found.escalation.id.clone(),
            format!("{} by {} at {}", found.state(), d.by, d.at),
        ));
    }
    if decision.decision == Verdict::Approved && found.escalation.candidate.is_none() {
        return Err(EscalationError::NothingToApprove(
            found.escalation.id.clone(),
        ));
    }
    let path = found.dir.join("decision.json");
    let mut bytes = serde_json::to_vec_pretty(&decision).map_err(EscalationError::Json)?;
    bytes.push(b'\n');
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path);
    match file {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(&bytes).map_err(io(&path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(EscalationError::Decided(
                found.escalation.id.clone(),
                "decided by someone else just now".into(),
            ));
        }
        Err(e) => return Err(io(&path)(e)),
    }
    let page = html::summary(&found.escalation, Some(&decision));
    let summary = found.dir.join("summary.html");
    std::fs::write(&summary, page).map_err(io(&summary))?;
    found.decision = Some(decision);
    Ok(())
}

/// Takes back a decision whose effect failed (an approval whose branch could not be published),
/// so that it can be made again: nothing was done on its strength.
pub fn undecide(found: &mut Found) -> Result<(), EscalationError> {
    let path = found.dir.join("decision.json");
    std::fs::remove_file(&path).map_err(io(&path))?;
    let summary = found.dir.join("summary.html");
    std::fs::write(&summary, html::summary(&found.escalation, None)).map_err(io(&summary))?;
    found.decision = None;
    Ok(())
}
