//! What policy authors run: `kiln policy new` (a crate from the template, with the SDK beside
//! it), `kiln policy build` (cargo for wasm32, reproducibly, then an ABI check and the sha256 to
//! pin) and `kiln policy test` (the policy against its fixture cases).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use super::gate::{GateInput, JobInfo, TestInfo};
use super::host::{Limits, PolicyEngine, Reads};
use super::{Decision, Finding};
use crate::model::Diff;

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

#[derive(Debug, thiserror::Error)]
pub enum AuthorError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "`cargo build` for {WASM_TARGET} failed in {dir}; its errors are above. Is the target installed? `rustup target add {WASM_TARGET}`"
    )]
    Build { dir: PathBuf },
    #[error("cannot run cargo: {0}")]
    Cargo(std::io::Error),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// One module `kiln policy build` made.
#[derive(Debug, Clone)]
pub struct Built {
    pub crate_name: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// Builds the crate or workspace at `dir` for wasm32 in release mode, with source paths remapped
/// so the bytes do not depend on where the folder is, and checks each module against the ABI.
pub fn build(dir: &Path, engine: &PolicyEngine) -> Result<Vec<Built>, AuthorError> {
    let dir = dir.canonicalize().map_err(|e| AuthorError::File {
        path: dir.into(),
        message: e.to_string(),
    })?;
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(AuthorError::Usage(format!(
            "{} has no Cargo.toml; give a policy crate's folder",
            dir.display()
        )));
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let rustflags = format!(
        "--remap-path-prefix={}=/policy --remap-path-prefix={}=/cargo",
        dir.display(),
        cargo_home.display()
    );
    let mut cargo =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "--message-format=json-render-diagnostics",
    ]);
    // A crate's first build writes its Cargo.lock; every later build is held to it.
    if dir.join("Cargo.lock").is_file() {
        cargo.arg("--locked");
    }
    let output = cargo
        .arg("--manifest-path")
        .arg(&manifest)
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(AuthorError::Cargo)?;
    if !output.status.success() {
        return Err(AuthorError::Build { dir });
    }
    let mut built = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let crate_name = message["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for file in message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
        {
            if file.ends_with(".wasm") {
                let path = PathBuf::from(file);
                let bytes = std::fs::read(&path).map_err(|e| AuthorError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let policy = engine.load(&bytes).map_err(|e| AuthorError::File {
                    path: path.clone(),
                    message: format!("not a kiln policy: {e}"),
                })?;
                built.push(Built {
                    crate_name: crate_name.clone(),
                    path,
                    sha256: policy.sha256,
                });
            }
        }
    }
    if built.is_empty() {
        return Err(AuthorError::Usage(format!(
            "{} built no .wasm module; a policy crate needs `crate-type = [\"cdylib\"]`",
            dir.display()
        )));
    }
    Ok(built)
}

/// The files `kiln policy new` writes: the template crate and a copy of the SDK beside it, so
/// the new policy builds on its own.
const TEMPLATE_LIB: &str = include_str!("../../policies/template/src/lib.rs");
const TEMPLATE_CASE: &str = include_str!("../../policies/template/cases/flags-todo.json");
const TEMPLATE_CLEAN_CASE: &str = include_str!("../../policies/template/cases/clean.json");
const TEMPLATE_PATCH: &str = include_str!("../../policies/template/cases/todo.patch");
const SDK_LIB: &str = include_str!("../../policies/sdk/src/lib.rs");
const SDK_GLOB: &str = include_str!("../../policies/sdk/src/glob.rs");

/// Makes a new policy crate named `name` in `parent/name`. Refuses an existing folder.
pub fn new(parent: &Path, name: &str) -> Result<PathBuf, AuthorError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        return Err(AuthorError::Usage(format!(
            "policy name `{name}` must be lowercase letters, digits and dashes, starting with a letter"
        )));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(AuthorError::Usage(format!(
            "{} exists already",
            dir.display()
        )));
    }
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
kiln-policy-sdk = {{ path = "sdk" }}

# A policy is its own workspace, so a parent project's workspace never absorbs it.
[workspace]
members = ["sdk"]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true
debug = false
"#
    );
    let sdk_manifest = r#"[package]
name = "kiln-policy-sdk"
version = "1.0.0"
edition = "2024"

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
postcard = { version = "1", default-features = false, features = ["alloc"] }
"#;
    let lib = TEMPLATE_LIB.replace("name = \"template\"", &format!("name = \"{name}\""));
    let files: [(&str, &str); 8] = [
        ("Cargo.toml", &manifest),
        ("src/lib.rs", &lib),
        ("cases/flags-todo.json", TEMPLATE_CASE),
        ("cases/clean.json", TEMPLATE_CLEAN_CASE),
        ("cases/todo.patch", TEMPLATE_PATCH),
        ("sdk/Cargo.toml", sdk_manifest),
        ("sdk/src/lib.rs", SDK_LIB),
        ("sdk/src/glob.rs", SDK_GLOB),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        let parent = path
            .parent()
            .expect("every file is inside the policy folder");
        std::fs::create_dir_all(parent).map_err(|e| AuthorError::File {
            path: parent.into(),
            message: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|e| AuthorError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(dir)
}

/// A fixture case: a diff (a patch file beside the case, or inline typed), optional job fields
/// and config, and what the policy must answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    description: String,
    /// A unified diff file, relative to the case.
    diff: Option<PathBuf>,
    /// The typed diff, inline, as `diff.json` holds it.
    typed_diff: Option<Diff>,
    #[serde(default)]
    tests_fixed: bool,
    /// Globs of the job's `[test] protect`.
    #[serde(default)]
    protect: Vec<String>,
    #[serde(default = "empty_object")]
    config: serde_json::Value,
    expect: Expect,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: Decision,
    /// When given, the findings must match these one for one (fields left out are not compared).
    findings: Option<Vec<ExpectedFinding>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFinding {
    rule: String,
    path: Option<String>,
    line: Option<u32>,
}

impl ExpectedFinding {
    fn matches(&self, f: &Finding) -> bool {
        self.rule == f.rule
            && self
                .path
                .as_ref()
                .is_none_or(|p| f.path.as_ref() == Some(p))
            && self.line.is_none_or(|l| f.line == Some(l))
    }
}

/// One case's result: `None` when it passed, else what differed, for a person to read.
pub struct CaseResult {
    pub name: String,
    pub mismatch: Option<String>,
}

/// Runs `module` against every `cases/*.json` under `dir`.
pub fn test(
    dir: &Path,
    module: &[u8],
    engine: &PolicyEngine,
) -> Result<Vec<CaseResult>, AuthorError> {
    let policy = engine
        .load(module)
        .map_err(|e| AuthorError::Usage(format!("the module is not a kiln policy: {e}")))?;
    let cases_dir = dir.join("cases");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&cases_dir)
        .map_err(|e| AuthorError::File {
            path: cases_dir.clone(),
            message: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(AuthorError::Usage(format!(
            "{} has no *.json cases",
            cases_dir.display()
        )));
    }
    let mut results = Vec::new();
    for path in paths {
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let file_err = |message: String| AuthorError::File {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(e.to_string()))?;
        let case: Case = serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))?;
        let diff = match (&case.diff, case.typed_diff) {
            (Some(patch), None) => {
                let patch = cases_dir.join(patch);
                let bytes = std::fs::read(&patch)
                    .map_err(|e| file_err(format!("{}: {e}", patch.display())))?;
                crate::workspace::parse_patch(&bytes)
                    .map_err(|e| file_err(format!("{}: {}", patch.display(), e.message())))?
            }
            (None, Some(diff)) => diff,
            _ => {
                return Err(file_err(
                    "give exactly one of `diff` (a patch file) and `typed_diff`".into(),
                ));
            }
        };
        let input = GateInput {
            job: JobInfo {
                id: "policy-test".into(),
                repo: "fixture".into(),
                branch: "factory/policy-test".into(),
                prompt: case.description.clone(),
                tests_fixed: case.tests_fixed,
                protect: case.protect.clone(),
            },
            diff: &diff,
            tests: vec![TestInfo {
                attempt: 1,
                passed: true,
                exit_code: Some(0),
            }],
            reviewer: None,
        };
        // The whole diff, encoded as the gate would for the module's ABI version.
        let common = super::gate::common(&input, Reads::Lines, policy.abi());
        let bytes = super::gate::with_config(&common, policy.abi(), &case.config);
        let (verdict, log) = engine.evaluate_logged(&policy, &bytes, Limits::default());
        let mismatch = match verdict {
            Err(failure) => Some(format!("  the policy failed: {failure}")),
            Ok(got) => compare(&case.expect, got.decision, &got.findings),
        };
        // The policy's own log helps its author see why a case failed.
        let mismatch = mismatch.map(|m| {
            if log.is_empty() {
                m
            } else {
                format!("{m}\n  log: {}", log.trim_end())
            }
        });
        results.push(CaseResult { name, mismatch });
    }
    Ok(results)
}

fn compare(expect: &Expect, decision: Decision, findings: &[Finding]) -> Option<String> {
    let mut problems = Vec::new();
    if expect.decision != decision {
        problems.push(format!(
            "  decision: expected {}, got {}",
            expect.decision.as_str(),
            decision.as_str()
        ));
    }
    if let Some(expected) = &expect.findings {
        let mut unmatched: Vec<&Finding> = findings.iter().collect();
        for e in expected {
            match unmatched.iter().position(|f| e.matches(f)) {
                Some(i) => {
                    unmatched.remove(i);
                }
                None => problems.push(format!(
                    "  - expected finding not found: rule {} path {:?} line {:?}",
                    e.rule, e.path, e.line
                )),
            }
        }
        for f in unmatched {
            problems.push(format!(
                "  + unexpected finding: rule {} path {:?} line {:?}: {}",
                f.rule, f.path, f.line, f.message
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("\n"))
}
