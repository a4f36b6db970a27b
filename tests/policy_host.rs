//! Hostile policy modules, as WAT: every one must end in `deny` (or be refused at load), within
//! bounded time and memory, and none may crash kiln or make it allow.

use std::time::{Duration, Instant};

use kiln::policy::{Decision, PolicyEngine, PolicyFailure, PolicyLimits, Verdict};

const INPUT: &[u8] = br#"{"abi":1,"job":{"id":"x","repo":"r","branch":"factory/x","prompt":"p"},"diff":{"files":[],"stats":{"files_changed":0,"additions":0,"deletions":0}},"tests":[],"reviewer":null,"config":{}}"#;

/// A module with the ABI's exports around `evaluate_body`, which must leave an i64 on the stack.
fn module(extra: &str, evaluate_body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
            {extra}
            (memory (export "memory") 1)
            (global $next (mut i32) (i32.const 4096))
            (data (i32.const 0) "{{\"decision\":\"allow\",\"findings\":[]}}")
            (data (i32.const 64) "{{\"name\":\"t\",\"version\":\"1\"}}")
            (func (export "kiln_abi_version") (result i32) (i32.const 1))
            (func (export "kiln_alloc") (param $len i32) (result i32)
              (local $p i32)
              (local.set $p (global.get $next))
              (global.set $next (i32.add (global.get $next) (local.get $len)))
              (local.get $p))
            (func (export "kiln_evaluate") (param i32 i32) (result i64) {evaluate_body})
            (func (export "kiln_metadata") (result i64) (i64.const 274877906970)))"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad fixture: {e}\n{text}"))
}

fn engine() -> PolicyEngine {
    PolicyEngine::new(None).unwrap()
}

fn evaluate(bytes: &[u8]) -> Result<Verdict, PolicyFailure> {
    let engine = engine();
    let policy = engine.load(bytes)?;
    engine.evaluate(&policy, INPUT, PolicyLimits::default())
}

#[test]
fn a_well_formed_module_allows() {
    let verdict = evaluate(&module("", "(i64.const 34)")).unwrap();
    assert_eq!(verdict.decision, Decision::Allow);
    let engine = engine();
    let metadata = engine
        .metadata(&engine.load(&module("", "(i64.const 34)")).unwrap())
        .unwrap();
    assert_eq!(
        (metadata.name.as_str(), metadata.version.as_str()),
        ("t", "1")
    );
}

#[test]
fn an_infinite_loop_runs_out_of_fuel_quickly() {
    let started = Instant::now();
    let failure = evaluate(&module("", "(loop $l (br $l)) (i64.const 0)")).unwrap_err();
    assert_eq!(failure, PolicyFailure::OutOfFuel);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(Verdict::failed("loop", &failure).decision, Decision::Deny);
}

#[test]
fn a_memory_grow_bomb_hits_the_limit() {
    // Grows until refused, then would claim 100 MB of output: the refused grow traps first.
    let body = "(block $done (loop $l (br_if $done (i32.eq (memory.grow (i32.const 16)) (i32.const -1))) (br $l))) (i64.const 104857600)";
    let failure = evaluate(&module("", body)).unwrap_err();
    assert!(matches!(failure, PolicyFailure::Trap(_)), "{failure:?}");
}

#[test]
fn a_module_that_ignores_a_failed_grow_and_allows_is_denied() {
    // Asks for far more than the 64 MiB limit, drops the answer, and says allow.
    let failure = evaluate(&module(
        "",
        "(drop (memory.grow (i32.const 60000))) (i64.const 34)",
    ))
    .unwrap_err();
    assert!(matches!(failure, PolicyFailure::Trap(_)), "{failure:?}");
    assert_eq!(Verdict::failed("grow", &failure).decision, Decision::Deny);
}

#[test]
fn output_outside_memory_or_over_the_cap_is_refused() {
    assert_eq!(
        evaluate(&module("", "(i64.const 0x0000fff0_00000100)")).unwrap_err(),
        PolicyFailure::OutputOutOfBounds
    );
    assert_eq!(
        evaluate(&module("", "(i64.const 0x00000000_7fffffff)")).unwrap_err(),
        PolicyFailure::OutputTooLarge(0x7fff_ffff)
    );
}

#[test]
fn traps_are_denials() {
    assert!(matches!(
        evaluate(&module("", "unreachable")).unwrap_err(),
        PolicyFailure::Trap(_)
    ));
    let failure = evaluate(&module(
        "",
        "(drop (i32.div_u (i32.const 1) (i32.const 0))) (i64.const 34)",
    ))
    .unwrap_err();
    assert!(
        matches!(failure, PolicyFailure::Trap(ref m) if m.contains("divide by zero")),
        "{failure}"
    );
}

#[test]
fn wasi_and_unknown_imports_are_refused_at_load() {
    let engine = engine();
    for import in [
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "now" (func (result i64)))"#,
        r#"(import "kiln" "log" (func (param i64)))"#,
    ] {
        let failure = engine
            .load(&module(import, "(i64.const 34)"))
            .err()
            .expect("refused");
        assert!(
            matches!(failure, PolicyFailure::ForbiddenImport(_)),
            "{import}: {failure}"
        );
    }
    let logging = module(
        r#"(import "kiln" "log" (func (param i32 i32)))"#,
        "(i64.const 34)",
    );
    assert!(engine.load(&logging).is_ok());
}

#[test]
fn a_wrong_abi_version_or_missing_export_is_refused() {
    let wrong = wat::parse_str(
        r#"(module (memory (export "memory") 1)
            (func (export "kiln_abi_version") (result i32) (i32.const 3))
            (func (export "kiln_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "kiln_evaluate") (param i32 i32) (result i64) (i64.const 0))
            (func (export "kiln_metadata") (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    assert_eq!(
        engine().load(&wrong).err().unwrap(),
        PolicyFailure::AbiMismatch(3),
        "an unknown version is refused at load"
    );
    let missing = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "kiln_abi_version") (result i32) (i32.const 1)))"#).unwrap();
    assert!(matches!(
        engine().load(&missing).err().unwrap(),
        PolicyFailure::MissingExport(_)
    ));
    assert!(matches!(
        engine().load(b"not wasm at all").err().unwrap(),
        PolicyFailure::Invalid(_)
    ));
}

#[test]
fn malformed_json_and_unknown_decisions_are_refused() {
    for (data, len) in [
        ("{\\\"decision\\\":\\\"maybe\\\"}", 20),
        ("not json", 8),
        ("{\\\"decision\\\":\\\"allow\\\",\\\"extra\\\":1}", 30),
    ] {
        let extra = format!(r#"(data (i32.const 2048) "{data}")"#);
        let body = format!("(i64.const {})", (2048i64 << 32) | len);
        let failure = evaluate(&module(&extra, &body)).unwrap_err();
        assert!(
            matches!(failure, PolicyFailure::MalformedOutput(_)),
            "{data}: {failure}"
        );
    }
}

#[test]
fn a_huge_initial_memory_is_refused() {
    let big = wat::parse_str(
        r#"(module (memory (export "memory") 16384)
            (func (export "kiln_abi_version") (result i32) (i32.const 1))
            (func (export "kiln_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "kiln_evaluate") (param i32 i32) (result i64) (i64.const 0))
            (func (export "kiln_metadata") (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    assert!(matches!(
        evaluate(&big).unwrap_err(),
        PolicyFailure::Instantiate(_)
    ));
}

#[test]
fn the_precompiled_cache_is_used_and_gives_the_same_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let bytes = module("", "(i64.const 34)");
    let engine = PolicyEngine::new(Some(cache.clone())).unwrap();
    let first = engine.load(&bytes).unwrap();
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(artifacts.len(), 1);
    assert!(artifacts[0].to_string_lossy().starts_with(&first.sha256));
    let again = PolicyEngine::new(Some(cache)).unwrap();
    let second = again.load(&bytes).unwrap();
    assert_eq!(
        again
            .evaluate(&second, INPUT, PolicyLimits::default())
            .unwrap()
            .decision,
        Decision::Allow
    );
}

#[test]
fn the_worked_example_in_the_abi_document_runs() {
    let doc = include_str!("../policies/ABI.md");
    let start = doc.find("```wat\n").expect("ABI.md has a wat example") + "```wat\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let bytes = wat::parse_str(&doc[start..end]).unwrap();
    let engine = engine();
    let policy = engine.load(&bytes).unwrap();
    assert_eq!(
        engine
            .evaluate(&policy, INPUT, PolicyLimits::default())
            .unwrap()
            .decision,
        Decision::Allow
    );
    assert_eq!(engine.metadata(&policy).unwrap().name, "allow-all");
}

#[test]
fn the_log_is_kept_and_capped_at_64_kib() {
    // Logs 1 KiB a hundred times, then allows.
    let extra = r#"(import "kiln" "log" (func $log (param i32 i32)))"#;
    let body = "(local $i i32) (block $done (loop $l (br_if $done (i32.ge_u (local.get $i) (i32.const 100))) (call $log (i32.const 0) (i32.const 1024)) (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))) (i64.const 34)";
    let bytes = module(extra, body);
    let engine = engine();
    let policy = engine.load(&bytes).unwrap();
    let (verdict, log) = engine.evaluate_logged(&policy, INPUT, PolicyLimits::default());
    assert_eq!(verdict.unwrap().decision, Decision::Allow);
    assert_eq!(log.len(), 64 << 10);
    assert!(log.starts_with("{\"decision\":\"allow\""));
    // Out-of-bounds log calls are ignored, never a crash.
    let wild = module(
        extra,
        "(call $log (i32.const -1) (i32.const 100)) (i64.const 34)",
    );
    let (verdict, log) =
        engine.evaluate_logged(&engine.load(&wild).unwrap(), INPUT, PolicyLimits::default());
    assert_eq!(verdict.unwrap().decision, Decision::Allow);
    assert!(log.is_empty());
}

#[test]
fn a_cache_other_users_could_write_is_refused_and_a_planted_file_not_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = PolicyEngine::new(Some(open.clone()))
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("open to other users"),
        "{refused}"
    );
    // A link to a folder is refused too, whatever it points at.
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    let refused = PolicyEngine::new(Some(link)).err().expect("refused");
    assert!(refused.to_string().contains("is a link"), "{refused}");
    // In a private cache, a cached file others could have written is compiled afresh: another
    // module's compiled code planted under this module's name is never loaded.
    let allows = module("", "(i64.const 34)");
    let engine = PolicyEngine::new(Some(private.clone())).unwrap();
    engine.load(&allows).unwrap();
    let cached = std::fs::read_dir(&private)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let elsewhere = dir.path().join("elsewhere");
    let traps = module("", "(unreachable)");
    PolicyEngine::new(Some(elsewhere.clone()))
        .unwrap()
        .load(&traps)
        .unwrap();
    let planted = std::fs::read_dir(&elsewhere)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&planted, &cached).unwrap();
    let judge = |engine: &PolicyEngine| {
        let policy = engine.load(&allows).unwrap();
        engine.evaluate(&policy, INPUT, PolicyLimits::default())
    };
    // Planted with kiln's own mode, the file is kiln's word (the folder is kiln's alone).
    std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(judge(&PolicyEngine::new(Some(private.clone())).unwrap()).is_err());
    // Writable by others, it is not trusted: the module is compiled from its bytes again.
    std::fs::copy(&planted, &cached).unwrap();
    std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(0o666)).unwrap();
    let verdict = judge(&PolicyEngine::new(Some(private)).unwrap()).unwrap();
    assert_eq!(verdict.decision, Decision::Allow);
}

mod any_output {
    use super::*;
    use proptest::prelude::*;

    /// `text` as WAT data: every byte escaped.
    fn wat_bytes(text: &[u8]) -> String {
        text.iter().map(|b| format!("\\{b:02x}")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever a module answers with, kiln takes exactly the well-formed verdicts and refuses
        /// the rest (a refusal is a denial); it never panics.
        #[test]
        fn a_module_answer_is_a_verdict_only_when_well_formed(
            text in prop_oneof![
                "\\{\"decision\": *\"(allow|deny|review|escalate|maybe)\"(, *\"findings\": *\\[.{0,60}\\])?\\}",
                ".{0,80}",
            ],
        ) {
            let bytes = text.as_bytes();
            let wat = format!(
                r#"(module (memory (export "memory") 1)
                    (data (i32.const 0) "{data}")
                    (data (i32.const 4096) "{{\"name\":\"t\",\"version\":\"1\"}}")
                    (func (export "kiln_abi_version") (result i32) (i32.const 1))
                    (func (export "kiln_alloc") (param i32) (result i32) (i32.const 8192))
                    (func (export "kiln_evaluate") (param i32 i32) (result i64) (i64.const {len}))
                    (func (export "kiln_metadata") (result i64) (i64.const {meta})))"#,
                data = wat_bytes(bytes),
                len = bytes.len(),
                meta = (4096i64 << 32) | 26,
            );
            let module = wat::parse_str(&wat).unwrap();
            let answer = evaluate(&module);
            let well_formed = serde_json::from_slice::<Verdict>(bytes).is_ok();
            prop_assert_eq!(answer.is_ok(), well_formed, "{:?} -> {:?}", text, answer);
            if let Err(failure) = answer {
                prop_assert_eq!(Verdict::failed("any", &failure).decision, Decision::Deny);
            }
        }
    }
}
