//! `kiln bench overhead`: the per-container cost of kiln's sandbox (create, attach, start, wait,
//! inspect, remove, every default on) against bare `docker run --rm` of the same image and
//! command, measured in the same run, interleaved so both see the same machine; and a stage's
//! start: from asking for a container made ahead to its command's first output, against
//! `docker run`'s time to the same point.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod context;
mod egress;

pub use context::{RepoFigures, Scores, context};
pub use egress::{EgressFigures, Pair, egress};

use crate::error::Error;
use crate::model::JobId;
use crate::model::Limits;
use crate::sandbox::{ContainerSpec, Runtime, Sandbox, WorkVolume};

pub struct Figures {
    pub name: &'static str,
    pub samples: Vec<Duration>,
}

impl Figures {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank]
    }
}

/// One runtime's figures of [`overhead`]: kiln's sandbox, the bare baseline, and kiln with a
/// workspace volume.
pub struct RuntimeFigures {
    /// `None`: the engine's default runtime.
    pub runtime: Option<Runtime>,
    pub kiln: Figures,
    pub bare: Figures,
    pub with_volume: Figures,
    /// A stage's start as a job sees it: its container made ahead (while other work went on),
    /// from asking for it to its first output.
    pub start_kiln: Figures,
    /// `docker run`'s time from being run to the same command's first output.
    pub start_bare: Figures,
}

/// Runs `runs` of each, under each of `runtimes` (`None` for the engine's default), all
/// interleaved so every runtime sees the same machine.
pub async fn overhead(
    sandbox: &Sandbox,
    image: &str,
    runs: usize,
    runtimes: &[Option<Runtime>],
) -> Result<Vec<RuntimeFigures>, Error> {
    let job = JobId::new();
    let spec = ContainerSpec {
        image: image.into(),
        command: vec!["true".into()],
        env: vec![("KILN_JOB_ID".into(), job.to_string())],
        limits: Limits::default(),
        loosened: Vec::new(),
        volume: None,
        volume_read_only: false,
        out_volume: None,
        network: None,
        runtime: None,
        labels: crate::sandbox::job_labels(&job),
    };
    let figures = |name: &'static str| Figures {
        name,
        samples: Vec::new(),
    };
    let mut all: Vec<RuntimeFigures> = runtimes
        .iter()
        .map(|runtime| RuntimeFigures {
            runtime: runtime.clone(),
            kiln: figures("kiln sandbox (create+start+wait+logs+remove)"),
            bare: figures("docker run --rm --network none"),
            with_volume: figures("kiln sandbox + workspace volume (informational)"),
            start_kiln: figures("stage start, made ahead (ask -> first output)"),
            start_bare: figures("docker run (run -> first output)"),
        })
        .collect();
    // One warm-up of each, not counted.
    for runtime in runtimes {
        let spec = ContainerSpec {
            runtime: runtime.clone(),
            ..spec.clone()
        };
        sandbox.run(&spec, Duration::from_secs(60)).await?;
        docker_run(image, runtime.as_ref()).await?;
    }
    for _ in 0..runs {
        for figures in &mut all {
            let spec = ContainerSpec {
                runtime: figures.runtime.clone(),
                ..spec.clone()
            };
            let started = Instant::now();
            let outcome = sandbox.run(&spec, Duration::from_secs(60)).await?;
            figures.kiln.samples.push(started.elapsed());
            if !outcome.succeeded() {
                return Err(Error::Internal(format!(
                    "benchmark container failed: {:?}",
                    outcome.exit_code
                )));
            }

            let started = Instant::now();
            docker_run(image, figures.runtime.as_ref()).await?;
            figures.bare.samples.push(started.elapsed());

            let started = Instant::now();
            let volume =
                WorkVolume::create(sandbox, &job, "bench", Limits::default().workspace).await?;
            let ran = sandbox
                .run(
                    &ContainerSpec {
                        volume: Some(volume.name().into()),
                        ..spec.clone()
                    },
                    Duration::from_secs(60),
                )
                .await;
            volume.remove().await;
            ran?;
            figures.with_volume.samples.push(started.elapsed());

            let (kiln, bare) = stage_start(sandbox, image, &spec, figures.runtime.as_ref()).await?;
            figures.start_kiln.samples.push(kiln);
            figures.start_bare.samples.push(bare);
        }
    }
    sandbox.reap_job(&job).await?;
    Ok(all)
}

/// One stage start each way: kiln's container made ahead (untimed, as a job makes it while
/// other work goes on), then asked for and timed to its first output; and `docker run` timed
/// from being run to the same command's first output.
async fn stage_start(
    sandbox: &Sandbox,
    image: &str,
    spec: &ContainerSpec,
    runtime: Option<&Runtime>,
) -> Result<(Duration, Duration), Error> {
    let spec = ContainerSpec {
        command: vec!["echo".into(), "ready".into()],
        runtime: runtime.cloned(),
        ..spec.clone()
    };
    let mut made = sandbox.create(&spec).await?;
    let cap = spec.limits.output.bytes() as usize;
    let asked = Instant::now();
    let outcome = sandbox
        .run_container(&mut made, cap, Duration::from_secs(60), asked, None)
        .await;
    made.remove().await;
    let kiln = outcome?
        .first_output
        .ok_or_else(|| Error::Internal("the stage-start container wrote nothing".into()))?;

    let mut docker = tokio::process::Command::new("docker");
    docker.args(["run", "--rm", "--network", "none"]);
    if let Some(runtime) = runtime {
        docker.args(["--runtime", &runtime.name]);
    }
    let started = Instant::now();
    let mut child = docker
        .args([image, "echo", "ready"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(Error::io("cannot run the docker CLI for the baseline"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut first = [0u8; 1];
    let read = tokio::io::AsyncReadExt::read(&mut stdout, &mut first).await;
    let bare = started.elapsed();
    let status = child
        .wait()
        .await
        .map_err(Error::io("cannot run the docker CLI for the baseline"))?;
    if !matches!(read, Ok(1)) || !status.success() {
        return Err(Error::Internal(format!(
            "baseline `docker run` wrote nothing or exited with {status}"
        )));
    }
    Ok((kiln, bare))
}

/// A bare `docker run --rm` under `runtime` (the engine's default when `None`).
async fn docker_run(image: &str, runtime: Option<&Runtime>) -> Result<(), Error> {
    let mut docker = tokio::process::Command::new("docker");
    docker.args(["run", "--rm", "--network", "none"]);
    if let Some(runtime) = runtime {
        docker.args(["--runtime", &runtime.name]);
    }
    let status = docker
        .args([image, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(Error::io("cannot run the docker CLI for the baseline"))?;
    if !status.success() {
        return Err(Error::Internal(format!(
            "baseline `docker run` exited with {status}"
        )));
    }
    Ok(())
}

/// Figures of `kiln bench policy`.
pub struct PolicyFigures {
    /// Mean microseconds per evaluation of each policy, in bundle order.
    pub per_policy: Vec<(String, u64)>,
    pub warm: Figures,
    /// The baseline: the host parsing the same input JSON once with serde_json.
    pub parse: Figures,
    pub cold_compiled: Figures,
    pub cold_cached: Figures,
    pub input_bytes: usize,
}

/// A diff of `files` files with `lines` added lines each, as a generator might write.
pub fn synthetic_diff(files: usize, lines: usize) -> crate::model::Diff {
    use crate::model::{Diff, DiffStats, FileDiff, FileStatus, Hunk, Line, LineKind};
    let files: Vec<FileDiff> = (0..files)
        .map(|f| FileDiff {
            path: format!("src/module_{f:03}/handler.rs"),
            old_path: None,
            status: FileStatus::Modified,
            old_mode: Some("100644".into()),
            new_mode: Some("100644".into()),
            binary: false,
            additions: lines,
            deletions: 0,
            hunks: vec![Hunk {
                header: format!("@@ -1,0 +1,{lines} @@"),
                old_start: 1,
                old_lines: 0,
                new_start: 1,
                new_lines: lines as u32,
                lines: (0..lines)
                    .map(|l| Line {
                        kind: LineKind::Added,
                        old_line: None,
                        new_line: Some(l as u32 + 1),
                        content: format!(
                            "    let value_{l} = compute(input, {l}); // handler {f} line {l}"
                        ),
                    })
                    .collect(),
            }],
            omitted: None,
        })
        .collect();
    Diff {
        stats: DiffStats {
            files_changed: files.len(),
            additions: files.len() * lines,
            deletions: 0,
        },
        files,
    }
}

/// Warm evaluations of the whole bundle, and cold starts (a new engine loading every module)
/// compiling from scratch against loading the precompiled cache, interleaved.
pub fn policy_gate(bundle_path: &std::path::Path, runs: usize) -> Result<PolicyFigures, Error> {
    use crate::policy::{Bundle, Gate, GateInput, JobInfo, PolicyEngine, TestInfo};
    let bundle = Bundle::load(bundle_path, crate::config::PolicyConfig::default().max_fuel)?;
    let diff = synthetic_diff(200, 50);
    let input = GateInput {
        job: JobInfo {
            id: "bench".into(),
            repo: "bench".into(),
            branch: "factory/bench".into(),
            prompt: "bench".into(),
            tests_fixed: false,
            protect: Vec::new(),
        },
        diff: &diff,
        tests: vec![TestInfo {
            attempt: 1,
            passed: true,
            exit_code: Some(0),
        }],
        reviewer: None,
    };
    let input_json = serde_json::to_vec(&input).map_err(Error::Json)?;
    let input_bytes = input_json.len();
    let cache = tempfile::tempdir().map_err(Error::io("cannot make a cache folder"))?;
    let engine = |cached: bool| {
        PolicyEngine::new(cached.then(|| cache.path().join("policies"))).map_err(Error::from)
    };
    let gate = Gate::new(engine(true)?, bundle.clone());
    let result = gate.evaluate(&input);
    if let Some(failed) = result
        .policies
        .iter()
        .find(|p| p.findings.iter().any(|f| f.rule == "kiln.policy-failure"))
    {
        return Err(Error::Internal(format!(
            "policy {} failed on the benchmark input: {:?}",
            failed.name, failed.findings
        )));
    }
    let mut warm = Figures {
        name: "warm: whole bundle, one evaluation",
        samples: Vec::new(),
    };
    let mut parse = Figures {
        name: "host: serde_json parse of the same input, once",
        samples: Vec::new(),
    };
    let mut cold_compiled = Figures {
        name: "cold: load every module, compiling",
        samples: Vec::new(),
    };
    let mut cold_cached = Figures {
        name: "cold: load every module, precompiled cache",
        samples: Vec::new(),
    };
    let mut per_policy: Vec<(String, u64)> = result
        .policies
        .iter()
        .map(|p| (p.name.clone(), 0))
        .collect();
    for _ in 0..runs {
        let started = Instant::now();
        let parsed: serde_json::Value =
            serde_json::from_slice(std::hint::black_box(&input_json)).map_err(Error::Json)?;
        std::hint::black_box(parsed);
        parse.samples.push(started.elapsed());
        let started = Instant::now();
        let result = std::hint::black_box(gate.evaluate(&input));
        warm.samples.push(started.elapsed());
        for (total, policy) in per_policy.iter_mut().zip(&result.policies) {
            total.1 += policy.duration_us;
        }
    }
    for total in &mut per_policy {
        total.1 /= runs as u64;
    }
    for _ in 0..runs.min(20) {
        let started = Instant::now();
        std::hint::black_box(Gate::new(engine(false)?, bundle.clone()));
        cold_compiled.samples.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(Gate::new(engine(true)?, bundle.clone()));
        cold_cached.samples.push(started.elapsed());
    }
    Ok(PolicyFigures {
        per_policy,
        warm,
        parse,
        cold_compiled,
        cold_cached,
        input_bytes,
    })
}
