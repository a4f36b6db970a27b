//! A stage's own network: its egress proxy on an internal Docker network and, for a stage given
//! secrets, the job CA whose certificate goes into the stage's volume beside the workspace.

use std::sync::Arc;

use super::stage::Stages;
use crate::egress::{self, Intercept, JobCa, Rules, StageNetwork};
use crate::error::Error;
use crate::model::{NetworkSpec, Stage};
use crate::sandbox::{KILN_DIR, WorkVolume};
use crate::secrets::Redactor;

/// The job CA's certificate in a stage's volume (root's, read-only), beside the workspace.
const CA_FILE: &str = "egress-ca.pem";
/// Variables that point common TLS clients at a CA file: OpenSSL, Python, curl, git, Node.
const CA_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
];
/// Where the host keeps its trust store; its roots go into the stage's CA file beside the
/// job's CA, so hosts kiln does not open still verify inside the sandbox.
const HOST_TRUST_STORES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

impl Stages<'_> {
    /// The stage's network and proxy; with secrets, also the job CA (its certificate put in
    /// `volume`) and the variables the container gets: a placeholder for each secret, and
    /// where the CA file is.
    pub(super) async fn open_network(
        &self,
        stage: Stage,
        n: u32,
        network: &NetworkSpec,
        volume: &WorkVolume,
        redactor: &Redactor,
    ) -> Result<(StageNetwork, Vec<(String, String)>), Error> {
        let config = &self.ctx.config;
        let mut rules = Rules::new(network.allow.clone(), &config.egress);
        rules.redactor = redactor.clone();
        rules.spend = self.spend.and_then(|s| s.of(stage)).cloned();
        let mut env = Vec::new();
        if !network.secrets.is_empty() {
            let bindings = network
                .secrets
                .iter()
                .map(|name| self.ctx.secrets.bind(name))
                .collect::<Result<Vec<_>, _>>()?;
            let mut hosts: Vec<String> = bindings.iter().flat_map(|b| b.hosts.clone()).collect();
            hosts.sort();
            hosts.dedup();
            let ca = JobCa::new(self.job.as_str(), &hosts)?;
            let upstream_ca = match &config.egress.upstream_ca {
                Some(path) => Some(tokio::fs::read(path).await.map_err(Error::io(format!(
                    "cannot read [egress] upstream_ca {}",
                    path.display()
                )))?),
                None => None,
            };
            let upstream = egress::upstream_client(upstream_ca.as_deref())?;
            volume.upload(ca_tar(ca.cert_pem()).await?).await?;
            let ca_path = format!("{KILN_DIR}/{CA_FILE}");
            env.extend(CA_VARIABLES.map(|var| (var.to_string(), ca_path.clone())));
            env.extend(
                bindings
                    .iter()
                    .map(|b| (b.name.clone(), b.placeholder.clone())),
            );
            rules.secrets = bindings;
            rules.intercept = Some(Arc::new(Intercept {
                ca: Arc::new(ca),
                upstream,
            }));
        }
        let role = format!("{stage}-{n}");
        let opened = StageNetwork::create(self.sandbox, self.job, &role, rules).await?;
        Ok((opened, env))
    }
}

/// A tar holding [`CA_FILE`]: the job CA's certificate, then the host's trust store (so hosts
/// kiln does not open still verify), owned by root and read-only, so the sandbox user can
/// neither change nor replace it.
async fn ca_tar(ca_pem: &str) -> Result<Vec<u8>, Error> {
    let mut bundle = ca_pem.as_bytes().to_vec();
    for path in HOST_TRUST_STORES {
        if let Ok(store) = tokio::fs::read(path).await
            && store.len() < 4 << 20
        {
            bundle.push(b'\n');
            bundle.extend(store);
            break;
        }
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o444);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(bundle.len() as u64);
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, CA_FILE, bundle.as_slice())
        .and_then(|()| builder.into_inner())
        .map_err(Error::io("cannot pack the CA file"))
}
