//! `[sandbox]`: which OCI runtime the Docker engine runs stages with. The default is the
//! engine's (runc); `runsc` (gVisor) puts a user-space kernel between a generator and the host's.

use serde::Deserialize;

/// `[sandbox]`: the runtimes every stage container runs under, registered with dockerd by these
/// names (`/etc/docker/daemon.json` `runtimes`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The runtime of stages without network. Default: the engine's default runtime.
    pub runtime: Option<String>,
    /// The runtime of stages with network (an egress allowlist, or the `network` loosening).
    /// Default: `runtime`. gVisor needs two: `--network=none` where there is no network, and
    /// its network passthrough inside the stage's own network namespace where there is one.
    pub network_runtime: Option<String>,
    /// Tasks the runtime itself runs inside a stage's cgroup, added to every stage's pids limit
    /// when `runtime` is set, so `limits.pids` still counts the job's own processes. gVisor's
    /// sentry and gofer take about 40 (with the ptrace platform, each process inside adds one
    /// more on the host). Default 0; at most 1024.
    pub runtime_pids: u32,
}

impl SandboxConfig {
    /// The runtime for a stage, with network or without; `None`: the engine's default.
    pub fn runtime_for(&self, network: bool) -> Option<&str> {
        match (network, &self.network_runtime) {
            (true, Some(runtime)) => Some(runtime),
            _ => self.runtime.as_deref(),
        }
    }

    /// The pids limit of a stage whose job allows `pids` of its own.
    pub fn pids_for(&self, pids: u32) -> u32 {
        match self.runtime {
            Some(_) => pids.saturating_add(self.runtime_pids),
            None => pids,
        }
    }

    /// Every runtime the config names, for preflight to find registered.
    pub fn runtimes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = [&self.runtime, &self.network_runtime]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        names.dedup();
        names
    }

    pub(super) fn check(&self) -> Result<(), String> {
        for (key, name) in [
            ("runtime", &self.runtime),
            ("network_runtime", &self.network_runtime),
        ] {
            let Some(name) = name else { continue };
            let fine = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !fine {
                return Err(format!(
                    "{key} `{name}` is not a runtime name (letters, digits, `.`, `_`, `-`)"
                ));
            }
        }
        if self.network_runtime.is_some() && self.runtime.is_none() {
            return Err("network_runtime is set but runtime is not: set both".into());
        }
        if self.runtime_pids > 1024 {
            return Err(format!(
                "runtime_pids is {}; it must be at most 1024",
                self.runtime_pids
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_with_network_get_the_network_runtime() {
        let config: SandboxConfig =
            toml::from_str("runtime = 'runsc'\nnetwork_runtime = 'runsc-net'").unwrap();
        config.check().unwrap();
        assert_eq!(config.runtime_for(false), Some("runsc"));
        assert_eq!(config.runtime_for(true), Some("runsc-net"));
        assert_eq!(config.runtimes(), ["runsc", "runsc-net"]);
        assert_eq!(config.pids_for(32), 32);
        let roomy: SandboxConfig = toml::from_str("runtime = 'runsc'\nruntime_pids = 64").unwrap();
        assert_eq!(roomy.pids_for(32), 96);
        let one: SandboxConfig = toml::from_str("runtime = 'runsc'").unwrap();
        assert_eq!(one.runtime_for(true), Some("runsc"));
        assert_eq!(SandboxConfig::default().runtime_for(false), None);
        for bad in [
            "runtime = ''",
            "runtime = 'runsc --platform=kvm'",
            "network_runtime = 'runsc'",
            "runtime = 'runsc'\nruntime_pids = 5000",
        ] {
            let config: SandboxConfig = toml::from_str(bad).unwrap();
            assert!(config.check().is_err(), "{bad}");
        }
        assert!(toml::from_str::<SandboxConfig>("runtim = 'runsc'").is_err());
    }
}
