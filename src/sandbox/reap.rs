//! What kiln made, found by its labels and removed: one job's containers, networks and volumes,
//! everything this process made, what dead kiln processes left (`kiln gc`), and a stage's
//! running containers killed before their end.

use std::collections::HashMap;

use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveVolumeOptions,
};
use tracing::{debug, warn};

use super::{LABEL_JOB, LABEL_PID, Sandbox, SandboxError, bounded, docker_err};
use crate::model::JobId;

impl Sandbox {
    /// Kills the running containers this process made that carry every one of `labels` (a
    /// stage stopped before its end); their runs then end as if the command had been killed.
    pub async fn kill_labelled(&self, labels: &[String]) -> Result<usize, SandboxError> {
        let mut wanted = labels.to_vec();
        wanted.push(format!("{LABEL_PID}={}", std::process::id()));
        let filters = HashMap::from([
            ("label".to_string(), wanted),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        let list = ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        };
        let running = bounded("list containers", self.docker.list_containers(Some(list)))
            .await?
            .map_err(docker_err("list containers"))?;
        let mut killed = 0;
        for id in running.into_iter().filter_map(|c| c.id) {
            let kill = KillContainerOptions {
                signal: "KILL".into(),
            };
            match bounded(
                "kill container",
                self.docker.kill_container(&id, Some(kill)),
            )
            .await?
            {
                Ok(()) => killed += 1,
                Err(e) => debug!(container = id, "kill: {e}"),
            }
        }
        Ok(killed)
    }

    /// Removes every container, network and volume this kiln process made for `job`; safe to
    /// call more than once. Another process's objects for the same job (a server that lost the
    /// job's lease, on the same engine) are left to that process or to `kiln gc`.
    pub async fn reap_job(&self, job: &JobId) -> Result<usize, SandboxError> {
        let pid = format!("{LABEL_PID}={}", std::process::id());
        self.reap(&[&format!("{LABEL_JOB}={job}"), &pid], |_| true)
            .await
    }

    /// Removes every container, volume and network this kiln process made (a stopping server's
    /// pooled holders among them).
    pub async fn reap_own(&self) -> Result<usize, SandboxError> {
        self.reap(&[&format!("{LABEL_PID}={}", std::process::id())], |_| true)
            .await
    }

    /// Removes kiln-labelled containers and volumes whose owning kiln process is gone
    /// (or all of them with `all`). Returns how many objects were removed.
    pub async fn gc(&self, all: bool) -> Result<usize, SandboxError> {
        self.reap(&[LABEL_JOB], |labels| all || !owner_alive(labels))
            .await
    }

    /// Removes what carries every one of `labels` and is `doomed`.
    async fn reap(
        &self,
        labels: &[&str],
        doomed: impl Fn(&HashMap<String, String>) -> bool,
    ) -> Result<usize, SandboxError> {
        let wanted = labels.iter().map(|l| l.to_string()).collect();
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let list = ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        };
        let containers = bounded("list containers", self.docker.list_containers(Some(list)))
            .await?
            .map_err(docker_err("list containers"))?;
        let mut removed = 0;
        for c in containers {
            if doomed(&c.labels.unwrap_or_default())
                && let Some(id) = c.id
            {
                self.remove_container(&id).await;
                removed += 1;
            }
        }
        let list = ListNetworksOptions {
            filters: Some(filters.clone()),
        };
        let networks = bounded("list networks", self.docker.list_networks(Some(list)))
            .await?
            .map_err(docker_err("list networks"))?;
        for n in networks {
            if doomed(&n.labels.unwrap_or_default())
                && let Some(name) = n.name
            {
                match bounded("remove network", self.docker.remove_network(&name)).await? {
                    Ok(()) => removed += 1,
                    Err(e) => warn!(network = name, "could not remove network: {e}"),
                }
            }
        }
        let list = ListVolumesOptions {
            filters: Some(filters),
        };
        let volumes = bounded("list volumes", self.docker.list_volumes(Some(list)))
            .await?
            .map_err(docker_err("list volumes"))?;
        for v in volumes.volumes.unwrap_or_default() {
            if doomed(&v.labels) {
                let opts = RemoveVolumeOptions { force: true };
                match bounded(
                    "remove volume",
                    self.docker.remove_volume(&v.name, Some(opts)),
                )
                .await?
                {
                    Ok(()) => removed += 1,
                    Err(e) => warn!(volume = v.name, "could not remove volume: {e}"),
                }
            }
        }
        Ok(removed)
    }
}

/// Labels for everything made for `job`: the job id and this process, for `kiln gc`.
pub fn job_labels(job: &JobId) -> HashMap<String, String> {
    owner_labels(&job.to_string())
}

/// [`job_labels`] for an owner that may be no one job (pooled volumes are `shared`).
pub(super) fn owner_labels(owner: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_JOB.to_string(), owner.to_string()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
    ])
}

/// Whether the kiln process named in `labels` still runs on this machine.
fn owner_alive(labels: &HashMap<String, String>) -> bool {
    labels
        .get(LABEL_PID)
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(crate::model::process::process_alive)
}
