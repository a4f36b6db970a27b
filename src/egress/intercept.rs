//! A tunnel to a host a secret is bound to, opened up: kiln ends the sandbox's TLS with a
//! certificate from the job's CA, opens its own TLS to the real host (checked against the
//! Mozilla roots and the operator's `upstream_ca`), and forwards HTTP/1.1 requests one by one,
//! replacing each bound secret's placeholder in request headers with the real value. Nothing
//! else in a request is changed, and nothing in a response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};

use super::budget::{Asked, Metered, SpendMeter, Teed, refusal};
use super::ca::JobCa;
use super::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, Request, Shared, stopped};
use crate::model::spend::Usage;
use crate::secrets::Binding;

/// Most exchanges recorded per tunnel.
const MAX_EXCHANGES: usize = 1000;

/// What kiln needs to open tunnels: the job's CA, and how it checks the real hosts.
pub struct Intercept {
    pub ca: Arc<JobCa>,
    pub upstream: Arc<rustls::ClientConfig>,
}

/// One request inside an opened tunnel.
#[derive(Clone, Debug, Serialize)]
pub struct Exchange {
    pub method: String,
    /// The path (at most 200 characters, without the query string).
    pub path: String,
    /// The response status; none when the host gave no answer.
    pub status: Option<u16>,
    /// Names of the secrets whose placeholder was replaced in this request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// To a model host: the tokens the response used, and what they cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The usage could not be read from the response and was estimated (`egress::usage`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// Not sent: the job's model budget was spent (it was answered 429).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_refused: Option<String>,
}

/// Serves one CONNECT to `host`, whose TCP connection `upstream` kiln has opened, with the
/// secrets in `bindings`.
pub(super) async fn serve(
    client: &mut TcpStream,
    upstream: TcpStream,
    host: &str,
    bindings: Vec<Binding>,
    shared: &Shared,
    record: &mut Request,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), String> {
    let intercept = shared
        .rules
        .intercept
        .as_ref()
        .ok_or("a secret is bound to this host but the proxy has no CA")?;
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(intercept.upstream.clone());
    let upstream =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name, upstream))
            .await
            .map_err(|_| format!("TLS with {host} took over 10 s"))?
            .map_err(|e| format!("TLS with {host} failed: {e}"))?;
    record.allowed = true;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;

    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let activity = Activity::new();
    let counted = Counted {
        inner: client,
        up: &up,
        down: &down,
        shared,
        activity: &activity,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(
        intercept
            .ca
            .server_config(host)
            .map_err(|e| e.to_string())?,
    );
    let exchanges = Arc::new(std::sync::Mutex::new(Vec::new()));
    let model = shared.rules.spend.as_ref().and_then(|meter| {
        let model = meter.model(host)?;
        Some((meter.clone(), host.to_string(), model))
    });
    let outcome = async {
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(counted))
            .await
            .map_err(|_| "the sandbox's TLS handshake took over 10 s".to_string())?
            .map_err(|e| format!("the sandbox's TLS handshake failed: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        let served = async {
            let sender = Mutex::new(sender);
            let service = hyper::service::service_fn(|request| {
                forward(request, &sender, &bindings, &exchanges, model.clone())
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
        };
        // The host may close first (`Connection: close`); its last answer still has to reach
        // the sandbox, so neither side cuts the other short. Once the sandbox is done, the
        // sender is dropped and the host's side ends too.
        let (served, ended) = tokio::join!(served, connection);
        served.map_err(|e| format!("HTTP from the sandbox: {e}"))?;
        ended.map_err(|e| format!("HTTP with {host}: {e}"))
    };
    let ended = tokio::select! {
        outcome = outcome => outcome,
        () = stopped(&mut stopping) => Err("the stage ended".into()),
        () = activity.idle_for(IDLE_TIMEOUT) => Err(format!("idle for {} s", IDLE_TIMEOUT.as_secs())),
    };
    record.bytes_up += up.load(Ordering::Relaxed);
    record.bytes_down += down.load(Ordering::Relaxed);
    record.exchanges = std::mem::take(&mut *exchanges.lock().unwrap_or_else(|e| e.into_inner()));
    if shared.up.load(Ordering::Relaxed) > shared.rules.max_bytes
        || shared.down.load(Ordering::Relaxed) > shared.rules.max_bytes
    {
        return Err(format!(
            "the job's {}-byte cap was reached",
            shared.rules.max_bytes
        ));
    }
    ended
}

type Body = BoxBody<Bytes, hyper::Error>;

/// One request from the sandbox: placeholders replaced, sent on, the answer returned as is
/// (metered, when the host is a model API the job's spend is counted for; refused 429 once
/// that spend reaches the budget).
async fn forward(
    request: hyper::Request<Incoming>,
    sender: &Mutex<hyper::client::conn::http1::SendRequest<Body>>,
    bindings: &[Binding],
    exchanges: &Arc<std::sync::Mutex<Vec<Exchange>>>,
    model: Option<(Arc<SpendMeter>, String, super::budget::ModelHost)>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let mut exchange = Exchange {
        method: request.method().to_string(),
        path: request.uri().path().chars().take(200).collect(),
        status: None,
        secrets: Vec::new(),
        usage: None,
        usd: None,
        estimated: false,
        budget_refused: None,
    };
    if let Some((meter, name, host)) = &model
        && let Err(why) = meter.begin(name)
    {
        exchange.status = Some(429);
        exchange.budget_refused = Some(why.clone());
        keep(exchanges, exchange);
        return Ok(refusal(host.kind, &why));
    }
    // A model call's request body is counted as it passes, and teed for its transcript when
    // transcripts are kept.
    let mut asked = None;
    let mut request = match &model {
        Some((meter, _, _)) => {
            let transcript = meter.keeps_transcripts();
            let (method, path) = (exchange.method.clone(), exchange.path.clone());
            request.map(|body| {
                let (teed, body) = Teed::new(body, transcript);
                asked = Some(Asked {
                    method,
                    path,
                    body,
                    transcript,
                });
                teed.boxed()
            })
        }
        None => request.map(|body| body.boxed()),
    };
    exchange.secrets = add_secrets(request.headers_mut(), bindings);
    let answer = {
        let mut sender = sender.lock().await;
        match sender.ready().await {
            Ok(()) => sender.send_request(request).await,
            Err(e) => Err(e),
        }
    };
    let response = match answer {
        Ok(response) => {
            exchange.status = Some(response.status().as_u16());
            response.map(|body| body.boxed())
        }
        Err(e) => {
            let body = Full::new(Bytes::from(format!("kiln egress: the host failed: {e}\n")))
                .map_err(|never| match never {})
                .boxed();
            let mut response = hyper::Response::new(body);
            *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            response
        }
    };
    let index = keep(exchanges, exchange);
    Ok(match (model, asked) {
        (Some((meter, name, host)), Some(asked)) => Metered::wrap(
            response,
            &name,
            asked,
            host,
            meter,
            exchanges.clone(),
            index,
        ),
        _ => response,
    })
}

/// Records `exchange` (up to the cap); its place in the record.
fn keep(exchanges: &std::sync::Mutex<Vec<Exchange>>, exchange: Exchange) -> Option<usize> {
    let mut exchanges = exchanges.lock().unwrap_or_else(|e| e.into_inner());
    (exchanges.len() < MAX_EXCHANGES).then(|| {
        exchanges.push(exchange);
        exchanges.len() - 1
    })
}

/// Replaces each binding's placeholder with its secret in the headers it is for; returns the
/// names of the secrets added.
fn add_secrets(headers: &mut hyper::HeaderMap, bindings: &[Binding]) -> Vec<String> {
    let mut added = Vec::new();
    for (name, value) in headers.iter_mut() {
        let bound: Vec<&Binding> = bindings
            .iter()
            .filter(|b| {
                b.headers
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name.as_str()))
            })
            .collect();
        if let Some((replaced, used)) = substitute(value, &bound) {
            *value = replaced;
            for secret in used {
                if !added.contains(&secret) {
                    added.push(secret);
                }
            }
        }
    }
    added
}

/// `value` with the placeholder of each of `bindings` replaced by its secret, and the secrets'
/// names; none when it holds no placeholder.
fn substitute(value: &HeaderValue, bindings: &[&Binding]) -> Option<(HeaderValue, Vec<String>)> {
    let bytes = value.as_bytes();
    let used: Vec<&Binding> = bindings
        .iter()
        .copied()
        .filter(|b| {
            bytes
                .windows(b.placeholder.len())
                .any(|w| w == b.placeholder.as_bytes())
        })
        .collect();
    if used.is_empty() {
        return None;
    }
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    for binding in &used {
        text = text.replace(&binding.placeholder, &binding.value);
    }
    let mut replaced = HeaderValue::from_str(&text).ok()?;
    replaced.set_sensitive(true);
    Some((replaced, used.iter().map(|b| b.name.clone()).collect()))
}

/// When bytes last moved through a tunnel.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: std::time::Duration) {
        loop {
            let last = std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// The sandbox's side of an opened tunnel, counting bytes each way into the record and the
/// job's totals, and failing once a total passes the job's cap.
struct Counted<'a> {
    inner: &'a mut TcpStream,
    up: &'a AtomicU64,
    down: &'a AtomicU64,
    shared: &'a Shared,
    activity: &'a Activity,
}

impl Counted<'_> {
    fn count(&self, n: usize, mine: &AtomicU64, total: &AtomicU64) -> io::Result<()> {
        self.activity.touch();
        mine.fetch_add(n as u64, Ordering::Relaxed);
        if total.fetch_add(n as u64, Ordering::Relaxed) + n as u64 > self.shared.rules.max_bytes {
            return Err(io::Error::other("the job's egress byte cap was reached"));
        }
        Ok(())
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len() - before;
            this.count(n, this.up, &this.shared.up)?;
        }
        polled
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.count(n, this.down, &this.shared.down)?;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bound_placeholders_are_replaced() {
        let binding = Binding {
            name: "API_KEY".into(),
            placeholder: "kiln-placeholder-api-key-01".into(),
            value: "sk-real-value-123".into(),
            hosts: vec!["model.test".into()],
            headers: vec!["authorization".into()],
        };
        let value = HeaderValue::from_static("Bearer kiln-placeholder-api-key-01");
        let (replaced, used) = substitute(&value, &[&binding]).unwrap();
        assert_eq!(replaced, "Bearer sk-real-value-123");
        assert!(replaced.is_sensitive());
        assert_eq!(used, vec!["API_KEY".to_string()]);
        assert!(substitute(&HeaderValue::from_static("Bearer other"), &[&binding]).is_none());

        let mut headers = hyper::HeaderMap::new();
        headers.insert("Authorization", value.clone());
        headers.insert("x-echo", value.clone());
        let added = add_secrets(&mut headers, &[binding]);
        assert_eq!(added, vec!["API_KEY".to_string()]);
        assert_eq!(headers["authorization"], "Bearer sk-real-value-123");
        assert_eq!(
            headers["x-echo"], value,
            "a header the secret is not for keeps the placeholder"
        );
    }
}
