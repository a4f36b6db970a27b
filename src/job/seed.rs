//! The seed article's JSON job record, mapped onto the same [`JobFile`] a TOML job gives.
//!
//! ```json
//! {"job_id": "factory-20260615-001", "type": "code_generation",
//!  "payload": {"repo": "...", "branch": "factory/...", "prompt": "...",
//!              "context_files": [...], "test_requirements": "...", "review_agent": "jazz"},
//!  "priority": 2, "assigned_worker": null, "status": "queued"}
//! ```
//! kiln's own tables (`generate`, `test`, `review`, `merge`, `limits`, `retry`, `sandbox`,
//! `context`) may sit beside `payload`; where they are absent the operator config's defaults
//! apply.

use serde::Deserialize;

use super::SeedFields;
use super::file::{ContextFile, JobFile, LimitsFile, MergeSpec, RetryFile, SandboxFile};
use crate::model::StageSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeedRecord {
    job_id: String,
    #[serde(rename = "type")]
    kind: String,
    payload: Payload,
    priority: Option<i64>,
    /// Accepted for compatibility; kiln assigns work itself.
    #[allow(dead_code)]
    assigned_worker: Option<serde_json::Value>,
    /// Accepted for compatibility; a record handed to `kiln run` is run whatever it says.
    #[allow(dead_code)]
    status: Option<String>,
    generate: Option<StageSpec>,
    test: Option<StageSpec>,
    review: Option<StageSpec>,
    merge: Option<MergeSpec>,
    limits: Option<LimitsFile>,
    #[serde(default)]
    retry: RetryFile,
    #[serde(default)]
    sandbox: SandboxFile,
    #[serde(default)]
    context: ContextFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    repo: String,
    branch: String,
    prompt: String,
    #[serde(default)]
    context_files: Vec<String>,
    test_requirements: Option<String>,
    review_agent: Option<String>,
    base: Option<String>,
}

impl SeedRecord {
    pub(super) fn into_job_file(self) -> Result<(JobFile, Option<SeedFields>), String> {
        if self.kind != "code_generation" {
            return Err(format!(
                "`type` is `{}`; kiln runs only `code_generation` jobs",
                self.kind
            ));
        }
        let seed = SeedFields {
            job_id: self.job_id,
            priority: self.priority,
            review_agent: self.payload.review_agent,
        };
        let file = JobFile {
            repo: self.payload.repo,
            base: self.payload.base,
            branch: self.payload.branch,
            prompt: Some(self.payload.prompt),
            prompt_file: None,
            context_files: self.payload.context_files,
            test_requirements: self.payload.test_requirements,
            tests_fixed: false,
            priority: None,
            touches: Vec::new(),
            generate: self.generate,
            test: self.test,
            review: self.review,
            merge: self.merge,
            limits: self.limits,
            retry: self.retry,
            sandbox: self.sandbox,
            context: self.context,
        };
        Ok((file, Some(seed)))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::job::Job;

    const RECORD: &str = r#"{
        "job_id": "factory-20260615-001",
        "type": "code_generation",
        "payload": {
            "repo": "repo",
            "branch": "factory/feature-description",
            "prompt": "Implement the webhook handler for payment events...",
            "context_files": ["src/api/routes.ts", "src/types/payments.d.ts"],
            "test_requirements": "Must pass existing test suite plus new integration tests",
            "review_agent": "jazz"
        },
        "priority": 2,
        "assigned_worker": null,
        "status": "queued",
        "generate": {"image": "kiln/busybox", "command": ["true"]},
        "test": {"image": "kiln/busybox", "command": ["true"]}
    }"#;

    fn load(text: &str) -> Result<Job, crate::job::JobError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("repo")).unwrap();
        let path = dir.path().join("job.json");
        std::fs::write(&path, text).unwrap();
        Job::load(
            &path,
            &Config::default(),
            &crate::secrets::Secrets::default(),
        )
    }

    #[test]
    fn maps_the_seed_article_record() {
        let job = load(RECORD).unwrap();
        assert_eq!(job.branch.as_str(), "factory/feature-description");
        assert_eq!(job.context_files.patterns().len(), 2);
        let seed = job.seed.unwrap();
        assert_eq!(seed.job_id, "factory-20260615-001");
        assert_eq!(seed.priority, Some(2));
        assert_eq!(seed.review_agent.as_deref(), Some("jazz"));
    }

    #[test]
    fn rejects_other_job_types_and_unknown_fields() {
        let err = load(&RECORD.replace("\"code_generation\"", "\"deploy\"")).unwrap_err();
        assert!(err.to_string().contains("code_generation"), "{err}");
        let err = load(&RECORD.replace("\"priority\"", "\"priorty\"")).unwrap_err();
        assert!(err.to_string().contains("priorty"), "{err}");
    }

    #[test]
    fn without_stages_and_defaults_names_the_missing_stage() {
        let bare = RECORD.replace(
            r#""generate": {"image": "kiln/busybox", "command": ["true"]},
        "test": {"image": "kiln/busybox", "command": ["true"]}"#,
            r#""retry": {}"#,
        );
        let err = load(&bare).unwrap_err();
        assert!(err.to_string().contains("`generate` is missing"), "{err}");
    }
}
