//! One stage's container, on a fresh volume holding a tree: what the generator, the tests, the
//! reviewer and the merge queue's re-test all run through.

use std::io::Write;
use std::path::Path;

use git2::Oid;
use tracing::{Instrument, info_span};

use bytes::Bytes;

use super::spend::JobSpend;
use super::{Context, blocking};
use crate::artifacts::Artifacts;
use crate::config::Loosening;
use crate::egress::{self, StageNetwork};
use crate::error::Error;
use crate::model::pipe;
use crate::model::{ByteSize, JobId, Limits, Stage, StageSpec};
use crate::report::StageReport;
use crate::sandbox::{
    self, Container, ContainerSpec, JOB_INPUT, Live, RunOutcome, Sandbox, VolumeRequest,
    WORKSPACE_DIR, WorkVolume,
};
use crate::secrets::Redactor;

/// What every container of one job shares: the engine, the job's labels, limits and loosenings.
pub(crate) struct Stages<'a> {
    pub sandbox: &'a Sandbox,
    pub job: &'a JobId,
    pub limits: &'a Limits,
    pub loosened: &'a [Loosening],
    /// The job's artifacts folder: a generator's, test's or reviewer's output is written to
    /// `attempt-N/<stage>.log` there as it comes (`kiln logs --follow` reads it).
    pub artifacts: Option<&'a Artifacts>,
    /// The operator's `[egress]` and secrets for stages with an allowlist, and the redactor
    /// for everything a stage gives back.
    pub ctx: &'a Context,
    /// The job's model spend: a stage with a budget has its calls counted, and is stopped
    /// when one is refused.
    pub spend: Option<&'a JobSpend>,
}

impl Stages<'_> {
    /// A fresh volume holding `tree` of the repository at `repo` and the stage's input file,
    /// and stage run `(stage, n)`'s container on it, made while the volume fills (for a stage
    /// without a network). `prepared` is the volume and container made ahead, if they were.
    pub async fn filled(
        &self,
        prepared: Option<Prepared>,
        (stage, n): (Stage, u32),
        spec: &StageSpec,
        (repo, tree): (&Path, Oid),
        input: &[u8],
    ) -> Result<(WorkVolume, Option<Container>), Error> {
        let size = self.limits.workspace;
        let (volume, made) = match prepared {
            Some(Prepared { volume, container }) => (
                fill(volume, repo, tree, "job.json", input, size).await?,
                container,
            ),
            None => {
                let volume = self.sandbox.workspace_volume(size).await?;
                let name = volume.name().to_string();
                let (filled, made) = tokio::join!(
                    fill(volume, repo, tree, "job.json", input, size),
                    self.made_ahead(&name, (stage, n), spec)
                );
                match (filled, made) {
                    (Ok(volume), Ok(made)) => (volume, made),
                    (Ok(volume), Err(e)) => {
                        volume.remove().await;
                        return Err(e);
                    }
                    // A container made for the volume that failed is dropped, so removed.
                    (Err(e), _) => return Err(e),
                }
            }
        };
        Ok((volume, made))
    }

    /// A reviewer's volumes, sharing one holder: `tree` with the review input, and an empty
    /// output volume of `out_size` that the sandbox user may write.
    pub async fn review_volumes(
        &self,
        repo: &Path,
        n: u32,
        tree: Oid,
        input: &[u8],
        out_size: ByteSize,
    ) -> Result<(WorkVolume, WorkVolume), Error> {
        let (role, out_role) = (format!("review-{n}"), format!("review-out-{n}"));
        let requests = [
            VolumeRequest {
                role,
                size: self.limits.workspace,
                writable: false,
            },
            VolumeRequest {
                role: out_role,
                size: out_size,
                writable: true,
            },
        ];
        let batch = WorkVolume::create_batch(self.sandbox, self.job, &requests).await?;
        let [volume, out] = <[WorkVolume; 2]>::try_from(batch)
            .ok()
            .expect("create_batch makes one volume per request");
        let size = self.limits.workspace;
        match fill(volume, repo, tree, "review.json", input, size).await {
            Ok(volume) => Ok((volume, out)),
            Err(e) => {
                out.remove().await;
                Err(e)
            }
        }
    }

    /// Runs one stage's container on `volume`; with `out`, the workspace is mounted read-only
    /// and `out` is the one place the container may write. `prepared` is this stage run's
    /// container made ahead ([`Stages::prepare`]); without it the container is made now. The
    /// container that ran is handed back, stopped, for [`Stages::sweep`] once `volume` is read
    /// (a stage with a network has it removed before its network is, and hands back none).
    pub async fn container(
        &self,
        volume: &WorkVolume,
        out: Option<&WorkVolume>,
        (stage, n): (Stage, u32),
        spec: &StageSpec,
        prepared: Option<Container>,
    ) -> Result<(Ran, Option<Container>), Error> {
        let asked = std::time::Instant::now();
        let redactor = self.ctx.redactor().clone();
        let (network, secret_env) = match &spec.network {
            Some(network) => {
                let (opened, env) = self
                    .open_network(stage, n, network, volume, &redactor)
                    .await?;
                (Some(opened), env)
            }
            None => (None, Vec::new()),
        };
        let container = self
            .container_spec(
                volume.name(),
                out.map(WorkVolume::name),
                (stage, n),
                spec,
                network.as_ref(),
                secret_env,
            )
            .await?;
        let mut made = match prepared {
            Some(made) => made,
            None => self.sandbox.create(&container).await?,
        };
        let live = match stage {
            Stage::Generate | Stage::Test | Stage::Review => {
                self.artifacts.map(|a| a.stage_log(n, stage))
            }
            Stage::MergeTest => None,
        };
        let live = live.as_deref().map(|path| Live {
            path,
            redactor: redactor.clone(),
        });
        let meter = self.spend.and_then(|s| s.of(stage));
        let spent_before = meter.map(|m| m.spent());
        let cap = container.limits.output.bytes() as usize;
        let run = self
            .sandbox
            .run_container(&mut made, cap, spec.timeout, asked, live);
        let outcome = match self.spend.and_then(|s| s.of(stage)) {
            // A call refused for the budget stops the stage: its container is killed, and the
            // run ends as a killed command's does.
            Some(meter) => {
                tokio::pin!(run);
                tokio::select! {
                    outcome = &mut run => outcome,
                    why = meter.cut() => {
                        tracing::info!(job_id = %self.job, attempt = n, %stage, "budget spent ({why}): stopping the stage");
                        let labels: Vec<String> = container
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        if let Err(e) = self.sandbox.kill_labelled(&labels).await {
                            tracing::warn!("could not stop the stage: {e}; its timeout will");
                        }
                        run.await
                    }
                }
            }
            None => run.await,
        };
        let made = if network.is_some() || outcome.is_err() {
            made.remove().await;
            None
        } else {
            Some(made)
        };
        let egress = match network {
            Some(network) => {
                let (requests, unrecorded) = network.finish().await;
                if let Some(artifacts) = self.artifacts {
                    let record =
                        serde_json::json!({"requests": requests, "unrecorded": unrecorded});
                    artifacts
                        .write_json_async(artifacts.egress_record(n, stage), record)
                        .await?;
                }
                Some(egress::Summary::of(&requests, unrecorded))
            }
            None => None,
        };
        let mut ran = Ran::redacted(outcome?, &redactor);
        ran.egress = egress;
        ran.spend = meter
            .zip(spent_before)
            .map(|(m, before)| m.spent().since(&before));
        // Taken once the proxy has stopped: every call of this run has been settled.
        if let (Some(meter), Some(artifacts)) = (meter, self.artifacts) {
            let (lines, dropped) = meter.take_transcript();
            if !lines.is_empty() || dropped > 0 {
                let mut text = String::new();
                for line in &lines {
                    text.push_str(&line.to_string());
                    text.push('\n');
                }
                if dropped > 0 {
                    let note = serde_json::json!({"dropped": dropped, "why": "the transcript's cap was reached"});
                    text.push_str(&note.to_string());
                    text.push('\n');
                }
                let path = artifacts.attempt_file(n, &format!("{stage}.transcript.jsonl"));
                artifacts.write_async(path, text.into_bytes()).await?;
            }
        }
        Ok((ran, made))
    }

    /// What the container of stage run `(stage, n)` is made of: its image and command, the
    /// job's labels and limits, `volume` (and `out`), its network and variables.
    async fn container_spec(
        &self,
        volume: &str,
        out: Option<&str>,
        (stage, n): (Stage, u32),
        spec: &StageSpec,
        network: Option<&StageNetwork>,
        secret_env: Vec<(String, String)>,
    ) -> Result<ContainerSpec, Error> {
        let mut labels = sandbox::job_labels(self.job);
        labels.insert("kiln.stage".into(), stage.to_string());
        labels.insert("kiln.attempt".into(), n.to_string());
        let input = match stage {
            Stage::Review => crate::review::REVIEW_INPUT,
            _ => JOB_INPUT,
        };
        let networked = network.is_some() || self.loosened.contains(&Loosening::Network);
        let runtime = match self.ctx.config.sandbox.runtime_for(networked) {
            Some(name) => Some(self.sandbox.runtime(name).await?),
            None => None,
        };
        let mut container = ContainerSpec {
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: vec![
                ("KILN_JOB_ID".into(), self.job.to_string()),
                ("KILN_ATTEMPT".into(), n.to_string()),
                ("KILN_STAGE".into(), stage.to_string()),
                ("KILN_JOB_INPUT".into(), input.into()),
                ("KILN_WORKSPACE".into(), WORKSPACE_DIR.into()),
                ("HOME".into(), "/tmp".into()),
            ],
            limits: Limits {
                pids: self.ctx.config.sandbox.pids_for(self.limits.pids),
                ..self.limits.clone()
            },
            loosened: self.loosened.to_vec(),
            volume: Some(volume.to_string()),
            volume_read_only: out.is_some(),
            out_volume: out.map(str::to_string),
            network: network.map(|n| n.name().to_string()),
            runtime,
            labels,
        };
        if let Some(network) = network {
            let url = network.proxy_url();
            for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                container.env.push((key.into(), url.clone()));
            }
        }
        container.env.extend(secret_env);
        Ok(container)
    }

    /// Makes stage run `(stage, n)`'s volume and container ahead, while other work goes on:
    /// the volume stays empty until [`Stages::filled`] fills it, and the container is created,
    /// never started. Dropped unused, both are removed.
    pub async fn prepare(
        &self,
        (stage, n): (Stage, u32),
        spec: &StageSpec,
    ) -> Result<Prepared, Error> {
        let volume = self.sandbox.workspace_volume(self.limits.workspace).await?;
        match self.made_ahead(volume.name(), (stage, n), spec).await {
            Ok(container) => Ok(Prepared { volume, container }),
            Err(e) => {
                volume.remove().await;
                Err(e)
            }
        }
    }

    /// Stage run `(stage, n)`'s container on the volume named `volume`, created and not
    /// started; none for a stage with a network (its network and the secrets' placeholders
    /// are made as it runs).
    async fn made_ahead(
        &self,
        volume: &str,
        (stage, n): (Stage, u32),
        spec: &StageSpec,
    ) -> Result<Option<Container>, Error> {
        if spec.network.is_some() {
            return Ok(None);
        }
        let container = self
            .container_spec(volume, None, (stage, n), spec, None, Vec::new())
            .await?;
        Ok(Some(self.sandbox.create(&container).await?))
    }

    /// Removes `container`, then `volumes`, off the job's critical path.
    pub fn sweep(&self, container: Option<Container>, volumes: Vec<WorkVolume>) {
        self.sandbox.sweep(container, volumes);
    }

    /// The tests (`stage` is [`Stage::Test`] or [`Stage::MergeTest`]) on `tree` of the
    /// repository at `repo`, in a fresh volume (the `prepared` one, when made ahead).
    pub async fn test(
        &self,
        (stage, n): (Stage, u32),
        (repo, tree): (&Path, Oid),
        input: &[u8],
        spec: &StageSpec,
        prepared: Option<Prepared>,
    ) -> Result<Ran, Error> {
        let span = info_span!("stage", kiln.stage = %stage);
        async {
            let (volume, made) = self
                .filled(prepared, (stage, n), spec, (repo, tree), input)
                .await?;
            match self.container(&volume, None, (stage, n), spec, made).await {
                Ok((ran, made)) => {
                    self.sweep(made, vec![volume]);
                    Ok(ran)
                }
                Err(e) => {
                    volume.remove().await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// A stage run's volume and container made ahead ([`Stages::prepare`]).
pub(super) struct Prepared {
    volume: WorkVolume,
    container: Option<Container>,
}

/// Copies `tree` of the repository at `repo` and the stage's input file into `volume`, packed on
/// a blocking thread and streamed to the engine as it is made (`size` bounds it: the volume's
/// size); on failure the volume is given up.
async fn fill(
    volume: WorkVolume,
    repo: &Path,
    tree: Oid,
    input_name: &'static str,
    input: &[u8],
    size: ByteSize,
) -> Result<WorkVolume, Error> {
    let (writer, tar) = pipe::to_stream();
    let (repo, input) = (repo.to_path_buf(), input.to_vec());
    let packing = blocking(move || {
        let mut writer = crate::workspace::tar_of_tree_at(&repo, tree, input_name, &input, writer)?;
        writer
            .flush()
            .map_err(Error::io("cannot send the workspace to the engine"))
    });
    let (uploaded, packed) = tokio::join!(volume.upload_stream(tar, size), packing);
    // A pack that failed cut the stream short, and an upload the engine refused cut the pack:
    // the engine's refusal is the cause when both failed.
    let filled = match (uploaded, packed) {
        (Err(e), _) => Err(Error::from(e)),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    };
    match filled {
        Ok(()) => Ok(volume),
        Err(e) => {
            volume.remove().await;
            Err(e)
        }
    }
}

/// A finished container with its output turned into bytes.
pub(super) struct Ran {
    pub(super) exit_code: Option<i64>,
    pub(super) timed_out: bool,
    pub(super) oom_killed: bool,
    pub(super) start_ms: u64,
    pub(super) duration_ms: u64,
    /// What went through the egress proxy, for a stage with an allowlist.
    pub(super) egress: Option<egress::Summary>,
    /// What the stage run spent on model calls, when they were counted.
    pub(super) spend: Option<crate::model::spend::Spend>,
    pub(super) output_total: u64,
    pub(super) output_dropped: u64,
    /// The kept output, secrets hidden; shared, not copied, by the artifacts written of it.
    pub(super) output_bytes: Bytes,
}

impl Ran {
    /// What a stage's container did, with every secret hidden in its output.
    fn redacted(o: RunOutcome, redactor: &Redactor) -> Self {
        Ran {
            exit_code: o.exit_code,
            timed_out: o.timed_out,
            oom_killed: o.oom_killed,
            start_ms: o.start_latency.as_millis() as u64,
            egress: None,
            spend: None,
            duration_ms: o.duration.as_millis() as u64,
            output_total: o.output.total_bytes(),
            output_dropped: o.output.dropped_bytes(),
            output_bytes: o.output.into_bytes_redacted(redactor).into(),
        }
    }

    pub(super) fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// What the report says of a stage that ran.
pub(super) fn stage_report(spec: &StageSpec, ran: &Ran) -> StageReport {
    StageReport {
        image: spec.image.clone(),
        exit_code: ran.exit_code,
        timed_out: ran.timed_out,
        oom_killed: ran.oom_killed,
        start_ms: ran.start_ms,
        duration_ms: ran.duration_ms,
        output_bytes: ran.output_total,
        output_dropped_bytes: ran.output_dropped,
        egress: ran.egress.clone(),
        spend: ran.spend,
    }
}
