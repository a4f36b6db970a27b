//! bollard: run one command in one fresh, locked-down container, stream its output through a
//! byte cap, kill it at its deadline, and remove it. Also the workspace volume each container
//! works on (`volume`), and reaping what a crashed run left behind (`reap`).

mod holder;
mod output;
mod pool;
mod reap;
pub mod seccomp;
mod spec;
mod sweep;
mod volume;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    AttachContainerOptions, KillContainerOptions, RemoveContainerOptions,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tracing::{Instrument, debug, field, info_span, warn};

pub use output::CappedLog;
pub use spec::{
    ContainerSpec, JOB_INPUT, KILN_DIR, OUT_DIR, Runtime, SANDBOX_UID, SANDBOX_USER, WORKSPACE_DIR,
};
pub use sweep::Container;
pub use volume::HOLDER_IMAGE;
pub use volume::{VolumeRequest, WorkVolume};

use pool::VolumePool;
pub use reap::job_labels;
use reap::owner_labels;
use sweep::Sweeper;

use crate::model::ByteSize;
use crate::secrets::{Redactor, StreamRedactor};

/// Label on every container and volume kiln makes: the job it belongs to.
pub const LABEL_JOB: &str = "kiln.job";
/// Label naming the kiln process that made it, so `kiln gc` knows when its owner is gone.
pub const LABEL_PID: &str = "kiln.pid";

/// How long kiln waits for output to drain after a container stops.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long any single Docker API call may take before kiln calls the engine stuck.
const API_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot reach the Docker engine ({0}); is dockerd running and is its socket readable?")]
    Unreachable(String),
    /// `images::require` adds how to build it.
    #[error("image `{0}` is not on this machine and kiln never pulls")]
    ImageMissing(String),
    #[error("Docker refused to {op}: {message}")]
    Docker { op: &'static str, message: String },
    #[error(
        "the Docker engine reports no seccomp support; kiln runs no container without its seccomp profile"
    )]
    NoSeccomp,
    #[error("the Docker engine did not finish `{0}` in time")]
    Stuck(&'static str),
    #[error(
        "kiln's own task to {0} ended before it answered (a bug in kiln; `kiln gc` removes what it left)"
    )]
    Unfinished(&'static str),
    #[error(
        "the operator config's [sandbox] runtime `{name}` is not registered with the Docker engine (it has: {known}); register it in /etc/docker/daemon.json `runtimes` and reload dockerd"
    )]
    RuntimeMissing { name: String, known: String },
}

fn docker_err(op: &'static str) -> impl Fn(bollard::errors::Error) -> SandboxError {
    move |e| SandboxError::Docker {
        op,
        message: e.to_string(),
    }
}

/// Bounds a Docker API call in time: every wait has a timeout.
pub(crate) async fn bounded<T, E>(
    op: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, SandboxError> {
    bounded_for(API_TIMEOUT, op, fut).await
}

async fn bounded_for<T, E>(
    limit: Duration,
    op: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, SandboxError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| SandboxError::Stuck(op))
}

/// Where a running container's output is written as it comes, and what is hidden in it.
pub struct Live<'a> {
    pub path: &'a Path,
    pub redactor: Redactor,
}

/// How one container ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The command's exit code; `None` when kiln killed it at the deadline.
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    /// The kernel's OOM killer fired inside the container.
    pub oom_killed: bool,
    /// From asking the engine to create the container to its start: what kiln waits for
    /// before the command runs.
    pub start_latency: Duration,
    /// From the same moment to the first byte of output kiln read: how soon the command's
    /// first instruction showed (`None`: it wrote nothing).
    pub first_output: Option<Duration>,
    pub duration: Duration,
    /// stdout and stderr interleaved, capped.
    pub output: CappedLog,
}

impl RunOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// A connection to the Docker engine, and the workspace volumes made ahead on it.
#[derive(Clone)]
pub struct Sandbox {
    docker: Docker,
    volumes: Arc<VolumePool>,
    /// What the engine said of itself (seccomp, runtimes): asked once, not per job.
    engine: Arc<tokio::sync::OnceCell<EngineFacts>>,
    /// Containers and volumes being removed off their jobs' critical paths.
    sweeper: Arc<Sweeper>,
}

/// What kiln's confinement needs of the engine.
struct EngineFacts {
    seccomp: bool,
    /// Each registered runtime's name, and whether its binary is gVisor's `runsc`.
    runtimes: Vec<(String, bool)>,
}

impl Sandbox {
    /// Connects through `DOCKER_HOST` or the default socket and agrees on an API version.
    pub async fn connect() -> Result<Self, SandboxError> {
        // kiln bounds every call itself (`bounded`, stage deadlines); bollard's own 120 s default
        // would cut a large workspace upload short.
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| SandboxError::Unreachable(e.to_string()))?
            .with_timeout(Duration::from_secs(3600));
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| SandboxError::Unreachable("no answer within 10s".into()))?
            .map_err(|e| SandboxError::Unreachable(e.to_string()))?;
        Ok(Sandbox {
            docker,
            volumes: Arc::new(VolumePool::new(2)),
            engine: Arc::default(),
            sweeper: Arc::default(),
        })
    }

    /// This sandbox with workspace volumes made `per_holder` to a holder container (2 by
    /// default: one job's generator and tests). More saves holder starts when many jobs run;
    /// a used volume's memory is freed only with its whole batch.
    pub fn with_volumes_per_holder(self, per_holder: usize) -> Self {
        Sandbox {
            volumes: Arc::new(VolumePool::new(per_holder)),
            ..self
        }
    }

    /// An empty workspace volume of `size` bytes; give it up with [`WorkVolume::remove`].
    pub async fn workspace_volume(&self, size: ByteSize) -> Result<WorkVolume, SandboxError> {
        self.volumes.take(self, size).await
    }

    /// Makes a batch of workspace volumes of `size` ahead, so that a stage asking for one finds
    /// it ready (its holder's start is as dear as a stage's own): call it while other work goes
    /// on. Without it, the first [`Sandbox::workspace_volume`] makes the batch.
    pub async fn prepare_volumes(&self, size: ByteSize) -> Result<(), SandboxError> {
        VolumePool::prepare(self, size).await
    }

    /// Removes the workspace volumes made ahead and not used, once every removal under way
    /// ([`Sandbox::swept`]) is done; before this process ends.
    pub async fn release_spare_volumes(&self) {
        self.swept().await;
        for volume in self.volumes.drain() {
            volume.remove().await;
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Fails unless the engine applies seccomp profiles (kiln's confinement relies on its own)
    /// and has every runtime in `runtimes` registered (the operator's `[sandbox]` runtimes).
    pub async fn require_confinement(&self, runtimes: &[&str]) -> Result<(), SandboxError> {
        let ask = || async {
            let info = bounded("read the engine's info", self.docker.info())
                .await?
                .map_err(docker_err("read the engine's info"))?;
            let seccomp = info
                .security_options
                .unwrap_or_default()
                .iter()
                .any(|o| o.split(',').any(|part| part == "name=seccomp"));
            let mut runtimes: Vec<(String, bool)> = info
                .runtimes
                .unwrap_or_default()
                .into_iter()
                .map(|(name, runtime)| {
                    let binary = runtime.path.unwrap_or_else(|| name.clone());
                    let gvisor = Path::new(&binary).file_name() == Some("runsc".as_ref());
                    (name, gvisor)
                })
                .collect();
            runtimes.sort();
            Ok::<_, SandboxError>(EngineFacts { seccomp, runtimes })
        };
        let facts = self.engine.get_or_try_init(ask).await?;
        if !facts.seccomp {
            return Err(SandboxError::NoSeccomp);
        }
        match runtimes
            .iter()
            .find(|r| !facts.runtimes.iter().any(|(known, _)| known == *r))
        {
            Some(missing) => Err(SandboxError::RuntimeMissing {
                name: (*missing).into(),
                known: facts
                    .runtimes
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            None => Ok(()),
        }
    }

    /// The registered runtime `name`, and whether it is gVisor's (its binary is `runsc`).
    pub async fn runtime(&self, name: &str) -> Result<Runtime, SandboxError> {
        self.require_confinement(&[name]).await?;
        let facts = self
            .engine
            .get()
            .expect("require_confinement asked the engine");
        let gvisor = facts.runtimes.iter().any(|(known, g)| known == name && *g);
        Ok(Runtime {
            name: name.into(),
            gvisor,
        })
    }

    /// Fails with [`SandboxError::ImageMissing`] when `image` is not on this machine.
    pub async fn require_image(&self, image: &str) -> Result<(), SandboxError> {
        match bounded("inspect image", self.docker.inspect_image(image)).await? {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(SandboxError::ImageMissing(image.into())),
            Err(e) => Err(docker_err("inspect an image")(e)),
        }
    }

    /// Creates, starts and waits for one container, then removes it, whatever happened.
    pub async fn run(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
    ) -> Result<RunOutcome, SandboxError> {
        self.run_live(spec, timeout, None).await
    }

    /// [`Sandbox::run`], also writing the output to the file `live.path` as it comes: the
    /// bytes the kept output will start with (up to half the output cap), redacted, so a
    /// reader polling the file sees it grow while the container runs, and the kept output may
    /// later replace it.
    pub async fn run_live(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
        live: Option<Live<'_>>,
    ) -> Result<RunOutcome, SandboxError> {
        let asked = Instant::now();
        let mut container = self.create(spec).await?;
        let cap = spec.limits.output.bytes() as usize;
        let outcome = self
            .run_container(&mut container, cap, timeout, asked, live)
            .await;
        container.remove().await;
        outcome
    }

    /// Starts `container` (made by [`Sandbox::create`], never started before), streams its
    /// output through `output_cap` (and into `live`), kills it at `timeout` and reads how it
    /// ended. `asked` is when its stage asked for it: the start latency counts from there. The
    /// container stays, stopped: [`Sandbox::sweep`] removes it.
    pub async fn run_container(
        &self,
        container: &mut Container,
        output_cap: usize,
        timeout: Duration,
        asked: Instant,
        live: Option<Live<'_>>,
    ) -> Result<RunOutcome, SandboxError> {
        if !container.start_once() {
            return Err(SandboxError::Docker {
                op: "start a container",
                message: format!("container {} was started before", container.id()),
            });
        }
        let live = match live {
            Some(live) => match tokio::fs::File::create(live.path).await {
                Ok(file) => Some((file, StreamRedactor::new(live.redactor))),
                Err(e) => {
                    warn!("cannot write {}: {e}; no live output", live.path.display());
                    None
                }
            },
            None => None,
        };
        self.run_created(container.id(), output_cap, timeout, asked, live)
            .await
    }

    async fn run_created(
        &self,
        id: &str,
        output_cap: usize,
        timeout: Duration,
        asked: Instant,
        mut live: Option<(tokio::fs::File, StreamRedactor)>,
    ) -> Result<RunOutcome, SandboxError> {
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = bounded("attach", self.docker.attach_container(id, Some(attach)))
            .await?
            .map_err(docker_err("attach to a container"))?;
        let mut stream = attached.output;
        let reader = tokio::spawn(async move {
            let mut log = CappedLog::new(output_cap);
            let mut first = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => {
                        first.get_or_insert_with(Instant::now);
                        let bytes = chunk.into_bytes();
                        let head = log.push(&bytes);
                        if head > 0
                            && let Some((file, redactor)) = live.as_mut()
                            && let Err(e) = file.write_all(&redactor.push(&bytes[..head])).await
                        {
                            debug!("live output stopped: {e}");
                            live = None;
                        }
                    }
                    Err(e) => {
                        debug!("output stream ended: {e}");
                        break;
                    }
                }
            }
            if let Some((mut file, redactor)) = live {
                let _ = file.write_all(&redactor.finish()).await;
                let _ = file.flush().await;
            }
            (log, first)
        });

        let started = Instant::now();
        bounded("start container", self.docker.start_container(id, None))
            .instrument(info_span!("container.start"))
            .await?
            .map_err(docker_err("start a container"))?;
        let start_latency = asked.elapsed();
        let waiting = info_span!(
            "container.wait",
            kiln.exit_code = field::Empty,
            kiln.timed_out = field::Empty,
            kiln.oom_killed = field::Empty,
        );
        let outcome = self
            .wait_and_read(
                id,
                output_cap,
                timeout,
                (asked, started, start_latency),
                reader,
            )
            .instrument(waiting.clone())
            .await?;
        if let Some(code) = outcome.exit_code {
            waiting.record("kiln.exit_code", code);
        }
        waiting.record("kiln.timed_out", outcome.timed_out);
        waiting.record("kiln.oom_killed", outcome.oom_killed);
        Ok(outcome)
    }

    /// Waits for the container `id`, asked for at `asked`, asked to start at `started` (and
    /// started `start_latency` after it was asked for), to end (killing it at `timeout`),
    /// drains its output from `reader` and reads how it ended.
    async fn wait_and_read(
        &self,
        id: &str,
        output_cap: usize,
        timeout: Duration,
        (asked, started, start_latency): (Instant, Instant, Duration),
        mut reader: tokio::task::JoinHandle<(CappedLog, Option<Instant>)>,
    ) -> Result<RunOutcome, SandboxError> {
        let timed_out = !self
            .wait_until(id, tokio::time::Instant::now() + timeout)
            .await;
        if timed_out {
            let kill = KillContainerOptions {
                signal: "KILL".into(),
            };
            if let Ok(Err(e)) =
                bounded("kill container", self.docker.kill_container(id, Some(kill))).await
            {
                debug!("kill after timeout: {e}");
            }
            let _ = tokio::time::timeout(API_TIMEOUT, self.docker.wait_container(id, None).next())
                .await;
        }
        let duration = started.elapsed();
        let (output, first_output) = match tokio::time::timeout(DRAIN_GRACE, &mut reader).await {
            Ok(Ok((log, first))) => (log, first.map(|at| at.duration_since(asked))),
            _ => {
                reader.abort();
                warn!(
                    container = id,
                    "output did not drain within {DRAIN_GRACE:?}; kept none"
                );
                (CappedLog::new(output_cap), None)
            }
        };
        let state = bounded("inspect container", self.docker.inspect_container(id, None))
            .await?
            .map_err(docker_err("inspect a container"))?
            .state
            .unwrap_or_default();
        Ok(RunOutcome {
            exit_code: if timed_out { None } else { state.exit_code },
            timed_out,
            oom_killed: state.oom_killed.unwrap_or(false),
            start_latency,
            first_output,
            duration,
            output,
        })
    }

    /// Waits for the container to stop; false when `deadline` came first. A wait stream that
    /// breaks without the container's status is asked again, so a dropped connection is not
    /// taken for an exit.
    async fn wait_until(&self, id: &str, deadline: tokio::time::Instant) -> bool {
        loop {
            let mut wait = self.docker.wait_container(id, None);
            let next = tokio::time::timeout_at(deadline, wait.next());
            match next.await {
                Err(_) => return false,
                Ok(Some(Ok(_)))
                | Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { .. }))) => {
                    return true;
                }
                Ok(other) => {
                    debug!(
                        container = id,
                        "wait ended without a status ({other:?}); waiting again"
                    );
                    tokio::time::sleep_until(
                        (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline),
                    )
                    .await;
                }
            }
        }
    }

    async fn remove_container(&self, id: &str) {
        remove_container(&self.docker, id).await;
    }
}

/// Removes a container, running or not; failures are logged, the job's final reap retries.
async fn remove_container(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match bounded("remove container", docker.remove_container(id, Some(opts))).await {
        Ok(Ok(())) => {}
        Ok(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => {}
        // Another kiln on this engine is removing it (two reapers of one dead server): wait for
        // that removal, so "reaped" still means gone when this returns.
        Ok(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        })) => wait_gone(docker, id).await,
        Ok(Err(e)) => warn!(container = id, "could not remove container: {e}"),
        Err(e) => warn!(container = id, "{e}"),
    }
}

/// Waits up to ten seconds for a container someone else is removing to be gone.
async fn wait_gone(docker: &Docker, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match bounded("inspect container", docker.inspect_container(id, None)).await {
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            })) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return warn!(container = id, "{e}"),
        }
    }
    warn!(
        container = id,
        "another removal of this container did not finish in 10 s"
    );
}

/// The image the workspace holder runs, which every job therefore needs.
pub fn volume_holder_image() -> &'static str {
    volume::HOLDER_IMAGE
}
