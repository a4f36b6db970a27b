//! The egress proxy: the one way out of a sandbox that is allowed any network. It serves
//! `CONNECT host:port` (tunnels) and plain `http://` requests for the `host:port` pairs on the
//! job's allowlist only, resolves names on the host, refuses IP literals and any address that is
//! not public unless the operator lists it, caps connections and bytes, and records every
//! request, allowed or refused, with the bytes each way. A tunnel to a host a secret is bound to
//! is opened so the secret can be added (intercept.rs); every other tunnel stays opaque.

mod ca;
mod head;
mod intercept;
mod network;
pub mod policy;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::EgressConfig;
use crate::model::{Allow, Host};
use head::{forwarded_head, parse_head, read_head};

pub use ca::{JobCa, upstream_client};
pub use intercept::{Exchange, Intercept};
pub use network::StageNetwork;
pub use policy::non_public;

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
            redactor: crate::secrets::Redactor::default(),
        }
    }
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Intercept")
    }
}

/// One request through the proxy.
#[derive(Clone, Debug, Serialize)]
pub struct Request {
    /// Milliseconds since the Unix epoch when it arrived.
    pub at_ms: u64,
    /// `CONNECT`, or the HTTP method of a plain request.
    pub method: String,
    /// `host:port` as asked (at most 300 characters).
    pub target: String,
    /// Where kiln connected, when it did.
    pub address: Option<String>,
    pub allowed: bool,
    /// Why it was refused, or how an allowed one ended early.
    pub reason: Option<String>,
    /// Bytes from the sandbox to the destination, and back.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// For a tunnel kiln opened (its host has a bound secret): each request inside it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<Exchange>,
}

/// What a stage's report says of its egress; every request is in `attempt-N/<stage>.egress.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub refused: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Requests past the record cap, counted only.
    pub unrecorded: usize,
    /// The first refused targets, each once.
    pub refused_targets: Vec<String>,
}

impl Summary {
    pub fn of(requests: &[Request], unrecorded: usize) -> Summary {
        let mut refused_targets: Vec<String> = Vec::new();
        for r in requests.iter().filter(|r| !r.allowed) {
            if refused_targets.len() < 20 && !refused_targets.contains(&r.target) {
                refused_targets.push(r.target.clone());
            }
        }
        Summary {
            requests: requests.len() + unrecorded,
            refused: requests.iter().filter(|r| !r.allowed).count(),
            bytes_up: requests.iter().map(|r| r.bytes_up).sum(),
            bytes_down: requests.iter().map(|r| r.bytes_down).sum(),
            unrecorded,
            refused_targets,
        }
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
            && !in_network(peer.ip(), net, prefix)
        {
            tracing::warn!(%peer, "egress proxy: a connection from outside the sandbox's network, dropped");
            continue;
        }
        let (shared, stopping) = (shared.clone(), stopping.clone());
        tasks.spawn(async move { serve(stream, &shared, stopping).await });
    }
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// One client connection: one request, then a tunnel or one forwarded exchange.
async fn serve(mut client: TcpStream, shared: &Shared, stopping: watch::Receiver<bool>) {
    let started = Instant::now();
    let mut record = Request {
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        method: String::new(),
        target: String::new(),
        address: None,
        allowed: false,
        reason: None,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
        exchanges: Vec::new(),
    };
    let outcome = handle(&mut client, shared, &mut record, stopping).await;
    if let Err(why) = outcome {
        if !record.allowed {
            let body = format!("kiln egress: refused: {why}\n");
            let answer = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, client.write_all(answer.as_bytes())).await;
        }
        record.reason = Some(why);
    }
    hide_secrets(&mut record, &shared.rules.redactor);
    record.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        method = record.method,
        target = record.target,
        allowed = record.allowed,
        reason = record.reason.as_deref().unwrap_or(""),
        up = record.bytes_up,
        down = record.bytes_down,
        "egress"
    );
    let mut records = shared.records.lock().unwrap_or_else(|e| e.into_inner());
    if records.len() < MAX_RECORDS {
        records.push(record);
    } else {
        shared.unrecorded.fetch_add(1, Ordering::Relaxed);
    }
}

/// `record` with every secret in the sandbox's text (target, reason, paths) hidden.
fn hide_secrets(record: &mut Request, redactor: &crate::secrets::Redactor) {
    if redactor.is_empty() {
        return;
    }
    let hide = |text: &mut String| *text = redactor.text(text).into_owned();
    hide(&mut record.target);
    record.reason.iter_mut().for_each(hide);
    record.exchanges.iter_mut().for_each(|e| hide(&mut e.path));
}

/// Decides and carries out one request; `Err` says why it was refused (or cut short, when
/// `record.allowed`).
async fn handle(
    client: &mut TcpStream,
    shared: &Shared,
    record: &mut Request,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), String> {
    let (head, body) = tokio::select! {
        () = stopped(&mut stopping) => return Err("the stage ended".into()),
        read = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(client)) => {
            read.map_err(|_| "no request within 10 s".to_string())??
        }
    };
    let request = parse_head(&head)?;
    record.method = request.method.clone();
    record.target = request.authority.chars().take(300).collect();
    if shared.connections.fetch_add(1, Ordering::Relaxed) >= shared.rules.max_connections {
        return Err(format!(
            "the job's {} connections are used up",
            shared.rules.max_connections
        ));
    }
    let allow = Allow::parse(&request.authority)?;
    let address = resolve(&allow, &shared.rules).await?;
    record.address = Some(address.to_string());
    let mut upstream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| format!("{address} did not answer within 10 s"))?
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    if let Host::Name(name) = &allow.host {
        let bound: Vec<_> = shared
            .rules
            .secrets
            .iter()
            .filter(|b| b.hosts.contains(name))
            .cloned()
            .collect();
        if !bound.is_empty() {
            if request.method != "CONNECT" {
                return Err(format!(
                    "{name} has a secret bound to it, which kiln adds only inside TLS; use https://"
                ));
            }
            return intercept::serve(client, upstream, name, bound, shared, record, stopping).await;
        }
    }
    record.allowed = true;
    if request.method == "CONNECT" {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
    } else {
        let head = forwarded_head(&head, &request)?;
        upstream.write_all(&head).await.map_err(|e| e.to_string())?;
        record.bytes_up += head.len() as u64;
    }
    if !body.is_empty() {
        upstream.write_all(&body).await.map_err(|e| e.to_string())?;
        record.bytes_up += body.len() as u64;
        shared.up.fetch_add(body.len() as u64, Ordering::Relaxed);
    }
    tunnel(client, &mut upstream, shared, record, stopping).await
}

/// Where `allow` may be reached, if anywhere: on the job's list, and an address that is public
/// or that the operator lists.
async fn resolve(allow: &Allow, rules: &Rules) -> Result<SocketAddr, String> {
    if !rules.allow.contains(allow) {
        return Err(format!("{allow} is not on the job's allowlist"));
    }
    let listed = |ip: &IpAddr| rules.operator.allow_addresses.contains(ip);
    let candidates: Vec<IpAddr> = match &allow.host {
        Host::Ip(ip) if listed(ip) => return Ok(SocketAddr::new(*ip, allow.port)),
        Host::Ip(_) => {
            return Err(format!(
                "{allow} is an IP literal; only the operator can list one ([egress] allow_addresses)"
            ));
        }
        Host::Name(name) => match rules.operator.hosts.get(name) {
            Some(ip) => vec![*ip],
            None => tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio::net::lookup_host((name.as_str(), allow.port)),
            )
            .await
            .map_err(|_| format!("resolving {name} took over 10 s"))?
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .map(|a| a.ip())
            .collect(),
        },
    };
    let mut refused = Vec::new();
    for ip in candidates {
        match non_public(ip) {
            Some(why) if !listed(&ip) => refused.push(format!("{ip} ({why})")),
            _ => return Ok(SocketAddr::new(ip, allow.port)),
        }
    }
    if refused.is_empty() {
        Err(format!("{} has no address", allow.host))
    } else {
        Err(format!(
            "{} resolves only to addresses no job may reach: {}",
            allow.host,
            refused.join(", ")
        ))
    }
}

/// Copies both ways until both sides are done, the job's byte cap is reached, or nothing moves
/// for [`IDLE_TIMEOUT`]. Once the destination is done, the sandbox gets [`HALF_CLOSED_GRACE`]
/// to finish too, so a client cannot hold a finished exchange open.
async fn tunnel(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_hide_secrets_the_sandbox_wrote() {
        let redactor = crate::secrets::Redactor::new(&[("K".into(), "sk-reflected-12345".into())]);
        let mut record = Request {
            at_ms: 0,
            method: "CONNECT".into(),
            target: "sk-reflected-12345.evil.test:443".into(),
            address: None,
            allowed: false,
            reason: Some("sk-reflected-12345.evil.test:443 is not on the job's allowlist".into()),
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            exchanges: Vec::new(),
        };
        hide_secrets(&mut record, &redactor);
        assert_eq!(record.target, "[REDACTED:K].evil.test:443");
        assert!(record.reason.unwrap().starts_with("[REDACTED:K].evil"));
    }

    #[test]
    fn networks_match_by_prefix() {
        let net: IpAddr = "172.18.0.0".parse().unwrap();
        assert!(in_network("172.18.3.4".parse().unwrap(), net, 16));
        assert!(!in_network("172.19.0.1".parse().unwrap(), net, 16));
        assert!(!in_network("::1".parse().unwrap(), net, 16));
        assert!(in_network("10.0.0.1".parse().unwrap(), net, 0));
    }
}
