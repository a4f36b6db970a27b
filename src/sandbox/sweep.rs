//! Containers made ahead of their start, and removals kept off a job's critical path.
//!
//! A [`Container`] is created (never started) before its stage asks for it, so that the stage
//! waits only for its start; it is started at most once. When its job no longer needs it, it is
//! handed to [`Sandbox::sweep`] with the volumes it used, and removed while the job goes on. A
//! container dropped unstarted or unswept (its job ended first, or was cancelled) is swept all
//! the same. [`Sandbox::swept`] waits for every removal handed over: a process calls it before
//! it ends, so nothing it made outlives it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::Docker;
use tokio::task::JoinSet;
use tracing::{Instrument, info_span};

use super::{ContainerSpec, Sandbox, SandboxError, WorkVolume, bounded, docker_err};

/// The removals under way; each is removed in its own task.
#[derive(Default)]
pub(super) struct Sweeper {
    tasks: Mutex<JoinSet<()>>,
}

impl Sweeper {
    /// Runs `removal` in the background, to be waited for by [`Sandbox::swept`].
    pub(super) fn spawn(&self, removal: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Finished removals are collected as new ones come, so a long-lived server keeps none.
        while tasks.try_join_next().is_some() {}
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tasks.spawn_on(removal, &runtime);
            }
            // Outside a runtime nothing can be removed; the job's reap or `kiln gc` will.
            Err(_) => tracing::warn!("no runtime to remove what a job made on"),
        }
    }

    /// Removes `container`, then `volumes`; the removal's span is a child of the span that
    /// handed them over (a stage's, whose work it ends).
    fn remove(&self, docker: Docker, container: String, volumes: Vec<WorkVolume>) {
        let parent = tracing::Span::current();
        self.spawn(async move {
            if !container.is_empty() {
                super::remove_container(&docker, &container)
                    .instrument(info_span!(parent: &parent, "container.remove"))
                    .await;
            }
            // A volume is in use while its container exists: removed after it.
            for volume in volumes {
                volume.remove().await;
            }
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
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Container, SandboxError> {
        let created = bounded(
            "create container",
            self.docker.create_container(None, spec.to_create_body()),
        )
        .instrument(info_span!("container.create", kiln.image = %spec.image))
        .await?
        .map_err(docker_err("create a container"))?;
        Ok(Container {
            id: created.id,
            docker: self.docker.clone(),
            sweeper: self.sweeper.clone(),
            started: false,
        })
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
            let mut tasks =
                std::mem::take(&mut *self.sweeper.tasks.lock().unwrap_or_else(|e| e.into_inner()));
            if tasks.is_empty() {
                break;
            }
            while let Some(done) = tasks.join_next().await {
                if let Err(e) = done {
                    tracing::warn!("a removal did not finish: {e}");
                }
            }
        }
        tracing::debug!("removals settled in {:?}", since.elapsed());
    }
}
