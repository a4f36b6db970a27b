//! One stage's container, on a fresh volume holding a tree: what the generator, the tests, the
//! reviewer and the merge queue's re-test all run through.

use std::path::Path;

use git2::Oid;
use tracing::{Instrument, info_span};

use super::{Ran, blocking};
use crate::config::Loosening;
use crate::egress::{self, EgressConfig, StageNetwork};
use crate::error::Error;
use crate::ids::{JobId, Stage};
use crate::job::{ByteSize, Limits, StageSpec};
use crate::sandbox::{
    self, ContainerSpec, JOB_INPUT, Sandbox, VolumeRequest, WORKSPACE_DIR, WorkVolume,
};

/// What every container of one job shares: the engine, the job's labels, limits and loosenings.
pub(crate) struct Stages<'a> {
    pub sandbox: &'a Sandbox,
    pub job: &'a JobId,
    pub limits: &'a Limits,
    pub loosened: &'a [Loosening],
    /// The job's artifacts folder: a generator's, test's or reviewer's output is written to
    /// `attempt-N/<stage>.log` there as it comes (`kiln logs --follow` reads it).
    pub artifacts: Option<&'a Path>,
    /// The operator's `[egress]`, for stages with an allowlist.
    pub egress: &'a EgressConfig,
}

impl Stages<'_> {
    /// A fresh volume holding `tree` of the repository at `repo`, and the stage's input file.
    pub async fn volume(
        &self,
        repo: &Path,
        tree: Oid,
        input_name: &'static str,
        input: &[u8],
    ) -> Result<WorkVolume, Error> {
        let volume = self.sandbox.workspace_volume(self.limits.workspace).await?;
        fill(volume, repo, tree, input_name, input).await
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
                role: &role,
                size: self.limits.workspace,
                writable: false,
            },
            VolumeRequest {
                role: &out_role,
                size: out_size,
                writable: true,
            },
        ];
        let batch = WorkVolume::create_batch(self.sandbox, self.job, &requests).await?;
        let [volume, out] = <[WorkVolume; 2]>::try_from(batch)
            .ok()
            .expect("create_batch makes one volume per request");
        match fill(volume, repo, tree, "review.json", input).await {
            Ok(volume) => Ok((volume, out)),
            Err(e) => {
                out.remove().await;
                Err(e)
            }
        }
    }

    /// Runs one stage's container on `volume`; with `out`, the workspace is mounted read-only
    /// and `out` is the one place the container may write.
    pub async fn container(
        &self,
        volume: &WorkVolume,
        out: Option<&WorkVolume>,
        stage: Stage,
        n: u32,
        spec: &StageSpec,
    ) -> Result<Ran, Error> {
        let mut labels = sandbox::job_labels(self.job);
        labels.insert("kiln.stage".into(), stage.to_string());
        labels.insert("kiln.attempt".into(), n.to_string());
        let input = match stage {
            Stage::Review => crate::review::REVIEW_INPUT,
            _ => JOB_INPUT,
        };
        let network = match &spec.network {
            Some(network) => {
                let allow = network.allow.iter().map(|a| a.0.clone()).collect();
                let role = format!("{stage}-{n}");
                Some(StageNetwork::create(self.sandbox, self.job, &role, allow, self.egress).await?)
            }
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
            limits: self.limits.clone(),
            loosened: self.loosened.to_vec(),
            volume: Some(volume.name().to_string()),
            volume_read_only: out.is_some(),
            out_volume: out.map(|o| o.name().to_string()),
            network: network.as_ref().map(|n| n.name().to_string()),
            labels,
        };
        if let Some(network) = &network {
            let url = network.proxy_url();
            for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                container.env.push((key.into(), url.clone()));
            }
        }
        let live = match stage {
            Stage::Generate | Stage::Test | Stage::Review => self
                .artifacts
                .map(|a| a.join(format!("attempt-{n}")).join(format!("{stage}.log"))),
            Stage::MergeTest => None,
        };
        let span = info_span!("stage", job_id = %self.job, attempt = n, stage = %stage);
        let outcome = self
            .sandbox
            .run_live(&container, spec.timeout, live.as_deref())
            .instrument(span)
            .await;
        let egress = match network {
            Some(network) => {
                let (requests, unrecorded) = network.finish().await;
                if let Some(artifacts) = self.artifacts {
                    let path = artifacts
                        .join(format!("attempt-{n}"))
                        .join(format!("{stage}.egress.json"));
                    let record =
                        serde_json::json!({"requests": requests, "unrecorded": unrecorded});
                    super::write_json(&path, &record)?;
                }
                Some(egress::Summary::of(&requests, unrecorded))
            }
            None => None,
        };
        let mut ran = Ran::from(outcome?);
        ran.egress = egress;
        Ok(ran)
    }

    /// The tests (`stage` is [`Stage::Test`] or [`Stage::MergeTest`]) on `tree` of the
    /// repository at `repo`, in a fresh volume.
    pub async fn test(
        &self,
        stage: Stage,
        repo: &Path,
        n: u32,
        tree: Oid,
        input: &[u8],
        spec: &StageSpec,
    ) -> Result<Ran, Error> {
        let volume = self.volume(repo, tree, "job.json", input).await?;
        let result = self.container(&volume, None, stage, n, spec).await;
        volume.remove().await;
        result
    }
}

/// Copies `tree` of the repository at `repo` and the stage's input file into `volume`; on
/// failure the volume is given up.
async fn fill(
    volume: WorkVolume,
    repo: &Path,
    tree: Oid,
    input_name: &'static str,
    input: &[u8],
) -> Result<WorkVolume, Error> {
    let tar = {
        let (repo, input) = (repo.to_path_buf(), input.to_vec());
        blocking(move || {
            Ok(crate::workspace::tar_of_tree_at(
                &repo, tree, input_name, &input,
            )?)
        })
        .await
    };
    let uploaded = match tar {
        Ok(tar) => volume.upload(tar).await.map_err(Error::from),
        Err(e) => Err(e),
    };
    match uploaded {
        Ok(()) => Ok(volume),
        Err(e) => {
            volume.remove().await;
            Err(e)
        }
    }
}
