//! Moving bytes: both ways through a tunnel, within the job's byte cap, until both sides are
//! done, nothing moves for too long, or the stage ends.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{HALF_CLOSED_GRACE, IDLE_TIMEOUT, Request, Shared, stopped};

/// Copies both ways until both sides are done, the job's byte cap is reached, or nothing moves
/// for [`IDLE_TIMEOUT`]. Once the destination is done, the sandbox gets [`HALF_CLOSED_GRACE`]
/// to finish too, so a client cannot hold a finished exchange open.
pub(super) async fn tunnel(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    shared: &Shared,
    record: &mut Request,
    stopping: watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut client_read, mut client_write) = client.split();
    let (mut up_read, mut up_write) = upstream.split();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let cap = shared.rules.max_bytes;
    let upward = pump(
        &mut client_read,
        &mut up_write,
        &up,
        &shared.up,
        cap,
        stopping.clone(),
    );
    let downward = pump(
        &mut up_read,
        &mut client_write,
        &down,
        &shared.down,
        cap,
        stopping,
    );
    tokio::pin!(upward, downward);
    let ended = tokio::select! {
        why = &mut upward => why.or(downward.await),
        why = &mut downward => match tokio::time::timeout(HALF_CLOSED_GRACE, upward).await {
            Ok(up_why) => why.or(up_why),
            Err(_) => why,
        },
    };
    record.bytes_up += up.load(Ordering::Relaxed);
    record.bytes_down += down.load(Ordering::Relaxed);
    match ended {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Copies `from` to `to`, counting into `copied`, while the job's `total` stays within `cap`
/// and the proxy runs; returns why it stopped early, if it did.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    copied: &AtomicU64,
    total: &AtomicU64,
    cap: u64,
    mut stopping: watch::Receiver<bool>,
) -> Option<String> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let read = tokio::select! {
            () = stopped(&mut stopping) => {
                let _ = to.shutdown().await;
                return Some("the stage ended".into());
            }
            read = tokio::time::timeout(IDLE_TIMEOUT, from.read(&mut buf)) => read,
        };
        let n = match read {
            Err(_) => return Some(format!("idle for {} s", IDLE_TIMEOUT.as_secs())),
            Ok(Err(_)) | Ok(Ok(0)) => {
                let _ = to.shutdown().await;
                return None;
            }
            Ok(Ok(n)) => n,
        };
        if total.fetch_add(n as u64, Ordering::Relaxed) + n as u64 > cap {
            let _ = to.shutdown().await;
            return Some(format!("the job's {cap}-byte cap was reached"));
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return None;
        }
        copied.fetch_add(n as u64, Ordering::Relaxed);
    }
}
