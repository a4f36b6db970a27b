//! The workspace volume: a size-capped tmpfs, kept mounted by a tiny holder container, that
//! the tree is copied into and out of as tar through the Docker API. No host path is ever
//! mounted into a container, and the disk cap is the filesystem's own size.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{
    DownloadFromContainerOptions, RemoveVolumeOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;

use super::{
    ContainerSpec, KILN_DIR, Sandbox, SandboxError, WORKSPACE_DIR, bounded, bounded_for,
    docker_err, job_labels,
};
use crate::ids::JobId;
use crate::job::{ByteSize, Limits};

/// The image of the holder container; `kiln image build busybox` makes it.
pub const HOLDER_IMAGE: &str = crate::images::BUSYBOX;

/// A tmpfs volume for one container's workspace, and the holder that keeps it mounted.
/// Drop does not clean up (that needs the engine): call [`WorkVolume::remove`]; the job's
/// final reap removes whatever an error path left.
pub struct WorkVolume {
    sandbox: Sandbox,
    name: String,
    holder: String,
}

impl WorkVolume {
    /// Creates the volume (`size` bytes, its root owned by root) and starts its holder.
    pub async fn create(
        sandbox: &Sandbox,
        job: &JobId,
        role: &str,
        size: ByteSize,
    ) -> Result<Self, SandboxError> {
        Self::create_owned(sandbox, job, role, size, "mode=0755").await
    }

    /// A volume whose root the sandbox user may write: a reviewer's output folder.
    pub async fn create_writable(
        sandbox: &Sandbox,
        job: &JobId,
        role: &str,
        size: ByteSize,
    ) -> Result<Self, SandboxError> {
        let owner = format!("mode=0700,uid={0},gid={0}", super::SANDBOX_UID);
        Self::create_owned(sandbox, job, role, size, &owner).await
    }

    async fn create_owned(
        sandbox: &Sandbox,
        job: &JobId,
        role: &str,
        size: ByteSize,
        owner: &str,
    ) -> Result<Self, SandboxError> {
        let docker = sandbox.docker();
        let mut labels = job_labels(job);
        labels.insert("kiln.role".into(), role.into());
        let request = VolumeCreateRequest {
            name: Some(format!(
                "kiln-{job}-{role}-{}",
                ulid::Ulid::new().to_string().to_lowercase()
            )),
            driver: Some("local".into()),
            driver_opts: Some(HashMap::from([
                ("type".to_string(), "tmpfs".to_string()),
                ("device".to_string(), "tmpfs".to_string()),
                (
                    "o".to_string(),
                    format!("size={},{owner},nosuid,nodev", size.bytes()),
                ),
            ])),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let volume = bounded("create volume", docker.create_volume(request))
            .await?
            .map_err(docker_err("create a workspace volume"))?;
        let holder_spec = ContainerSpec {
            image: HOLDER_IMAGE.into(),
            command: vec!["sleep".into(), "2147483647".into()],
            env: Vec::new(),
            limits: Limits {
                memory: ByteSize::mib(16),
                cpus: 0.1,
                pids: 8,
                ..Limits::default()
            },
            loosened: Vec::new(),
            volume: Some(volume.name.clone()),
            volume_read_only: false,
            out_volume: None,
            labels,
        };
        let holder = match bounded(
            "create holder",
            docker.create_container(None, holder_spec.to_create_body()),
        )
        .await?
        {
            Ok(created) => created.id,
            Err(e) => {
                let _ = docker
                    .remove_volume(&volume.name, None::<RemoveVolumeOptions>)
                    .await;
                return Err(docker_err("create the workspace holder")(e));
            }
        };
        let work = WorkVolume {
            sandbox: sandbox.clone(),
            name: volume.name,
            holder,
        };
        if let Err(e) = bounded("start holder", docker.start_container(&work.holder, None)).await? {
            work.remove().await;
            return Err(docker_err("start the workspace holder")(e));
        }
        Ok(work)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unpacks `tar` at the volume's root (`/kiln`): the tar holds `workspace/...` and `job.json`.
    pub async fn upload(&self, tar: Vec<u8>) -> Result<(), SandboxError> {
        let opts = UploadToContainerOptions {
            path: KILN_DIR.into(),
            ..Default::default()
        };
        // A minute, plus a second for every 16 MiB: generous for a local engine.
        let limit = Duration::from_secs(60 + (tar.len() as u64 >> 24));
        let body = bollard::body_full(tar.into());
        bounded_for(
            limit,
            "upload",
            self.sandbox
                .docker()
                .upload_to_container(&self.holder, Some(opts), body),
        )
        .await?
        .map_err(docker_err("copy the workspace into its volume"))
    }

    /// The workspace as a tar stream, refused past `cap` bytes (the tree is hostile: never trust its size).
    pub async fn download_workspace(&self, cap: u64) -> Result<Result<Vec<u8>, u64>, SandboxError> {
        self.download(WORKSPACE_DIR, cap).await
    }

    /// `path` (under [`KILN_DIR`], where the holder mounts the volume) as a tar stream, refused
    /// past `cap` bytes.
    pub async fn download(
        &self,
        path: &str,
        cap: u64,
    ) -> Result<Result<Vec<u8>, u64>, SandboxError> {
        let opts = DownloadFromContainerOptions { path: path.into() };
        let mut stream = self
            .sandbox
            .docker()
            .download_from_container(&self.holder, Some(opts));
        let mut tar = Vec::new();
        // Two minutes, plus a second for every 16 MiB the archive may hold.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120 + (cap >> 24));
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next())
                .await
                .map_err(|_| SandboxError::Stuck("download workspace"))?;
            match next {
                None => return Ok(Ok(tar)),
                Some(Err(e)) => return Err(docker_err("copy files out of a volume")(e)),
                Some(Ok(chunk)) => {
                    if tar.len() as u64 + chunk.len() as u64 > cap {
                        return Ok(Err(cap));
                    }
                    tar.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// Removes the holder and the volume; failures are logged, the job's final reap retries.
    pub async fn remove(self) {
        self.sandbox.remove_container(&self.holder).await;
        let opts = RemoveVolumeOptions { force: true };
        if let Ok(Err(e)) = bounded(
            "remove volume",
            self.sandbox.docker().remove_volume(&self.name, Some(opts)),
        )
        .await
        {
            tracing::warn!(volume = self.name, "could not remove volume: {e}");
        }
    }
}
