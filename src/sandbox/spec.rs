//! The container spec: every sandbox default in one place, each loosening explicit.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    ResourcesUlimits,
};

use crate::config::Loosening;
use crate::model::Limits;

/// Where the workspace volume is mounted in every container: the tree at `/kiln/workspace`,
/// the job input at `/kiln/job.json`.
pub const KILN_DIR: &str = "/kiln";
pub const WORKSPACE_DIR: &str = "/kiln/workspace";
pub const JOB_INPUT: &str = "/kiln/job.json";
/// Where a container that reads its workspace only (the reviewer) may write: a second volume.
pub const OUT_DIR: &str = "/kiln/out";

/// The unprivileged user every command runs as (kiln's images name it `kiln`).
pub const SANDBOX_USER: &str = "1000:1000";
/// The uid (and gid) of [`SANDBOX_USER`].
pub const SANDBOX_UID: u32 = 1000;

/// What one container is: image, argv, environment, limits and labels.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub image: String,
    pub command: Vec<String>,
    /// Only these variables are set (besides what the image declares); none come from the host.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub loosened: Vec<Loosening>,
    /// The workspace volume mounted at [`KILN_DIR`], if any.
    pub volume: Option<String>,
    /// Mount the workspace volume read-only.
    pub volume_read_only: bool,
    /// A writable volume mounted at [`OUT_DIR`] (inside a read-only workspace), if any.
    pub out_volume: Option<String>,
    /// The stage's own internal network, whose only way out is kiln's egress proxy; `None`:
    /// no network (or the bridge, when the operator permits the `network` loosening).
    pub network: Option<String>,
    /// The OCI runtime the engine runs it with (`runsc` for gVisor); `None`: the engine's default.
    pub runtime: Option<Runtime>,
    pub labels: HashMap<String, String>,
}

/// An OCI runtime registered with the engine, as kiln runs a stage under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub name: String,
    /// Its binary is gVisor's `runsc`: kiln's seccomp profile goes in with `clone3` allowed
    /// (see [`super::seccomp::gvisor_profile`]).
    pub gvisor: bool,
}

impl ContainerSpec {
    fn seccomp_profile(&self) -> &'static str {
        match &self.runtime {
            Some(runtime) if runtime.gvisor => super::seccomp::gvisor_profile(),
            _ => super::seccomp::PROFILE,
        }
    }

    /// The Docker create body with every default on: no network, no capabilities,
    /// no-new-privileges, read-only root, capped /tmp, non-root user, memory without swap,
    /// CPU quota, pids limit, an init, no log driver (output streams only to kiln).
    pub fn to_create_body(&self) -> ContainerCreateBody {
        let loosened = |l| self.loosened.contains(&l);
        let memory = self.limits.memory.bytes() as i64;
        let tmp = format!("rw,nosuid,nodev,size={},mode=1777", self.limits.tmp.bytes());
        let mounts = self.volume.as_ref().map(|name| {
            let mut mounts = vec![volume_mount(KILN_DIR, name, self.volume_read_only)];
            mounts.extend(
                self.out_volume
                    .iter()
                    .map(|out| volume_mount(OUT_DIR, out, false)),
            );
            mounts
        });
        let host = HostConfig {
            network_mode: Some(match &self.network {
                Some(name) => name.clone(),
                None if loosened(Loosening::Network) => "bridge".into(),
                None => "none".into(),
            }),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec![
                "no-new-privileges:true".into(),
                format!("seccomp={}", self.seccomp_profile()),
            ]),
            readonly_rootfs: Some(!loosened(Loosening::WritableRootfs)),
            tmpfs: Some(HashMap::from([("/tmp".to_string(), tmp)])),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((self.limits.cpus * 1e9) as i64),
            pids_limit: Some(i64::from(self.limits.pids)),
            init: Some(true),
            ipc_mode: Some("private".into()),
            shm_size: Some(self.limits.tmp.bytes().min(64 << 20) as i64),
            ulimits: Some(vec![
                ResourcesUlimits {
                    name: Some("core".into()),
                    soft: Some(0),
                    hard: Some(0),
                },
                ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(4096),
                    hard: Some(4096),
                },
            ]),
            oom_score_adj: Some(500),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            mounts,
            runtime: self.runtime.as_ref().map(|r| r.name.clone()),
            privileged: Some(false),
            publish_all_ports: Some(false),
            auto_remove: Some(false),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(self.command.clone()),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: Some(
                if loosened(Loosening::RootUser) {
                    "0:0"
                } else {
                    SANDBOX_USER
                }
                .into(),
            ),
            working_dir: self.volume.as_ref().map(|_| WORKSPACE_DIR.into()),
            hostname: Some("kiln".into()),
            labels: Some(self.labels.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            open_stdin: Some(false),
            tty: Some(false),
            network_disabled: Some(self.network.is_none() && !loosened(Loosening::Network)),
            host_config: Some(host),
            ..Default::default()
        }
    }
}

/// The volume `name` mounted at `target`. Docker would copy what the image holds at `target`
/// into an empty volume as the container is created (the working directory it makes there
/// among it): `NoCopy`, so a volume holds only what kiln put in it, and a container created
/// while its volume fills races nothing.
pub(super) fn volume_mount(target: &str, name: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(name.into()),
        typ: Some(MountType::VOLUME),
        read_only: Some(read_only),
        volume_options: Some(MountVolumeOptions {
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(loosened: Vec<Loosening>) -> ContainerSpec {
        ContainerSpec {
            image: "kiln/busybox".into(),
            command: vec!["true".into()],
            env: vec![("KILN_JOB_ID".into(), "x".into())],
            limits: Limits::default(),
            loosened,
            volume: Some("v".into()),
            volume_read_only: false,
            out_volume: None,
            network: None,
            runtime: None,
            labels: HashMap::new(),
        }
    }

    #[test]
    fn a_gvisor_runtime_is_named_and_gets_its_profile() {
        let gvisor = ContainerSpec {
            runtime: Some(Runtime {
                name: "runsc".into(),
                gvisor: true,
            }),
            ..spec(Vec::new())
        };
        let host = gvisor.to_create_body().host_config.unwrap();
        assert_eq!(host.runtime.as_deref(), Some("runsc"));
        let security = host.security_opt.unwrap();
        assert!(security.contains(&format!(
            "seccomp={}",
            crate::sandbox::seccomp::gvisor_profile()
        )));
        let default = spec(Vec::new()).to_create_body().host_config.unwrap();
        assert_eq!(default.runtime, None);
        assert!(
            default
                .security_opt
                .unwrap()
                .contains(&format!("seccomp={}", crate::sandbox::seccomp::PROFILE))
        );
    }

    #[test]
    fn defaults_are_locked_down() {
        let body = spec(vec![]).to_create_body();
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.memory, host.memory_swap);
        assert_eq!(host.init, Some(true));
        assert_eq!(body.user.as_deref(), Some(SANDBOX_USER));
        assert_eq!(body.env, Some(vec!["KILN_JOB_ID=x".to_string()]));
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        let options = mounts[0].volume_options.as_ref().unwrap();
        assert_eq!(
            options.no_copy,
            Some(true),
            "the image's /kiln is not copied in"
        );
    }

    #[test]
    fn each_loosening_changes_only_its_default() {
        let body = spec(vec![Loosening::Network]).to_create_body();
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(body.user.as_deref(), Some(SANDBOX_USER));
    }
}
