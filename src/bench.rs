//! `kiln bench overhead`: the per-container cost of kiln's sandbox (create, attach, start, wait,
//! inspect, remove, every default on) against bare `docker run --rm` of the same image and
//! command, measured in the same run, interleaved so both see the same machine.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::ids::JobId;
use crate::job::Limits;
use crate::sandbox::{ContainerSpec, Sandbox, WorkVolume};

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

/// Runs `runs` of each; returns kiln's sandbox, the bare baseline, and kiln with a workspace volume.
pub async fn overhead(sandbox: &Sandbox, image: &str, runs: usize) -> Result<Vec<Figures>, Error> {
    let job = JobId::new();
    let spec = ContainerSpec {
        image: image.into(),
        command: vec!["true".into()],
        env: vec![("KILN_JOB_ID".into(), job.to_string())],
        limits: Limits::default(),
        loosened: Vec::new(),
        volume: None,
        labels: crate::sandbox::job_labels(&job),
    };
    let mut kiln = Figures {
        name: "kiln sandbox (create+start+wait+logs+remove)",
        samples: Vec::new(),
    };
    let mut bare = Figures {
        name: "docker run --rm --network none",
        samples: Vec::new(),
    };
    let mut with_volume = Figures {
        name: "kiln sandbox + workspace volume (informational)",
        samples: Vec::new(),
    };
    // One warm-up of each, not counted.
    sandbox.run(&spec, Duration::from_secs(60)).await?;
    docker_run(image).await?;
    for _ in 0..runs {
        let started = Instant::now();
        let outcome = sandbox.run(&spec, Duration::from_secs(60)).await?;
        kiln.samples.push(started.elapsed());
        if !outcome.succeeded() {
            return Err(Error::Internal(format!(
                "benchmark container failed: {:?}",
                outcome.exit_code
            )));
        }

        let started = Instant::now();
        docker_run(image).await?;
        bare.samples.push(started.elapsed());

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
        with_volume.samples.push(started.elapsed());
    }
    sandbox.reap_job(&job).await?;
    Ok(vec![kiln, bare, with_volume])
}

async fn docker_run(image: &str) -> Result<(), Error> {
    let status = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", image, "true"])
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
