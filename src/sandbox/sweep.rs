//! Containers made ahead of their start, and removals kept off a job's critical path.
//!
//! A [`Container`] is created (never started) before its stage asks for it, so that the stage
//! waits only for its start; it is started at most once. When its job no longer needs it, it is
//! handed to [`Sandbox::sweep`] with the volumes it used, and removed while the job goes on. A
//! container dropped unstarted or unswept (its job ended first, or was cancelled) is swept all
//! the same. Containers and volumes are made in tasks that finish even when their job is
//! cancelled midway, so nothing is left half made and unknown. [`Sandbox::swept`] waits for every
//! removal handed over and every creation under way: a process calls it before it ends, so
//! nothing it made outlives it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::Docker;
use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tracing::{Instrument, info_span};

use super::{ContainerSpec, Sandbox, SandboxError, WorkVolume, bounded, docker_err};

/// The removals and creations under way, each in its own task.
#[derive(Default)]
pub(super) struct Sweeper {
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Sweeper {
    /// Runs `removal` in the background, to be waited for by [`Sandbox::swept`].
    pub(super) fn spawn(&self, removal: impl Future<Output = ()> + Send + 'static) {
        // Outside a runtime nothing can be removed; the job's reap or `kiln gc` will.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to remove what a job made on");
            return;
        };
        // Spawned before the list is locked: a runtime shutting down drops the task unrun, here,
        // and what it drops may hand over removals of its own.
        let task = runtime.spawn(removal);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Finished tasks go as new ones come, so a long-lived server keeps none.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Runs `work` in a task of its own, to its end even when the caller stops waiting (its job
    /// was cancelled): a container or volume half made would be lost to Docker. What a caller
    /// gone no longer takes is dropped in the task, and so removed like anything dropped;
    /// [`Sandbox::swept`] waits for the task. `op` names the work should the task end without an
    /// answer.
    pub(super) async fn finish<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T, SandboxError>> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let work = work.in_current_span();
        self.spawn(async move {
            // A caller gone, what it would have had is dropped here.
            let _ = done.send(work.await);
        });
        // The task ended without an answer only if it panicked (or no runtime could run it).
        result.await.unwrap_or(Err(SandboxError::Unfinished(op)))
    }

    /// Removes `container`, then `volumes`; the removal's span is a child of the span that
    /// handed them over (a stage's, whose work it ends).
    fn remove(&self, docker: Docker, container: String, volumes: Vec<WorkVolume>) {
        let parent = tracing::Span::current();
        // The volumes whose batch this frees, as names (see `Leftover`): its holder goes while
        // the container does, and the volumes, mounted by both, after them. The others are
        // emptied once the container is gone.
        let (mut batches, mut emptied) = (Vec::new(), Vec::new());
        for volume in volumes {
            match volume.give_up() {
                Ok(leftover) => batches.push(leftover),
                Err(emptying) => emptied.push(emptying),
            }
        }
        self.spawn(async move {
            let container = async {
                if !container.is_empty() {
                    super::remove_container(&docker, &container)
                        .instrument(info_span!(parent: &parent, "container.remove"))
                        .await;
                }
                join_all(emptied.into_iter().map(|e| e.empty())).await;
            };
            let holders = join_all(batches.iter_mut().map(|b| b.remove_holder()));
            tokio::join!(container, holders);
            join_all(batches.into_iter().map(|b| b.remove_volumes())).await;
        });
    }
}

/// A container created for one stage run and not removed yet.
#[must_use = "a container is removed only through Sandbox::sweep (or when dropped)"]
pub struct Container {
    id: String,
    docker: Docker,
    sweeper: Arc<Sweeper>,
    started: bool,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Removes the container now, waiting for the engine.
    pub async fn remove(mut self) {
        let id = std::mem::take(&mut self.id);
        super::remove_container(&self.docker, &id)
            .instrument(info_span!("container.remove"))
            .await;
    }

    /// Marks the container started; false when it was already (a container runs once).
    pub(super) fn start_once(&mut self) -> bool {
        !std::mem::replace(&mut self.started, true)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let id = std::mem::take(&mut self.id);
        if !id.is_empty() {
            self.sweeper.remove(self.docker.clone(), id, Vec::new());
        }
    }
}

impl Sandbox {
    /// Creates the container `spec` describes, without starting it: its image, limits,
    /// confinement and volumes are fixed now, and [`Sandbox::run_container`] starts it later.
    /// A stage cancelled while its container is created leaves nothing: the creation goes on to
    /// its end and the container is removed ([`Sweeper::finish`]).
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Container, SandboxError> {
        let (docker, sweeper) = (self.docker.clone(), self.sweeper.clone());
        let body = spec.to_create_body();
        let create = async move {
            let created = bounded("create container", docker.create_container(None, body))
                .await?
                .map_err(docker_err("create a container"))?;
            Ok(Container {
                id: created.id,
                docker,
                sweeper,
                started: false,
            })
        };
        let span = info_span!("container.create", kiln.image = %spec.image);
        self.sweeper
            .finish("create a container", create.instrument(span))
            .await
    }

    /// Removes `container`, then `volumes`, in the background.
    pub fn sweep(&self, container: Option<Container>, volumes: Vec<WorkVolume>) {
        let id = container
            .map(|mut c| std::mem::take(&mut c.id))
            .unwrap_or_default();
        self.sweeper.remove(self.docker.clone(), id, volumes);
    }

    /// Waits until everything handed to [`Sandbox::sweep`] (or dropped) is removed.
    pub async fn swept(&self) {
        let since = Instant::now();
        loop {
            let tasks =
                std::mem::take(&mut *self.sweeper.tasks.lock().unwrap_or_else(|e| e.into_inner()));
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                if let Err(e) = task.await {
                    tracing::warn!("a removal or creation did not finish: {e}");
                }
            }
        }
        tracing::debug!("removals settled in {:?}", since.elapsed());
    }
}
