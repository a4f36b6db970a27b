//! Resource limits every container of a job runs under, each field set.

use serde::{Deserialize, Serialize};

use super::{ByteSize, Invalid};

/// Resource limits applied to every container of a job.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory limit; swap is off, so this is all the container gets. Default 512MiB.
    pub memory: ByteSize,
    /// CPU quota in cores. Default 1.0.
    pub cpus: f64,
    /// Most processes and threads at once. Default 256.
    pub pids: u32,
    /// Size of the workspace filesystem (the repository plus everything written to it). Default 256MiB.
    pub workspace: ByteSize,
    /// Size of the /tmp filesystem. Default 64MiB.
    pub tmp: ByteSize,
    /// Bytes of stdout+stderr kept per container; the rest is dropped and flagged. Default 1MiB.
    pub output: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::mib(512),
            cpus: 1.0,
            pids: 256,
            workspace: ByteSize::mib(256),
            tmp: ByteSize::mib(64),
            output: ByteSize::mib(1),
        }
    }
}

impl Limits {
    pub fn check(&self) -> Result<(), Invalid> {
        let checks = [
            (
                self.memory >= ByteSize::mib(8),
                "memory must be at least 8MiB",
            ),
            (
                self.cpus > 0.0 && self.cpus <= 64.0,
                "cpus must be more than 0 and at most 64",
            ),
            (self.pids >= 8, "pids must be at least 8"),
            (
                self.workspace >= ByteSize::mib(1),
                "workspace must be at least 1MiB",
            ),
            (
                self.workspace <= ByteSize::mib(16 << 10),
                "workspace must be at most 16GiB",
            ),
            (self.tmp >= ByteSize::mib(1), "tmp must be at least 1MiB"),
            (
                self.output >= ByteSize(1024),
                "output must be at least 1KiB",
            ),
            (
                self.output <= ByteSize::mib(256),
                "output must be at most 256MiB",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(Invalid((*message).into())),
            None => Ok(()),
        }
    }
}
