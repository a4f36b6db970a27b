//! The audit log through the real binary: a run, its policy decision, an approval and the push
//! are recorded in a hash chain, and `kiln audit verify` finds an edited or removed record.

mod common;

use common::{Fixture, HELLO_FILES, default_bundle, kiln, require_busybox};
use serde_json::Value;

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(path: &std::path::Path) -> (Option<i32>, String) {
    let out = kiln().args(["audit", "verify"]).arg(path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn runs_decisions_approvals_and_pushes_are_chained_and_tampering_is_found() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let log = fixture.path("state/audit.jsonl");
    let cfg = fixture.path("kiln.toml");
    std::fs::write(
        &cfg,
        format!("audit_log = {:?}\n", log.display().to_string()),
    )
    .unwrap();
    let job = fixture.job(
        "branch = \"factory/audited\"\nprompt = \"greet kiln\"",
        "cd /kiln/workspace && echo 'echo \"Hello, kiln!\"' > greet.sh && mkdir -p src/auth && echo x > src/auth/a.sh",
        "sh test.sh",
        "",
    );
    let bundle = default_bundle();
    let ran = fixture.run_with(
        kiln().arg("--config").arg(&cfg).arg("run").arg(&job),
        &["--policies", bundle.to_str().unwrap()],
    );
    assert_eq!(ran.code, 10, "{}", ran.stderr);
    let id = ran.job_id();
    let approve = kiln()
        .arg("--config")
        .arg(&cfg)
        .args([
            "approve",
            &id,
            "--by",
            "alice",
            "--note",
            "checked",
            "--artifacts",
        ])
        .arg(fixture.artifacts_root())
        .output()
        .unwrap();
    assert_eq!(
        approve.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );

    let all = records(&log);
    let kinds: Vec<&str> = all.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "job.state",
            "policy.decision",
            "job.state",
            "escalation.approved",
            "push"
        ]
    );
    assert!(all.iter().all(|r| r["job"] == id.as_str()));
    assert_eq!(all[1]["data"]["decision"], "escalate");
    let pinned = all[1]["data"]["policies"][0]["sha256"].as_str().unwrap();
    assert_eq!(pinned.len(), 64, "module hashes are recorded");
    assert_eq!(all[2]["data"]["to"], "policy_escalated");
    assert_eq!(all[3]["data"]["by"], "alice");
    assert_eq!(all[4]["data"]["ref"], "refs/heads/factory/audited");
    assert!(all[4]["data"]["old"].is_null());
    let (code, said) = verify(&log);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("5 records, chain intact"), "{said}");

    // An edited record is named.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        &log,
        text.replacen("\"by\":\"alice\"", "\"by\":\"mallory\"", 1),
    )
    .unwrap();
    let (code, said) = verify(&log);
    assert_eq!(code, Some(14), "{said}");
    assert!(
        said.contains("line 4 (seq 4)") && said.contains("edited"),
        "{said}"
    );

    // So is a removed one.
    let lines: Vec<&str> = text.lines().collect();
    let without: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&log, without.join("\n") + "\n").unwrap();
    let (code, said) = verify(&log);
    assert_eq!(code, Some(14), "{said}");
    assert!(said.contains("line 2"), "{said}");
}
