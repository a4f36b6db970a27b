//! `kiln bench egress`: small requests to a loopback server through the egress proxy against the
//! same requests direct, interleaved: plain HTTP through an allowing proxy, and HTTPS to a host a
//! secret is bound to, whose TLS the proxy opens to put the key in (the server checks it got the
//! real key, not the placeholder).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Figures;
use crate::config::EgressConfig;
use crate::egress::{Intercept, JobCa, Proxy, Rules};
use crate::error::Error;
use crate::secrets::Binding;

/// The key the HTTPS server expects, and the placeholder the client sends through the proxy.
const KEY: &str = "sk-bench-0123456789abcdef";
const PLACEHOLDER: &str = "kiln-placeholder-bench-key";

/// One pair of series, direct and through the proxy, with their summed time.
pub struct Pair {
    pub direct: Figures,
    pub proxied: Figures,
    pub direct_total: Duration,
    pub proxied_total: Duration,
}

impl Pair {
    fn new(direct: &'static str, proxied: &'static str) -> Pair {
        let series = |name| Figures {
            name,
            samples: Vec::new(),
        };
        Pair {
            direct: series(direct),
            proxied: series(proxied),
            direct_total: Duration::ZERO,
            proxied_total: Duration::ZERO,
        }
    }

    fn add(&mut self, direct: Duration, proxied: Duration) {
        self.direct.samples.push(direct);
        self.direct_total += direct;
        self.proxied.samples.push(proxied);
        self.proxied_total += proxied;
    }
}

pub struct EgressFigures {
    /// Plain HTTP, a new connection each.
    pub plain: Pair,
    /// HTTPS with a new connection and handshake each; through the proxy, kiln ends the
    /// client's TLS and opens its own to the server.
    pub opened: Pair,
}

pub async fn egress(requests: usize) -> Result<EgressFigures, Error> {
    let loopback: IpAddr = Ipv4Addr::LOCALHOST.into();
    let plain_server = serve(loopback, None).await?;
    let (tls_server, server_ca) = {
        let (config, ca_pem) = server_tls()?;
        (serve(loopback, Some(config)).await?, ca_pem)
    };
    let operator = EgressConfig {
        allow_addresses: vec![loopback],
        hosts: std::collections::HashMap::from([
            ("plain.test".to_string(), loopback),
            ("model.test".to_string(), loopback),
        ]),
        ..Default::default()
    };
    let allow = [
        format!("plain.test:{}", plain_server.port()),
        format!("model.test:{}", tls_server.port()),
    ]
    .iter()
    .map(|target| crate::model::Allow::parse(target))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| Error::Usage(e.to_string()))?;
    let mut rules = Rules::new(allow, &operator);
    rules.max_connections = 2 * requests + 1;
    rules.max_bytes = u64::MAX;
    let job_ca = Arc::new(JobCa::new("bench", &["model.test".into()])?);
    rules.secrets = vec![Binding {
        name: "BENCH_KEY".into(),
        placeholder: PLACEHOLDER.into(),
        value: KEY.into(),
        hosts: vec!["model.test".into()],
        headers: vec!["authorization".into()],
    }];
    rules.intercept = Some(Arc::new(Intercept {
        ca: job_ca.clone(),
        upstream: crate::egress::upstream_client(Some(server_ca.as_bytes()))?,
    }));
    let proxy = Proxy::start((loopback, 0).into(), rules)
        .await
        .map_err(Error::io("cannot start the proxy"))?;
    let trusting = |pem: &str| crate::egress::upstream_client(Some(pem.as_bytes()));
    let direct_tls = tokio_rustls::TlsConnector::from(trusting(&server_ca)?);
    let proxied_tls = tokio_rustls::TlsConnector::from(trusting(job_ca.cert_pem())?);

    let mut figures = EgressFigures {
        plain: Pair::new("direct", "through the egress proxy"),
        opened: Pair::new("direct HTTPS", "HTTPS, TLS opened, key added"),
    };
    let plain_port = plain_server.port();
    let plain_head = b"GET /v1 HTTP/1.1\r\nHost: plain.test\r\n\r\n".to_vec();
    let proxied_head =
        format!("GET http://plain.test:{plain_port}/v1 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            .into_bytes();
    let tls_head = |key: &str| {
        format!("GET /v1 HTTP/1.1\r\nHost: model.test\r\nAuthorization: Bearer {key}\r\n\r\n")
            .into_bytes()
    };
    let connect = format!("CONNECT model.test:{} HTTP/1.1\r\n\r\n", tls_server.port()).into_bytes();
    for _ in 0..requests {
        let started = Instant::now();
        exchange(connect_to(plain_server).await?, &plain_head).await?;
        let direct = started.elapsed();
        let started = Instant::now();
        exchange(connect_to(proxy.addr()).await?, &proxied_head).await?;
        figures.plain.add(direct, started.elapsed());

        let started = Instant::now();
        let conn = connect_to(tls_server).await?;
        exchange(handshake(&direct_tls, conn).await?, &tls_head(KEY)).await?;
        let direct = started.elapsed();
        let started = Instant::now();
        let mut conn = connect_to(proxy.addr()).await?;
        conn.write_all(&connect)
            .await
            .map_err(Error::io("cannot send"))?;
        read_established(&mut conn).await?;
        exchange(handshake(&proxied_tls, conn).await?, &tls_head(PLACEHOLDER)).await?;
        figures.opened.add(direct, started.elapsed());
    }
    let (records, _) = proxy.stop().await;
    if records.iter().filter(|r| r.allowed).count() != 2 * requests {
        return Err(Error::Internal(
            "the proxy did not record every request".into(),
        ));
    }
    Ok(figures)
}

/// A server on `ip` answering every request with `ok`, over TLS with `tls`; with TLS it
/// answers `no` unless the request carries [`KEY`].
async fn serve(ip: IpAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind((ip, 0))
        .await
        .map_err(Error::io("cannot listen on loopback"))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("cannot listen on loopback"))?;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(conn) = acceptor.accept(conn).await {
                            answer(conn, true).await;
                        }
                    }
                    None => answer(conn, false).await,
                }
            });
        }
    });
    Ok(addr)
}

async fn answer(mut conn: impl AsyncRead + AsyncWrite + Unpin, check_key: bool) {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let keyed = String::from_utf8_lossy(&head).contains(&format!("Bearer {KEY}\r\n"));
    let body: &[u8] = if keyed || !check_key { b"ok" } else { b"no" };
    let mut response =
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n".to_vec();
    response.extend_from_slice(body);
    let _ = conn.write_all(&response).await;
    let _ = conn.shutdown().await;
}

/// A TLS config for `model.test` under a throwaway CA; the CA's PEM.
fn server_tls() -> Result<(Arc<rustls::ServerConfig>, String), Error> {
    let ca = JobCa::new("bench-server", &["model.test".into()])?;
    let config = ca.server_config("model.test")?;
    Ok((config, ca.cert_pem().to_string()))
}

async fn connect_to(addr: SocketAddr) -> Result<TcpStream, Error> {
    TcpStream::connect(addr)
        .await
        .map_err(Error::io("cannot connect"))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    conn: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let name = rustls::pki_types::ServerName::try_from("model.test").expect("a valid name");
    connector
        .connect(name, conn)
        .await
        .map_err(Error::io("TLS handshake failed"))
}

/// Reads the proxy's answer to CONNECT, up to the end of its head.
async fn read_established(conn: &mut TcpStream) -> Result<(), Error> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn
            .read(&mut byte)
            .await
            .map_err(Error::io("cannot read the proxy's answer"))?;
        if n == 0 {
            return Err(Error::Internal("the proxy closed the tunnel".into()));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(Error::Internal(format!(
            "the proxy refused: {}",
            String::from_utf8_lossy(&head)
        )));
    }
    Ok(())
}

/// Sends `head` on `conn` and reads the answer to the end; it must be `ok`.
async fn exchange(mut conn: impl AsyncRead + AsyncWrite + Unpin, head: &[u8]) -> Result<(), Error> {
    conn.write_all(head)
        .await
        .map_err(Error::io("cannot send"))?;
    let mut answer = Vec::new();
    // A TLS peer that closes without close_notify is an error to rustls; the answer is whole.
    let _ = conn.read_to_end(&mut answer).await;
    if !answer.ends_with(b"ok") {
        return Err(Error::Internal(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(())
}
