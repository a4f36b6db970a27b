//! Shared vocabulary: the identifiers every stage passes around.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's id: a ULID, so ids sort by creation time and name everything a job leaves behind
/// (artifacts folder, container labels, workspace folder).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn new() -> Self {
        JobId(ulid::Ulid::new().to_string().to_lowercase())
    }

    /// Accepts only what `new` makes: 26 lowercase Crockford base32 characters. Ids reach
    /// container labels and file names, so nothing else gets through.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 26
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        ok.then(|| JobId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which container of an attempt: the generator or the test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Generate,
    Test,
    Review,
    /// The merge queue's re-test of a change merged onto its target's tip.
    MergeTest,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Generate => "generate",
            Stage::Test => "test",
            Stage::Review => "review",
            Stage::MergeTest => "merge-test",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a running job is doing, without its attempt number: a stage of an attempt, or one of
/// the steps around them. `kiln serve` records it; the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Workspace,
    Stage(Stage),
    PolicyGate,
    Publish,
    MergeQueue,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Workspace => "workspace",
            Phase::Stage(stage) => stage.as_str(),
            Phase::PolicyGate => "policy gate",
            Phase::Publish => "publish",
            Phase::MergeQueue => "merge queue",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        let stages = [
            Stage::Generate,
            Stage::Test,
            Stage::Review,
            Stage::MergeTest,
        ];
        [
            Phase::Workspace,
            Phase::PolicyGate,
            Phase::Publish,
            Phase::MergeQueue,
        ]
        .into_iter()
        .chain(stages.map(Phase::Stage))
        .find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_parse_back_and_foreign_ids_do_not() {
        let id = JobId::new();
        assert_eq!(JobId::parse(id.as_str()), Some(id));
        assert_eq!(JobId::parse("../../etc/passwd"), None);
        assert_eq!(JobId::parse("01HZZZZZZZZZZZZZZZZZZZZZZZ"), None);
    }

    #[test]
    fn phases_read_back_as_written() {
        for phase in [
            Phase::Workspace,
            Phase::Stage(Stage::MergeTest),
            Phase::PolicyGate,
            Phase::MergeQueue,
        ] {
            assert_eq!(Phase::parse(phase.as_str()), Some(phase));
        }
        assert_eq!(Phase::parse("attempt 2/3 · test"), None);
    }
}
