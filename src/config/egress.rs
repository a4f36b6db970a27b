//! `[egress]`: what a stage with an allowlist may reach beyond the public internet (only the
//! operator opens other addresses), and the egress proxy's caps.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::model::ByteSize;
use crate::model::host::{Allow, written_host_name};
use crate::model::spend::{ApiKind, Budget, Price};

/// `[egress]` in the operator config: what only the operator may open, and the caps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// The `host:port` pairs a job's allowlist may name; a job naming another is refused
    /// before anything runs. Empty (the default): no job may have network.
    pub permit: Vec<Allow>,
    /// Addresses a job may reach although they are not public (a model API on the LAN, a
    /// test's stand-in on loopback), and IP literals a job may name.
    pub allow_addresses: Vec<IpAddr>,
    /// Names resolved here instead of by DNS, like curl's `--resolve`.
    pub hosts: HashMap<String, IpAddr>,
    /// Connections one stage may open through the proxy. Default 256.
    pub max_connections: usize,
    /// Bytes one stage may move each way through the proxy. Default 256 MiB.
    pub max_bytes: ByteSize,
    /// A PEM file of CA certificates the proxy trusts, besides the Mozilla roots, when it opens
    /// TLS to a host a secret is bound to (a model API behind your own CA). Default none.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// `[egress.models."api.anthropic.com"]`: the model APIs whose responses kiln meters (in
    /// the tunnels it opens to add their key), what API each speaks and its prices.
    pub models: HashMap<String, ModelConfig>,
    /// What a job's generator (and, apart, its reviewer) may spend on model calls when the job
    /// says nothing: `{ usd = 2.0, tokens = 2_000_000, requests = 300 }`, any subset. Default:
    /// no limit.
    pub budget: Budget,
    /// The most a job may ask for in its own `budget`. Default: no ceiling.
    pub budget_ceiling: Budget,
    /// Keep each model call's request and response (the text reassembled from a stream) in
    /// `attempt-N/<stage>.transcript.jsonl`, capped, secrets redacted, for the people who
    /// review the work. Default false.
    pub transcripts: bool,
}

/// One model API host: the API it speaks and its prices, in dollars per million tokens.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ApiKind,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Cache reads; default: the input price.
    #[serde(default)]
    pub cached_per_mtok: Option<f64>,
}

impl ModelConfig {
    pub fn price(&self) -> Price {
        Price {
            input_per_mtok: self.input_per_mtok,
            output_per_mtok: self.output_per_mtok,
            cached_per_mtok: self.cached_per_mtok,
        }
    }
}

impl EgressConfig {
    /// Each `hosts` name is a host name as a job would write it (lowercase, no trailing dot).
    pub(super) fn check(&self) -> Result<(), String> {
        for name in self.hosts.keys() {
            written_host_name(name).map_err(|why| format!("hosts: {why}"))?;
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        for (host, model) in &self.models {
            written_host_name(host).map_err(|why| format!("models: {why}"))?;
            model
                .price()
                .check(host)
                .map_err(|e| format!("models: {e}"))?;
        }
        self.budget_ceiling
            .check(&Budget::default())
            .map_err(|e| format!("budget_ceiling: {e}"))?;
        self.budget
            .check(&self.budget_ceiling)
            .map_err(|e| format!("budget: {e}"))?;
        if !self.budget.is_unlimited() && self.models.is_empty() {
            return Err(
                "budget: no model host is listed in [egress.models], so no spend could be counted"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            permit: Vec::new(),
            allow_addresses: Vec::new(),
            hosts: HashMap::new(),
            max_connections: 256,
            max_bytes: ByteSize::mib(256),
            upstream_ca: None,
            models: HashMap::new(),
            budget: Budget::default(),
            budget_ceiling: Budget::default(),
            transcripts: false,
        }
    }
}
