//! A stage's way out: an internal Docker network (no route anywhere) made for the one stage,
//! and an egress proxy listening on the host's address on that network, serving its
//! containers only.

use std::net::{IpAddr, SocketAddr};

use bollard::models::NetworkCreateRequest;

use super::{Proxy, Request, Rules};
use crate::model::JobId;
use crate::sandbox::{Sandbox, SandboxError, bounded, job_labels};

/// The network and its proxy; [`StageNetwork::finish`] stops the proxy and removes the network.
pub struct StageNetwork {
    sandbox: Sandbox,
    name: String,
    proxy: Proxy,
}

impl StageNetwork {
    /// Makes the network `kiln-<job>-<role>` and starts a proxy with `rules`, serving that
    /// network only.
    pub async fn create(
        sandbox: &Sandbox,
        job: &JobId,
        role: &str,
        rules: Rules,
    ) -> Result<StageNetwork, SandboxError> {
        let docker = sandbox.docker();
        let name = format!(
            "kiln-{job}-{role}-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: Some(true),
            attachable: Some(false),
            labels: Some(job_labels(job)),
            ..Default::default()
        };
        bounded("create network", docker.create_network(request))
            .await?
            .map_err(|e| SandboxError::Docker {
                op: "create a stage network",
                message: e.to_string(),
            })?;
        let made = StageNetwork::start_proxy(sandbox, &name, rules).await;
        match made {
            Ok(proxy) => Ok(StageNetwork {
                sandbox: sandbox.clone(),
                name,
                proxy,
            }),
            Err(e) => {
                let _ = docker.remove_network(&name).await;
                Err(e)
            }
        }
    }

    async fn start_proxy(
        sandbox: &Sandbox,
        name: &str,
        mut rules: Rules,
    ) -> Result<Proxy, SandboxError> {
        let bad = |message: String| SandboxError::Docker {
            op: "set up a stage network",
            message,
        };
        let inspected = bounded(
            "inspect network",
            sandbox.docker().inspect_network(name, None),
        )
        .await?
        .map_err(|e| bad(e.to_string()))?;
        let config = inspected
            .ipam
            .and_then(|ipam| ipam.config)
            .and_then(|configs| configs.into_iter().next())
            .ok_or_else(|| bad(format!("network {name} has no address range")))?;
        let gateway: IpAddr = config
            .gateway
            .as_deref()
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| bad(format!("network {name} has no gateway address")))?;
        let (subnet, prefix) = config
            .subnet
            .as_deref()
            .and_then(|s| s.split_once('/'))
            .and_then(|(ip, len)| Some((ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?)))
            .ok_or_else(|| bad(format!("network {name} has no subnet")))?;
        rules.clients = Some((subnet, prefix));
        Proxy::start(SocketAddr::new(gateway, 0), rules)
            .await
            .map_err(|e| bad(format!("cannot listen on {gateway}: {e}")))
    }

    /// The Docker network the stage's container joins.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://<gateway>:<port>`: the container's `HTTP_PROXY` and `HTTPS_PROXY`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy.addr())
    }

    /// Stops the proxy (cutting what is still open) and removes the network; returns every
    /// request and how many more went unrecorded.
    pub async fn finish(self) -> (Vec<Request>, usize) {
        let requests = self.proxy.stop().await;
        let removed = bounded(
            "remove network",
            self.sandbox.docker().remove_network(&self.name),
        )
        .await;
        let failed = match removed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            tracing::warn!(
                network = self.name,
                "could not remove network: {e}; the job's reap retries"
            );
        }
        requests
    }
}
