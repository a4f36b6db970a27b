//! The egress proxy: the one way out of a sandbox that is allowed any network. It serves
//! `CONNECT host:port` (tunnels) and plain `http://` requests for the `host:port` pairs on the
//! job's allowlist only, resolves names on the host, refuses IP literals and any address that is
//! not public unless the operator lists it, caps connections and bytes, and records every
//! request, allowed or refused, with the bytes each way. A tunnel to a host a secret is bound to
//! is opened so the secret can be added (intercept.rs); every other tunnel stays opaque.

mod budget;
mod ca;
mod connection;
mod head;
mod intercept;
mod network;
pub mod policy;
mod pump;
mod record;
mod resolve;
pub mod usage;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::EgressConfig;
use crate::model::Allow;

pub use budget::{ModelHost, SpendMeter};
pub use ca::{CaError, JobCa, upstream_client};
pub use intercept::{Exchange, Intercept};
pub use network::StageNetwork;
pub use policy::non_public;
pub use record::{Request, Summary};

/// Most bytes of a request's head (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head, and kiln to connect onwards.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a tunnel may sit with nothing moving either way.
/// Long enough for a model API that answers a large request in one piece after minutes of
/// silence; the stage's end cuts every tunnel anyway.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the sandbox's side may stay open once the destination's side is done.
const HALF_CLOSED_GRACE: Duration = Duration::from_secs(5);
/// Most requests recorded; past it they are counted only.
const MAX_RECORDS: usize = 10_000;
/// Connections open at once; more are closed unanswered, so a stage cannot exhaust kiln's
/// file descriptors with connections that never send a request.
pub const MAX_OPEN: usize = 64;
/// How long stopping waits for connections to record themselves before cutting them off.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a proxy lets through, and its caps.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The job's `host:port` pairs.
    pub allow: Vec<Allow>,
    /// The operator's `[egress]`: addresses that may be reached although not public, static names.
    pub operator: EgressConfig,
    /// Connections accepted in all (allowed or refused) before the rest are refused.
    pub max_connections: usize,
    /// Bytes each way, over all connections, before tunnels are cut.
    pub max_bytes: u64,
    /// Only connections from this network (address, prefix length) are served: the sandbox's.
    pub clients: Option<(IpAddr, u8)>,
    /// Secrets the proxy adds to requests to their hosts; tunnels to those hosts are opened
    /// with `intercept`.
    pub secrets: Vec<crate::secrets::Binding>,
    pub intercept: Option<Arc<Intercept>>,
    /// The job's model spend and budget: responses from its model hosts are metered, and
    /// requests past the budget refused (only in opened tunnels: a model host is metered when
    /// a secret is bound to it).
    pub spend: Option<Arc<SpendMeter>>,
    /// Hides secrets in what the proxy records and logs (a target or path is the sandbox's
    /// text, and may carry a key a bound host reflected).
    pub redactor: crate::secrets::Redactor,
}

impl Rules {
    /// Rules for `allow` with the operator's caps, serving any client, with no secrets.
    pub fn new(allow: Vec<Allow>, operator: &EgressConfig) -> Rules {
        Rules {
            allow,
            operator: operator.clone(),
            max_connections: operator.max_connections,
            max_bytes: operator.max_bytes.bytes(),
            clients: None,
            secrets: Vec::new(),
            intercept: None,
            spend: None,
            redactor: crate::secrets::Redactor::default(),
        }
    }
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Intercept")
    }
}

/// A running proxy; [`Proxy::stop`] ends it and every tunnel.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

struct Shared {
    rules: Rules,
    records: Mutex<Vec<Request>>,
    unrecorded: AtomicUsize,
    connections: AtomicUsize,
    up: AtomicU64,
    down: AtomicU64,
}

impl Proxy {
    /// Listens on `bind` (port 0: any) and serves until stopped.
    pub async fn start(bind: SocketAddr, rules: Rules) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rules,
            records: Mutex::new(Vec::new()),
            unrecorded: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        });
        let (stop, stopping) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stopping));
        Ok(Proxy {
            addr,
            shared,
            accept,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests so far, and how many more were not recorded.
    pub fn requests(&self) -> (Vec<Request>, usize) {
        let records = self
            .shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (records, self.shared.unrecorded.load(Ordering::Relaxed))
    }

    /// Stops listening and cuts every tunnel, each recorded with what it carried; returns
    /// [`Proxy::requests`].
    pub async fn stop(mut self) -> (Vec<Request>, usize) {
        let _ = self.stop.send(true);
        let _ = (&mut self.accept).await;
        self.requests()
    }
}

/// A proxy dropped without [`Proxy::stop`] (its job's task was cancelled) stops listening and
/// cuts its tunnels at once, unrecorded: nothing is left running for a job that is gone.
impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Resolves once the proxy is told to stop.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Accepts until told to stop, then gives connections [`STOP_GRACE`] to end and record
/// themselves; what is left is cut off.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stopping) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!("egress proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= MAX_OPEN {
            tracing::warn!(%peer, "egress proxy: {MAX_OPEN} connections open; one more dropped");
            continue;
        }
        if let Some((net, prefix)) = shared.rules.clients
            && !resolve::in_network(peer.ip(), net, prefix)
        {
            tracing::warn!(%peer, "egress proxy: a connection from outside the sandbox's network, dropped");
            continue;
        }
        let (shared, stopping) = (shared.clone(), stopping.clone());
        tasks.spawn(async move { connection::serve(stream, &shared, stopping).await });
    }
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}
