//! A job's own certificate authority, so the egress proxy can open the TLS of requests to the
//! hosts a secret is bound to and add the credential there. Its private key lives in kiln's
//! memory only and is gone with the job; its certificate (name-constrained to those hosts, valid
//! for a week) is all the sandbox gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// Why a CA, a leaf certificate or the upstream TLS config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot make the job's CA: {0}")]
    Ca(#[source] rcgen::Error),
    #[error("cannot make a certificate for {host}: {source}")]
    Leaf {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] rustls::Error),
    #[error("[egress] upstream_ca: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("[egress] upstream_ca holds no PEM certificate")]
    NoCertificate,
}

/// The CA: its certificate, the key that signs leaf certificates, and the server configs made
/// so far (one per host).
pub struct JobCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// One key for every leaf: a job's leaves live as long as the CA does.
    leaf_key: KeyPair,
    servers: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl JobCa {
    /// A new CA for `job` that may vouch for `hosts` only (name constraints).
    pub fn new(job: &str, hosts: &[String]) -> Result<JobCa, CaError> {
        let failed = CaError::Ca;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("kiln job {job} egress CA"));
        name.push(DnType::OrganizationName, "kiln");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: hosts
                .iter()
                .map(|h| GeneralSubtree::DnsName(h.clone()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(7);
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(JobCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            leaf_key: KeyPair::generate().map_err(failed)?,
            servers: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM: what the sandbox trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server config presenting a certificate for `host`, signed by this CA, speaking
    /// HTTP/1.1 only.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = servers.get(host) {
            return Ok(config.clone());
        }
        let failed = |source| CaError::Leaf {
            host: host.to_string(),
            source,
        };
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(failed)?;
        params.distinguished_name = DistinguishedName::new();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(7);
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(failed)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(CaError::Tls)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.cert_der.clone()], key)
            .map_err(CaError::Tls)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        servers.insert(host.to_string(), config.clone());
        Ok(config)
    }
}

/// The one TLS implementation kiln uses for egress (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the proxy checks the real hosts it opens TLS to: the Mozilla roots, plus the operator's
/// own CA (`[egress] upstream_ca`) when given.
pub fn upstream_client(extra_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, CaError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(CaError::Pem)?;
            roots.add(cert).map_err(CaError::Tls)?;
            added += 1;
        }
        if added == 0 {
            return Err(CaError::NoCertificate);
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(CaError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_for_bound_hosts_chain_to_the_job_ca() {
        let ca = JobCa::new("job1", &["model.test".into()]).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let first = ca.server_config("model.test").unwrap();
        let again = ca.server_config("model.test").unwrap();
        assert!(Arc::ptr_eq(&first, &again), "one config per host");
        let client = upstream_client(Some(ca.cert_pem().as_bytes())).unwrap();
        assert_eq!(client.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(upstream_client(Some(b"not a pem")).is_err());
    }
}
