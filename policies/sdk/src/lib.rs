//! The kiln policy SDK: the ABI's input and output as Rust types, a glob matcher, and the
//! [`policy!`] macro that exports what kiln calls. A policy is one function from [`Input`] to
//! [`Output`]; see policies/ABI.md for what travels underneath. Policies built with it speak ABI
//! version 2: the input comes in the binary encoding, read in place rather than parsed.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
pub use serde_json::{self, Value, json};

mod glob;
pub use glob::glob_match;

/// What kiln gives a policy. Text borrows from the input buffer where it can (most diff
/// lines have no escapes), which keeps parsing a large diff cheap.
#[derive(Clone, Debug, Deserialize)]
pub struct Input<'a> {
    pub abi: u32,
    pub job: Job,
    #[serde(borrow)]
    pub diff: Diff<'a>,
    #[serde(default)]
    pub tests: Vec<TestResult>,
    #[serde(default)]
    pub reviewer: Option<Value>,
    /// The policy's table from the bundle; an empty object when there is none.
    #[serde(default)]
    pub config: Value,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Job {
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub prompt: String,
    /// The job says its tests are fixed: no test file should change.
    #[serde(default)]
    pub tests_fixed: bool,
    /// Globs of the job's `[test] protect`: the tests ran with the base version of these paths,
    /// so a change to one is a change the tests never saw.
    #[serde(default)]
    pub protect: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Diff<'a> {
    #[serde(borrow)]
    pub files: Vec<FileDiff<'a>>,
    pub stats: Stats,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Stats {
    pub files_changed: usize,
    pub additions: usize,
    pub deletions: usize,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FileDiff<'a> {
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub old_path: Option<Cow<'a, str>>,
    /// `added`, `modified`, `deleted`, `renamed`, `copied` or `type_changed`.
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    pub old_mode: Option<String>,
    pub new_mode: Option<String>,
    pub binary: bool,
    pub additions: usize,
    pub deletions: usize,
    #[serde(borrow)]
    pub hunks: Vec<Hunk<'a>>,
    /// Why the file comes without hunks: it was past the gate's diff budget.
    #[serde(default, borrow)]
    pub omitted: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Hunk<'a> {
    #[serde(borrow)]
    pub header: Cow<'a, str>,
    pub old_start: u32,
    pub old_lines: u32,
    pub new_start: u32,
    pub new_lines: u32,
    #[serde(borrow)]
    pub lines: Vec<Line<'a>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Line<'a> {
    /// `context`, `added` or `removed`.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    pub old_line: Option<u32>,
    pub new_line: Option<u32>,
    #[serde(borrow)]
    pub content: Cow<'a, str>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TestResult {
    pub attempt: u32,
    pub passed: bool,
    pub exit_code: Option<i64>,
}

impl<'a> FileDiff<'a> {
    /// Added lines with their line number in the new file.
    pub fn added(&self) -> impl Iterator<Item = (u32, &str)> {
        self.lines_of("added").map(|l| (l.new_line.unwrap_or(0), l.content.as_ref()))
    }

    /// Removed lines with their line number in the old file.
    pub fn removed(&self) -> impl Iterator<Item = (u32, &str)> {
        self.lines_of("removed").map(|l| (l.old_line.unwrap_or(0), l.content.as_ref()))
    }

    fn lines_of<'s>(&'s self, kind: &'s str) -> impl Iterator<Item = &'s Line<'a>> {
        self.hunks.iter().flat_map(|h| h.lines.iter()).filter(move |l| l.kind == kind)
    }

    /// The paths this change touches: the path, and the old one of a rename.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.path.as_ref()).chain(self.old_path.as_deref())
    }
}

/// A verdict, ordered by severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Review,
    Escalate,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Note,
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub severity: Severity,
}

/// What a policy returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub decision: Decision,
    pub findings: Vec<Finding>,
}

impl Output {
    pub fn new(decision: Decision) -> Self {
        Output { decision, findings: Vec::new() }
    }

    /// Records a finding and raises the decision to at least `decision`.
    pub fn find(&mut self, decision: Decision, rule: &str, message: String, path: Option<&str>, line: Option<u32>) {
        self.decision = self.decision.max(decision);
        let severity = match decision {
            Decision::Allow => Severity::Note,
            Decision::Review | Decision::Escalate => Severity::Warning,
            Decision::Deny => Severity::Error,
        };
        self.findings.push(Finding { rule: rule.into(), message, path: path.map(String::from), line, severity });
    }
}

/// Writes to the policy's log (`kiln.log`); kiln keeps the first 64 KiB of an evaluation's log
/// and shows it to the author in `kiln policy test` and in the gate's JSON result.
pub fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "kiln")]
        unsafe extern "C" {
            #[link_name = "log"]
            fn kiln_log(ptr: i32, len: i32);
        }
        // SAFETY: kiln only reads `len` bytes at `ptr` from this module's own memory.
        unsafe { kiln_log(message.as_ptr() as i32, message.len() as i32) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{message}");
}

/// Reads a config field, or its default when absent; a field of the wrong type is an error.
pub fn config<T: serde::de::DeserializeOwned>(input: &Input<'_>, key: &str, default: T) -> Result<T, String> {
    match input.config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("config `{key}`: {e}")),
    }
}

/// A config's `decision` field, limited to the decisions a policy may choose.
pub fn config_decision(input: &Input<'_>, default: Decision) -> Result<Decision, String> {
    config(input, "decision", default)
}

/// The plumbing the [`policy!`] macro exports; not for direct use.
#[doc(hidden)]
pub mod abi {
    use serde::Deserialize;

    use super::{Decision, Diff, Input, Job, Output, TestResult};

    /// The ABI version policies built with this SDK speak: the input in the binary encoding.
    pub const VERSION: i32 = 2;

    /// ABI 2's input as it travels (policies/ABI.md): the fields of [`Input`] in order, text
    /// borrowed from kiln's buffer, the reviewer's verdict and the config as JSON text.
    #[derive(Deserialize)]
    struct Wire<'a> {
        abi: u32,
        job: Job,
        #[serde(borrow)]
        diff: Diff<'a>,
        tests: Vec<TestResult>,
        #[serde(borrow)]
        reviewer: Option<&'a str>,
        #[serde(borrow)]
        config: &'a str,
    }

    /// Reads ABI 2's binary input into an [`Input`] whose text borrows from `bytes`.
    pub fn read_input(bytes: &[u8]) -> Result<Input<'_>, String> {
        let wire: Wire = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        let json = |field: &str, text: &str| {
            serde_json::from_str(text).map_err(|e| format!("`{field}` is not JSON: {e}"))
        };
        Ok(Input {
            abi: wire.abi,
            job: wire.job,
            diff: wire.diff,
            tests: wire.tests,
            reviewer: wire.reviewer.map(|r| json("reviewer", r)).transpose()?,
            config: json("config", wire.config)?,
        })
    }

    pub fn alloc(len: i32) -> i32 {
        let mut buffer = Vec::<u8>::with_capacity(len.max(0) as usize);
        let ptr = buffer.as_mut_ptr();
        std::mem::forget(buffer);
        ptr as i32
    }

    /// Leaks `bytes` and returns their location packed as `(ptr << 32) | len`.
    pub fn leak(bytes: Vec<u8>) -> i64 {
        let bytes = bytes.into_boxed_slice();
        let len = bytes.len() as u64;
        let ptr = Box::into_raw(bytes) as *mut u8 as u32 as u64;
        ((ptr << 32) | len) as i64
    }

    /// Reads the input, runs `evaluate`, serializes the output. An input or config the policy
    /// cannot read is a deny, never an allow.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be the bytes kiln wrote after calling `kiln_alloc(len)`.
    pub unsafe fn evaluate(ptr: i32, len: i32, evaluate: fn(&Input<'_>) -> Result<Output, String>) -> i64 {
        // SAFETY: kiln wrote `len` bytes at `ptr`, which `alloc` returned for exactly that length.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
        let output = match read_input(bytes) {
            Ok(input) => evaluate(&input).unwrap_or_else(|e| failed(&e)),
            Err(e) => failed(&format!("cannot read the input: {e}")),
        };
        leak(serde_json::to_vec(&output).expect("an Output always serializes"))
    }

    fn failed(message: &str) -> Output {
        let mut output = Output::new(Decision::Deny);
        output.find(Decision::Deny, "policy-error", message.to_string(), None, None);
        output
    }
}

/// Exports a policy: `policy!(name = "...", version = "...", description = "...",
/// config_schema = r#"{...}"#, [reads = "lines" | "files" | "stats",] evaluate)` where
/// `evaluate: fn(&Input) -> Result<Output, String>`. `reads` says how much of the diff the policy
/// looks at (default `lines`); kiln leaves out the rest, which makes large diffs cheap for
/// policies that only need paths or counts.
#[macro_export]
macro_rules! policy {
    (name = $name:expr, version = $version:expr, description = $description:expr,
     config_schema = $schema:expr, $evaluate:path) => {
        $crate::policy!(name = $name, version = $version, description = $description,
                        config_schema = $schema, reads = "lines", $evaluate);
    };
    (name = $name:expr, version = $version:expr, description = $description:expr,
     config_schema = $schema:expr, reads = $reads:expr, $evaluate:path) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_abi_version() -> i32 {
            $crate::abi::VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_alloc(len: i32) -> i32 {
            $crate::abi::alloc(len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_evaluate(ptr: i32, len: i32) -> i64 {
            // SAFETY: kiln calls this with the buffer it got from `kiln_alloc`, as the ABI says.
            unsafe { $crate::abi::evaluate(ptr, len, $evaluate) }
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_metadata() -> i64 {
            let schema: $crate::Value = $crate::serde_json::from_str($schema).unwrap_or($crate::Value::Null);
            let metadata = $crate::json!({
                "name": $name, "version": $version, "description": $description,
                "config_schema": schema, "reads": $reads,
            });
            $crate::abi::leak($crate::serde_json::to_vec(&metadata).expect("metadata serializes"))
        }
    };
}
