//! Workspace volumes: size-capped tmpfs volumes, kept mounted by a tiny holder container, that
//! trees are copied into and out of as tar through the holder's own stdin and stdout (its
//! [`Channel`]). No host path is ever mounted into a container, and the disk cap is the
//! filesystem's own size.
//!
//! Volumes are made in batches that share one holder: the holder's start is a container start,
//! as dear as a stage's own. Workspace volumes come from the sandbox's [`super::pool::VolumePool`], which
//! makes them several to a holder (a job's generator and tests; under `kiln serve`, several
//! jobs'); a reviewer's workspace and output are one batch. Each volume still belongs to one
//! stage and starts empty; a used one is emptied as it is given up and removed with its batch.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::RemoveVolumeOptions;
use bytes::Bytes;
use futures_util::Stream;

use super::holder::{self, Channel};
use super::spec::volume_mount;
use super::sweep::Sweeper;
use super::{
    ContainerSpec, Sandbox, SandboxError, bounded, docker_err, owner_labels, remove_container,
};
use crate::model::pipe::{self, PipeReader};
use crate::model::{ByteSize, JobId, Limits};

/// The image of the holder container; `kiln image build busybox` makes it.
pub const HOLDER_IMAGE: &str = "kiln/busybox:latest";

/// One volume a batch makes.
#[derive(Clone, Debug)]
pub struct VolumeRequest {
    /// Names the volume (`kiln-JOB-ROLE-…`) and labels it `kiln.role`.
    pub role: String,
    pub size: ByteSize,
    /// The sandbox user may write the volume's root (a reviewer's output folder); otherwise
    /// its root is root's and only what kiln uploads is the sandbox user's.
    pub writable: bool,
}

/// A tmpfs volume for one container. Drop does not clean up (that needs the engine): call
/// [`WorkVolume::remove`]; the job's final reap removes whatever an error path left.
pub struct WorkVolume {
    batch: Arc<Batch>,
    name: String,
    /// Where the holder mounts it: `/vN/kiln`, so archives of it read `kiln/...` as a stage's
    /// own `/kiln` would.
    root: String,
}

/// A holder container and the volumes it keeps mounted; it goes with its last volume.
pub(super) struct Batch {
    docker: Docker,
    holder: String,
    /// The holder's stdin and stdout, that every copy into or out of the volumes goes through.
    channel: Arc<Channel>,
    volumes: Vec<String>,
    /// Where a batch dropped without being removed is removed.
    sweeper: Arc<Sweeper>,
}

impl WorkVolume {
    /// One volume (`size` bytes, its root owned by root) with a holder of its own.
    pub async fn create(
        sandbox: &Sandbox,
        job: &JobId,
        role: &str,
        size: ByteSize,
    ) -> Result<Self, SandboxError> {
        let request = VolumeRequest {
            role: role.into(),
            size,
            writable: false,
        };
        let mut batch = Self::create_batch(sandbox, job, &[request]).await?;
        Ok(batch.remove(0))
    }

    /// Makes one volume per request for `job` and one holder that keeps them all mounted, to
    /// the end even when the caller stops waiting ([`Sweeper::finish`]).
    pub async fn create_batch(
        sandbox: &Sandbox,
        job: &JobId,
        requests: &[VolumeRequest],
    ) -> Result<Vec<Self>, SandboxError> {
        let (owned, owner, requests) = (sandbox.clone(), job.to_string(), requests.to_vec());
        let make = async move { Self::make_batch(&owned, &owner, &requests).await };
        sandbox.sweeper.finish("create volumes", make).await
    }

    /// [`WorkVolume::create_batch`] labelled `kiln.job=owner`, in the caller's task.
    pub(super) async fn make_batch(
        sandbox: &Sandbox,
        owner: &str,
        requests: &[VolumeRequest],
    ) -> Result<Vec<Self>, SandboxError> {
        let docker = sandbox.docker();
        let mut labels = owner_labels(owner);
        // The volumes are made side by side; if any is refused, the others go.
        let made = futures_util::future::join_all(
            requests.iter().map(|r| create_volume(docker, owner, r)),
        )
        .await;
        let names: Vec<String> = made
            .iter()
            .filter_map(|m| m.as_ref().ok())
            .cloned()
            .collect();
        if let Some(Err(e)) = made.into_iter().find(Result::is_err) {
            remove_volumes(docker, &names).await;
            return Err(e);
        }
        labels.insert("kiln.role".into(), "holder".into());
        let roots: Vec<String> = (0..names.len()).map(|i| format!("/v{i}/kiln")).collect();
        // The volumes' pages are charged to the holder that unpacks into them: its memory is
        // theirs (each capped by its size) and its own 16 MiB.
        let volumes: u64 = requests.iter().map(|r| r.size.bytes()).sum();
        let holder_spec = ContainerSpec {
            image: HOLDER_IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), holder::SCRIPT.into()],
            env: Vec::new(),
            limits: Limits {
                memory: ByteSize(ByteSize::mib(16).bytes() + volumes),
                cpus: 1.0,
                pids: 8,
                ..Limits::default()
            },
            loosened: Vec::new(),
            volume: None,
            volume_read_only: false,
            out_volume: None,
            network: None,
            // kiln's own, running nothing of a job's: the engine's default runtime.
            runtime: None,
            labels,
        };
        let mut body = holder_spec.to_create_body();
        // Root of its container with the few capabilities a tar needs (see `holder`), reading
        // requests on its stdin.
        body.user = Some("0:0".into());
        body.open_stdin = Some(true);
        body.attach_stdin = Some(true);
        body.stdin_once = Some(false);
        if let Some(host) = body.host_config.as_mut() {
            host.cap_add = Some(holder::CAPABILITIES.map(String::from).to_vec());
            host.mounts = Some(
                names
                    .iter()
                    .zip(&roots)
                    .map(|(name, root)| volume_mount(root, name, false))
                    .collect(),
            );
        }
        let holder = match bounded("create holder", docker.create_container(None, body)).await? {
            Ok(created) => created.id,
            Err(e) => {
                remove_volumes(docker, &names).await;
                return Err(docker_err("create the workspace holder")(e));
            }
        };
        let channel = match Channel::attach(docker, &holder).await {
            Ok(channel) => channel,
            Err(e) => {
                remove_container(docker, &holder).await;
                remove_volumes(docker, &names).await;
                return Err(e);
            }
        };
        let batch = Batch {
            docker: docker.clone(),
            holder,
            channel: Arc::new(channel),
            volumes: names.clone(),
            sweeper: sandbox.sweeper.clone(),
        };
        if let Err(e) = bounded("start holder", docker.start_container(&batch.holder, None)).await?
        {
            batch.leftover().remove().await;
            return Err(docker_err("start the workspace holder")(e));
        }
        let batch = Arc::new(batch);
        Ok(names
            .into_iter()
            .zip(roots)
            .map(|(name, root)| WorkVolume {
                batch: batch.clone(),
                name,
                root,
            })
            .collect())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unpacks `tar` at the volume's root (a stage's `/kiln`): the tar holds `workspace/...`
    /// and the stage's input file.
    pub async fn upload(&self, tar: Vec<u8>) -> Result<(), SandboxError> {
        // A minute, plus a second for every 16 MiB: generous for a local engine.
        let limit = Duration::from_secs(60 + (tar.len() as u64 >> 24));
        let tar = Bytes::from(tar);
        self.upload_body(futures_util::stream::once(async { Ok(tar) }), limit)
            .await
    }

    /// [`WorkVolume::upload`] of a tar made as it is sent (packed on a blocking thread through
    /// [`pipe::to_stream`]): an error in the stream fails the upload. `size` bounds the tar's
    /// length, for the time it may take.
    pub async fn upload_stream(
        &self,
        tar: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        size: ByteSize,
    ) -> Result<(), SandboxError> {
        let limit = Duration::from_secs(60 + (size.bytes() >> 24));
        self.upload_body(tar, limit).await
    }

    #[tracing::instrument(name = "tar.in", skip_all)]
    async fn upload_body(
        &self,
        tar: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        limit: Duration,
    ) -> Result<(), SandboxError> {
        let (channel, root) = (self.batch.channel.clone(), self.root.clone());
        let put = async move { channel.put(&root, tar, limit).await };
        self.batch
            .sweeper
            .finish("copy the workspace into its volume", put)
            .await
    }

    /// The workspace (entries `workspace/...`) as a tar, read by `read` on a blocking thread as
    /// it arrives, never held whole; refused past `cap` bytes (the tree is hostile: never trust
    /// its size), whatever `read` made of the part it saw.
    pub async fn read_workspace<T: Send + 'static>(
        &self,
        cap: u64,
        read: impl FnOnce(PipeReader) -> T + Send + 'static,
    ) -> Result<Result<T, u64>, SandboxError> {
        self.read_tar((self.root.clone(), "workspace".into()), cap, read)
            .await
    }

    /// The whole volume (entries `kiln/...`) as a tar, refused past `cap` bytes.
    pub async fn download_all(&self, cap: u64) -> Result<Result<Vec<u8>, u64>, SandboxError> {
        let (parent, name) = self.root.rsplit_once('/').expect("a root is /vN/kiln");
        self.read_tar((parent.to_string(), name.to_string()), cap, |mut tar| {
            let mut all = Vec::new();
            // A pipe's reader never fails; a copy cut short is told apart by `read_tar`.
            let _ = tar.read_to_end(&mut all);
            all
        })
        .await
    }

    #[tracing::instrument(name = "tar.out", skip_all)]
    async fn read_tar<T: Send + 'static>(
        &self,
        path: (String, String),
        cap: u64,
        read: impl FnOnce(PipeReader) -> T + Send + 'static,
    ) -> Result<Result<T, u64>, SandboxError> {
        let (tx, reader) = pipe::from_async();
        let reading = tokio::task::spawn_blocking(move || read(reader));
        let fed = self.feed(path, cap, tx).await;
        // The sender is gone: the reader has seen the end (or its cut) and returns.
        let made = match reading.await {
            Ok(made) => made,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        Ok(fed?.map(|()| made))
    }

    /// Sends a tar of `parent/name` in the holder to `tx` chunk by chunk, to the end even when
    /// the caller stops waiting; `Ok(Err(cap))` once it passes `cap`. A reader that stops early
    /// ends what it is sent.
    async fn feed(
        &self,
        (parent, name): (String, String),
        cap: u64,
        tx: tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<Result<(), u64>, SandboxError> {
        // Two minutes, plus a second for every 16 MiB the archive may hold.
        let limit = Duration::from_secs(120 + (cap >> 24));
        let channel = self.batch.channel.clone();
        let get = async move { channel.get((&parent, &name), cap, tx, limit).await };
        self.batch
            .sweeper
            .finish("copy files out of a volume", get)
            .await
    }

    /// Gives the volume up. When it was its batch's last, the holder and every volume of the
    /// batch are removed; otherwise it is emptied. Failures are logged, the job's final reap
    /// retries.
    pub async fn remove(self) {
        match self.give_up() {
            Ok(leftover) => leftover.remove().await,
            Err(emptying) => emptying.empty().await,
        }
    }

    /// Gives the volume up: what its batch leaves to remove when it was the batch's last,
    /// otherwise the volume to empty.
    pub(super) fn give_up(self) -> Result<Leftover, Emptying> {
        let emptying = Emptying {
            channel: self.batch.channel.clone(),
            root: self.root.clone(),
        };
        Arc::into_inner(self.batch)
            .map(Batch::leftover)
            .ok_or(emptying)
    }
}

/// A volume given up while its batch lives on: emptied then, so that its files do not hold
/// memory until the batch's last volume goes. It is never handed out again.
pub(super) struct Emptying {
    channel: Arc<Channel>,
    root: String,
}

impl Emptying {
    pub(super) async fn empty(self) {
        if let Err(e) = self
            .channel
            .clear(&self.root, Duration::from_secs(60))
            .await
        {
            tracing::warn!("could not empty a used volume (it goes with its batch): {e}");
        }
    }
}

impl Batch {
    /// The batch's holder and volumes, to be removed; the batch itself is left empty.
    fn leftover(mut self) -> Leftover {
        Leftover {
            docker: self.docker.clone(),
            holder: std::mem::take(&mut self.holder),
            volumes: std::mem::take(&mut self.volumes),
        }
    }
}

/// A batch whose last volume was dropped without [`WorkVolume::remove`] (its job was cancelled
/// mid-stage) is removed in the background, and [`Sandbox::swept`] waits for it.
impl Drop for Batch {
    fn drop(&mut self) {
        if self.holder.is_empty() && self.volumes.is_empty() {
            return;
        }
        let leftover = Leftover {
            docker: self.docker.clone(),
            holder: std::mem::take(&mut self.holder),
            volumes: std::mem::take(&mut self.volumes),
        };
        self.sweeper.spawn(leftover.remove());
    }
}

/// What a batch leaves to remove: names only, so that a removal dropped unrun (its runtime
/// shutting down) drops nothing that would start another.
pub(super) struct Leftover {
    docker: Docker,
    holder: String,
    volumes: Vec<String>,
}

impl Leftover {
    async fn remove(mut self) {
        self.remove_holder().await;
        self.remove_volumes().await;
    }

    /// Removes the holder container; the volumes stay until [`Leftover::remove_volumes`].
    pub(super) async fn remove_holder(&mut self) {
        let holder = std::mem::take(&mut self.holder);
        if !holder.is_empty() {
            remove_container(&self.docker, &holder).await;
        }
    }

    /// Removes the volumes, side by side: call it once no container mounts them.
    pub(super) async fn remove_volumes(self) {
        remove_volumes(&self.docker, &self.volumes).await;
    }
}

async fn create_volume(
    docker: &Docker,
    owner: &str,
    request: &VolumeRequest,
) -> Result<String, SandboxError> {
    let mut labels = owner_labels(owner);
    labels.insert("kiln.role".into(), request.role.clone());
    let root = if request.writable {
        format!("mode=0700,uid={0},gid={0}", super::SANDBOX_UID)
    } else {
        "mode=0755".to_string()
    };
    let body = VolumeCreateRequest {
        name: Some(format!(
            "kiln-{owner}-{}-{}",
            request.role,
            ulid::Ulid::new().to_string().to_lowercase()
        )),
        driver: Some("local".into()),
        driver_opts: Some(HashMap::from([
            ("type".to_string(), "tmpfs".to_string()),
            ("device".to_string(), "tmpfs".to_string()),
            (
                "o".to_string(),
                format!("size={},{root},nosuid,nodev", request.size.bytes()),
            ),
        ])),
        labels: Some(labels),
        ..Default::default()
    };
    let volume = bounded("create volume", docker.create_volume(body))
        .await?
        .map_err(docker_err("create a workspace volume"))?;
    Ok(volume.name)
}

/// Removes the volumes `names`, side by side.
async fn remove_volumes(docker: &Docker, names: &[String]) {
    futures_util::future::join_all(names.iter().map(|name| remove_volume(docker, name))).await;
}

/// How long a volume still in use is asked again: the container that mounts it may be being
/// removed at the same moment (a stage cancelled as it was made drops its container and its
/// volume apart).
const IN_USE_GRACE: Duration = Duration::from_secs(10);

/// Removes the volume `name`; one still mounted is asked again until [`IN_USE_GRACE`] has
/// passed. Failures are logged: the job's final reap or `kiln gc` retries.
async fn remove_volume(docker: &Docker, name: &str) {
    let deadline = tokio::time::Instant::now() + IN_USE_GRACE;
    loop {
        let opts = RemoveVolumeOptions { force: true };
        match bounded("remove volume", docker.remove_volume(name, Some(opts))).await {
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            })) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(volume = name, "could not remove volume: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(volume = name, "{e}");
                return;
            }
            Ok(Ok(())) => return,
        }
    }
}
