//! The pool of empty workspace volumes made ahead, several to a holder container, handed out
//! by size: a volume asked for is a spare when one is there, or one of a new batch.

use std::collections::HashMap;
use std::sync::Mutex;

use tracing::Instrument;

use super::volume::{VolumeRequest, WorkVolume};
use super::{Sandbox, SandboxError};
use crate::model::ByteSize;

/// Empty workspace volumes made ahead, `per_holder` to a holder, handed out by size.
pub(super) struct VolumePool {
    per_holder: usize,
    spares: Mutex<HashMap<u64, Vec<WorkVolume>>>,
    /// Held while a batch is made: a volume asked for while one is being made ahead waits for
    /// it rather than making a second.
    making: tokio::sync::Mutex<()>,
}

impl VolumePool {
    pub(super) fn new(per_holder: usize) -> Self {
        VolumePool {
            per_holder: per_holder.max(1),
            spares: Mutex::new(HashMap::new()),
            making: tokio::sync::Mutex::new(()),
        }
    }

    /// An empty volume of `size`: a spare, or one of a new batch whose rest become spares.
    pub(super) async fn take(
        &self,
        sandbox: &Sandbox,
        size: ByteSize,
    ) -> Result<WorkVolume, SandboxError> {
        loop {
            if let Some(volume) = self.spare(size) {
                return Ok(volume);
            }
            // Made here, it is part of the stage's time (made ahead, it is no one's).
            Self::stock(sandbox, size)
                .instrument(tracing::info_span!("volumes.create"))
                .await?;
        }
    }

    /// Makes a batch of `size` ahead, unless a spare of that size is there already.
    pub(super) async fn prepare(sandbox: &Sandbox, size: ByteSize) -> Result<(), SandboxError> {
        Self::stock(sandbox, size).await
    }

    /// Makes a batch of `size` into `sandbox`'s pool unless a spare of that size is there, to
    /// its end even when the caller stops waiting ([`Sweeper::finish`]).
    async fn stock(sandbox: &Sandbox, size: ByteSize) -> Result<(), SandboxError> {
        let owned = sandbox.clone();
        let stock = async move {
            let pool = &owned.volumes;
            // Held while a batch is made: a volume asked for meanwhile waits for this batch.
            let _making = pool.making.lock().await;
            if pool
                .lock()
                .get(&size.bytes())
                .is_some_and(|v| !v.is_empty())
            {
                return Ok(());
            }
            let request = VolumeRequest {
                role: "workspace".into(),
                size,
                writable: false,
            };
            let requests = vec![request; pool.per_holder];
            let batch = WorkVolume::make_batch(&owned, SHARED, &requests).await?;
            pool.lock().entry(size.bytes()).or_default().extend(batch);
            Ok(())
        };
        sandbox
            .sweeper
            .finish("create workspace volumes", stock)
            .await
    }

    fn spare(&self, size: ByteSize) -> Option<WorkVolume> {
        self.lock().get_mut(&size.bytes()).and_then(Vec::pop)
    }

    /// Every spare, to be removed.
    pub(super) fn drain(&self) -> Vec<WorkVolume> {
        self.lock().drain().flat_map(|(_, v)| v).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<WorkVolume>>> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `kiln.job` label of pooled volumes and their holders, which belong to no one job:
/// `kiln gc` removes them once their kiln process is gone; a job's own reap leaves them.
pub(super) const SHARED: &str = "shared";
