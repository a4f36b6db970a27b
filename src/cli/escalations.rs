//! `kiln escalations [list | show ID]`, `kiln approve ID`, `kiln reject ID`: the human in the
//! loop. Escalations live in the job artifacts folder (`<artifacts>/<id>/escalation/`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln::config::Config;
use kiln::escalation;
use kiln::{Error, ExitCode};

#[derive(Subcommand)]
pub enum EscalationsCommand {
    /// Every escalation, oldest first: id, state, why, and the summary page.
    List {
        #[command(flatten)]
        root: Root,
        #[arg(long)]
        json: bool,
    },
    /// One escalation's record (`escalation.json`) and its decision, as JSON.
    Show {
        id: String,
        #[command(flatten)]
        root: Root,
    },
    /// Every escalation as one JSON line (schema `kiln.escalation-export/v1`): its record, its
    /// decision, and its agents' model calls whole (with `[egress] transcripts`); for training
    /// and review tools.
    Export {
        #[command(flatten)]
        root: Root,
        /// Only escalations a human has decided.
        #[arg(long)]
        decided: bool,
    },
}

#[derive(Args)]
pub struct Root {
    /// The artifacts root the jobs ran with. Default: operator config, `.kiln/jobs`.
    #[arg(long)]
    artifacts: Option<PathBuf>,
}

impl Root {
    fn path(self, config: &Config) -> PathBuf {
        self.artifacts
            .unwrap_or_else(|| config.artifacts_dir.clone())
    }
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The escalated job's id.
    id: String,
    /// Who approves (recorded).
    #[arg(long)]
    by: String,
    #[arg(long)]
    note: Option<String>,
    #[command(flatten)]
    root: Root,
}

#[derive(Args)]
pub struct RejectArgs {
    /// The escalated job's id.
    id: String,
    /// Who rejects (recorded).
    #[arg(long)]
    by: String,
    /// Why (recorded; required).
    #[arg(long)]
    note: String,
    #[command(flatten)]
    root: Root,
}

pub fn exec(config: &Config, command: EscalationsCommand) -> Result<ExitCode, Error> {
    match command {
        EscalationsCommand::List { root, json } => {
            let found = escalation::list(&root.path(config))?;
            if json {
                let rows: Vec<_> = found
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "id": f.escalation.id,
                            "state": f.state(),
                            "kind": f.escalation.kind,
                            "created_at": f.escalation.created_at,
                            "reason": f.escalation.reason,
                            "branch": f.escalation.publish.branch,
                            "summary_html": f.dir.join("summary.html"),
                        })
                    })
                    .collect();
                super::print_json(&rows)?;
            } else {
                for f in &found {
                    println!(
                        "{}  {:<8}  {}  {}",
                        f.escalation.id,
                        f.state(),
                        f.escalation.reason,
                        f.dir.join("summary.html").display()
                    );
                }
                if found.is_empty() {
                    eprintln!("no escalations");
                }
            }
            Ok(ExitCode::Success)
        }
        EscalationsCommand::Export { root, decided } => {
            use std::io::Write;
            let found = escalation::list(&root.path(config))?;
            let mut out = std::io::stdout().lock();
            for f in found.iter().filter(|f| !decided || f.decision.is_some()) {
                let attempts: Vec<u32> = f.escalation.attempts.iter().map(|a| a.attempt).collect();
                let job_dir = f.dir.parent().unwrap_or(&f.dir);
                let calls: Vec<serde_json::Value> =
                    escalation::transcript::lines(job_dir, &attempts)
                        .into_iter()
                        .map(|(attempt, stage, call)| {
                            serde_json::json!({"attempt": attempt, "stage": stage, "call": call})
                        })
                        .collect();
                let line = serde_json::json!({
                    "schema": "kiln.escalation-export/v1",
                    "state": f.state(),
                    "escalation": f.escalation,
                    "decision": f.decision,
                    "calls": calls,
                });
                writeln!(out, "{line}").map_err(Error::io("cannot write to stdout"))?;
            }
            Ok(ExitCode::Success)
        }
        EscalationsCommand::Show { id, root } => {
            let found = escalation::open(&root.path(config), &id)?;
            super::print_json(&serde_json::json!({
                "state": found.state(),
                "escalation": found.escalation,
                "decision": found.decision,
                "summary_html": found.dir.join("summary.html"),
            }))?;
            Ok(ExitCode::Success)
        }
    }
}

/// Approves and publishes (and merges, when the job has a target); exits 0 once done, 12 when
/// the merge queue could not land the change.
pub async fn approve(config: &Config, args: ApproveArgs) -> Result<ExitCode, Error> {
    let root = args.root.path(config);
    let progress = kiln::run::Progress::default();
    let ctx = kiln::run::Context::open(config.clone())?;
    let approved =
        kiln::run::approve(&root, &args.id, &args.by, args.note, &ctx, &progress).await?;
    progress.line(&format!(
        "approved by {}: {} published as {} in {}",
        args.by.trim(),
        &approved.commit[..10],
        approved.branch,
        approved.out
    ));
    if let Some(merged) = &approved.merged {
        progress.line(&format!(
            "merged into {}: {} (re-tested on {})",
            merged.target,
            &merged.commit[..10],
            &merged.onto[..10]
        ));
    }
    if let Some(why) = &approved.not_merged {
        progress.line(&format!("not merged: {why}"));
    }
    Ok(approved.exit_code)
}

/// Rejects; the job ends as denied (exit 11).
pub async fn reject(config: &Config, args: RejectArgs) -> Result<ExitCode, Error> {
    let root = args.root.path(config);
    let ctx = kiln::run::Context::open(config.clone())?;
    kiln::run::reject(&root, &args.id, &args.by, &args.note, &ctx).await?;
    eprintln!("rejected by {}: nothing is published", args.by.trim());
    Ok(ExitCode::PolicyDeny)
}
