//! One stage's container, on a fresh volume holding a tree: what the generator, the tests, the
//! reviewer and the merge queue's re-test all run through.

use std::path::Path;
use std::sync::Mutex;

use git2::Oid;
use tracing::{Instrument, info_span};

use super::{Ran, blocking};
use crate::config::Loosening;
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
    /// Where a generator's batch keeps the volume its tests will use; `None` where no test
    /// follows in the same job run (the merge queue's own re-test).
    pub spares: Option<&'a Spares>,
}

/// A job's unused volume: a generator's volume is made together with the one its tests will
/// use, so both share one holder container (see `sandbox::volume`).
#[derive(Default)]
pub(crate) struct Spares(Mutex<Vec<WorkVolume>>);

impl Spares {
    fn take(&self) -> Option<WorkVolume> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn keep(&self, volume: WorkVolume) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(volume);
    }
}

impl Stages<'_> {
    /// A fresh volume holding `tree` of the repository at `repo`, and the stage's input file.
    pub async fn volume(
        &self,
        repo: &Path,
        stage: Stage,
        n: u32,
        tree: Oid,
        input_name: &'static str,
        input: &[u8],
    ) -> Result<WorkVolume, Error> {
        let volume = self.fresh_volume(stage, n).await?;
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

    /// An empty volume for `stage`: a spare if there is one; for a generator, made in a batch
    /// with the volume its tests will take.
    async fn fresh_volume(&self, stage: Stage, n: u32) -> Result<WorkVolume, Error> {
        if let Some(volume) = self.spares.and_then(Spares::take) {
            return Ok(volume);
        }
        let role = format!("{stage}-{n}");
        let size = self.limits.workspace;
        match self.spares {
            Some(spares) if stage == Stage::Generate => {
                let request = |role| VolumeRequest {
                    role,
                    size,
                    writable: false,
                };
                let batch = WorkVolume::create_batch(
                    self.sandbox,
                    self.job,
                    &[request(&role), request("spare")],
                )
                .await?;
                let [volume, spare] = <[WorkVolume; 2]>::try_from(batch)
                    .ok()
                    .expect("create_batch makes one volume per request");
                spares.keep(spare);
                Ok(volume)
            }
            _ => Ok(WorkVolume::create(self.sandbox, self.job, &role, size).await?),
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
        let container = ContainerSpec {
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
            labels,
        };
        let span = info_span!("stage", job_id = %self.job, attempt = n, stage = %stage);
        let outcome = self
            .sandbox
            .run(&container, spec.timeout)
            .instrument(span)
            .await?;
        Ok(Ran::from(outcome))
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
        let volume = self.volume(repo, stage, n, tree, "job.json", input).await?;
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
