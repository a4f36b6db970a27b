//! The egress proxy on loopback: a stand-in model API reachable by a test name, requests on and
//! off the allowlist, IP literals, metadata and loopback addresses, and the caps. Every request
//! is recorded with the bytes each way. (Talks to loopback only.)

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use kiln::config::EgressConfig;
use kiln::egress::{Proxy, Request, Rules};
use kiln::model::Allow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOOPBACK: &str = "127.0.0.1";

/// A stand-in server on loopback: answers a plain HTTP request with the head it received, and
/// echoes anything else back until the client closes.
async fn stand_in() -> SocketAddr {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let got = &buf[..n];
                    if got.starts_with(b"GET ") {
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            n
                        );
                        let _ = conn.write_all(answer.as_bytes()).await;
                        let _ = conn.write_all(got).await;
                        return;
                    }
                    if conn.write_all(got).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn rules(server: SocketAddr, listed: &[&str]) -> Rules {
    let port = server.port();
    let allow = [
        format!("model.test:{port}"),
        format!("{LOOPBACK}:{port}"),
        "169.254.169.254:80".to_string(),
    ]
    .iter()
    .map(|a| Allow::parse(a).unwrap())
    .collect();
    Rules {
        allow,
        operator: EgressConfig {
            allow_addresses: listed.iter().map(|a| a.parse().unwrap()).collect(),
            hosts: HashMap::from([("model.test".to_string(), LOOPBACK.parse().unwrap())]),
            ..EgressConfig::default()
        },
        max_connections: 100,
        max_bytes: 1 << 20,
        clients: None,
        secrets: Vec::new(),
        intercept: None,
        spend: None,
        redactor: Default::default(),
    }
}

/// A proxy on loopback with `rules`.
async fn start(rules: Rules) -> Proxy {
    Proxy::start((LOOPBACK.parse::<IpAddr>().unwrap(), 0).into(), rules)
        .await
        .unwrap()
}

/// A tunnel through `proxy` to `model.test:port`, its answer read.
async fn tunnel(proxy: &Proxy, port: u16) -> TcpStream {
    let (mut conn, answer) = ask(
        proxy,
        &format!("CONNECT model.test:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(answer, "HTTP/1.1 200 Connection established");
    let mut blank = [0u8; 2];
    conn.read_exact(&mut blank).await.unwrap();
    conn
}

/// Sends `head` to the proxy; returns the connection and the proxy's first answer line.
async fn ask(proxy: &Proxy, head: &str) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match conn.read(&mut byte).await {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    (conn, String::from_utf8_lossy(&line).trim().to_string())
}

async fn read_all(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn last(proxy: &Proxy) -> Request {
    proxy
        .requests()
        .0
        .last()
        .cloned()
        .expect("a recorded request")
}

#[tokio::test]
async fn only_listed_names_at_public_or_operator_listed_addresses_get_through() {
    let server = stand_in().await;
    let port = server.port();
    let proxy = start(rules(server, &[LOOPBACK])).await;

    // A tunnel to the listed name, which the operator maps to an address they list.
    let mut conn = tunnel(&proxy, port).await;
    conn.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    conn.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    drop(conn);

    // A plain request arrives in origin form without the proxy's headers.
    let (mut conn, answer) = ask(
        &proxy,
        &format!(
            "GET http://model.test:{port}/v1/x HTTP/1.1\r\nHost: model.test\r\nProxy-Authorization: Basic c2VjcmV0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answer, "HTTP/1.1 200 OK");
    let body = read_all(&mut conn).await;
    assert!(
        body.contains("GET /v1/x HTTP/1.1\r\nHost: model.test\r\n"),
        "{body}"
    );
    assert!(!body.contains("Proxy-Authorization"), "{body}");

    // Refused: a name not on the list, an IP literal the operator did not list, metadata.
    for (target, why) in [
        (format!("other.test:{port}"), "not on the job's allowlist"),
        (
            format!("model.test:{}", port.wrapping_add(1)),
            "not on the job's allowlist",
        ),
        ("169.254.169.254:80".to_string(), "IP literal"),
    ] {
        let (mut conn, answer) = ask(&proxy, &format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        assert_eq!(answer, "HTTP/1.1 403 Forbidden", "{target}");
        assert!(read_all(&mut conn).await.contains(why), "{target}");
        let record = last(&proxy);
        assert!(!record.allowed, "{target}");
        assert!(record.reason.unwrap().contains(why), "{target}");
    }

    let (requests, unrecorded) = proxy.stop().await;
    assert_eq!(unrecorded, 0);
    assert_eq!(requests.len(), 5);
    let tunnel = &requests[0];
    assert!(tunnel.allowed);
    assert_eq!(tunnel.method, "CONNECT");
    assert_eq!(tunnel.target, format!("model.test:{port}"));
    assert_eq!(tunnel.address.as_deref(), Some(server.to_string().as_str()));
    assert_eq!((tunnel.bytes_up, tunnel.bytes_down), (4, 4));
    let get = requests
        .iter()
        .find(|r| r.method == "GET")
        .expect("the GET");
    assert!(
        get.allowed && get.bytes_up > 0 && get.bytes_down > 0,
        "{get:?}"
    );
}

#[tokio::test]
async fn loopback_and_literals_stay_closed_unless_the_operator_lists_them() {
    let server = stand_in().await;
    let port = server.port();
    let proxy = start(rules(server, &[])).await;
    // The name is listed, but it leads to loopback, which the operator did not open.
    let (mut conn, answer) = ask(
        &proxy,
        &format!("CONNECT model.test:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(answer, "HTTP/1.1 403 Forbidden");
    assert!(read_all(&mut conn).await.contains("127.0.0.1 (loopback)"));
    // The literal is on the job's list, but only the operator may open a literal.
    let (_, answer) = ask(
        &proxy,
        &format!("CONNECT {LOOPBACK}:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(answer, "HTTP/1.1 403 Forbidden");
    let (requests, _) = proxy.stop().await;
    assert!(requests.iter().all(|r| !r.allowed && r.address.is_none()));

    // Listed by the operator, the same literal gets through.
    let proxy = start(rules(server, &[LOOPBACK])).await;
    let (_, answer) = ask(
        &proxy,
        &format!("CONNECT {LOOPBACK}:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(answer, "HTTP/1.1 200 Connection established");
}

#[tokio::test]
async fn connections_bytes_and_clients_are_capped() {
    let server = stand_in().await;
    let port = server.port();
    let mut capped = rules(server, &[LOOPBACK]);
    capped.max_connections = 2;
    capped.max_bytes = 1000;
    let proxy = start(capped).await;
    let connect = format!("CONNECT model.test:{port} HTTP/1.1\r\n\r\n");
    // Past the byte cap the tunnel is cut.
    let (mut conn, answer) = ask(&proxy, &connect).await;
    assert_eq!(answer, "HTTP/1.1 200 Connection established");
    let _ = conn.write_all(&[b'x'; 5000]).await;
    let echoed = read_all(&mut conn).await;
    assert!(echoed.len() < 1100, "{} bytes came back", echoed.len());
    let (_, _) = ask(&proxy, &connect).await;
    // The third connection is over the cap.
    let (mut conn, answer) = ask(&proxy, &connect).await;
    assert_eq!(answer, "HTTP/1.1 403 Forbidden");
    assert!(
        read_all(&mut conn)
            .await
            .contains("connections are used up")
    );
    let (requests, _) = proxy.stop().await;
    assert!(
        requests.iter().any(|r| r.allowed
            && r.reason
                .as_deref()
                .unwrap_or("")
                .contains("cap was reached")),
        "{requests:?}"
    );

    // Connections that never send a request hold at most MAX_OPEN slots; more are closed at once.
    let proxy = start(rules(server, &[LOOPBACK])).await;
    let mut idle = Vec::new();
    for _ in 0..kiln::egress::MAX_OPEN {
        idle.push(TcpStream::connect(proxy.addr()).await.unwrap());
    }
    // Once the proxy has taken all of them, one more is closed at once: ask until it is.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut extra = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut byte = [0u8; 1];
        let closed =
            tokio::time::timeout(std::time::Duration::from_millis(300), extra.read(&mut byte))
                .await;
        if matches!(closed, Ok(Ok(0)) | Ok(Err(_))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a connection past {} was not closed: {closed:?}",
            kiln::egress::MAX_OPEN
        );
    }
    drop(idle);
    proxy.stop().await;

    // A connection from outside the sandbox's network is dropped unanswered.
    let mut fenced = rules(server, &[LOOPBACK]);
    fenced.clients = Some(("10.0.0.0".parse().unwrap(), 8));
    let proxy = start(fenced).await;
    let (_, answer) = ask(&proxy, &connect).await;
    assert_eq!(answer, "");
    assert!(proxy.stop().await.0.is_empty());
}

#[tokio::test]
async fn a_dropped_proxy_stops_listening_and_cuts_its_tunnels() {
    let server = stand_in().await;
    let port = server.port();
    let proxy = start(rules(server, &[LOOPBACK])).await;
    let addr = proxy.addr();
    let mut conn = tunnel(&proxy, port).await;
    drop(proxy);
    let mut byte = [0u8; 1];
    let cut = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut byte)).await;
    assert!(matches!(cut, Ok(Ok(0)) | Ok(Err(_))), "{cut:?}");
    // The listener goes with the accept task, which the drop aborted: ask until it is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stopping_cuts_open_tunnels_and_still_records_them() {
    let server = stand_in().await;
    let port = server.port();
    let proxy = start(rules(server, &[LOOPBACK])).await;
    let mut conn = tunnel(&proxy, port).await;
    conn.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    conn.read_exact(&mut echo).await.unwrap();
    let (requests, _) = proxy.stop().await;
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].bytes_up, requests[0].bytes_down), (5, 5));
    assert_eq!(requests[0].reason.as_deref(), Some("the stage ended"));
    assert_eq!(read_all(&mut conn).await, "", "the tunnel was closed");
}

/// A stand-in model API on loopback for the sandbox test: answers every request with the head
/// it received. Blocking, on its own thread.
fn blocking_stand_in() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = vec![0u8; 16 << 10];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).replace("\r\n", "|");
            let body = format!("stand-in saw: {head}\n");
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_sandbox_reaches_only_its_allowlist_through_the_proxy_and_has_no_dns() {
    common::require_busybox();
    let port = blocking_stand_in();
    let fixture = common::Fixture::with_files(&[("README", "hello\n")]);
    let config = fixture.path("kiln.toml");
    let allow = format!("\"model.test:{port}\", \"10.0.0.1:80\", \"169.254.169.254:80\"");
    // The operator permits what the job may name, and opens loopback for the stand-in.
    std::fs::write(
        &config,
        common::operator_config(&format!(
            "[egress]\npermit = [{allow}]\nallow_addresses = [\"127.0.0.1\"]\nhosts = {{ \"model.test\" = \"127.0.0.1\" }}\n"
        )),
    )
    .unwrap();
    // busybox's static wget crashes resolving anything, so requests go through nc by hand.
    let script = format!(
        r#"cd "$KILN_WORKSPACE"
proxy=${{HTTP_PROXY#http://}}
ask() {{ printf '%s %s HTTP/1.1\r\nHost: x\r\n\r\n' "$1" "$2" | nc -w 10 "${{proxy%:*}}" "${{proxy##*:}}"; }}
ask GET http://model.test:{port}/v1/hello > got.txt
echo "model: $(head -n 1 got.txt | tr -d '\r')"
echo "other: $(ask GET http://other.test:{port}/ | head -n 1 | tr -d '\r')"
echo "literal: $(ask CONNECT 10.0.0.1:80 | head -n 1 | tr -d '\r')"
echo "metadata: $(ask GET http://169.254.169.254/latest/meta-data/ | head -n 1 | tr -d '\r')"
nslookup model.test >/dev/null 2>&1; echo "dns: $?"
echo "proxy: $HTTP_PROXY"
"#
    );
    let job = fixture.job(
        "branch = \"factory/egress\"\nprompt = \"x\"",
        &script,
        "true",
        "",
    );
    fixture.edit_job(
        &job,
        "[test]",
        &format!("[generate.network]\nallow = [{allow}]\n\n[test]"),
    );
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let attempt = ran.artifacts.expect("artifacts").join("attempt-1");
    let log = std::fs::read_to_string(attempt.join("generate.log")).unwrap();
    for line in [
        "model: HTTP/1.1 200 OK",
        "other: HTTP/1.1 403 Forbidden",
        "literal: HTTP/1.1 403 Forbidden",
        "metadata: HTTP/1.1 403 Forbidden",
        "dns: 1",
    ] {
        assert!(log.lines().any(|l| l == line), "{line} in {log}");
    }
    assert!(log.contains("proxy: http://"), "{log}");
    // What reached the stand-in came through the proxy, in origin form.
    let patch = std::fs::read_to_string(attempt.join("diff.patch")).unwrap();
    assert!(
        patch.contains("stand-in saw: GET /v1/hello HTTP/1.1|Host: x|Connection: close|"),
        "{patch}"
    );
    let records: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(attempt.join("generate.egress.json")).unwrap(),
    )
    .unwrap();
    let requests = records["requests"].as_array().unwrap();
    let target = |t: &str| {
        requests
            .iter()
            .find(|r| r["target"] == t)
            .unwrap_or_else(|| panic!("{t} in {requests:?}"))
    };
    assert_eq!(target(&format!("model.test:{port}"))["allowed"], true);
    assert!(
        target(&format!("model.test:{port}"))["bytes_down"]
            .as_u64()
            .unwrap()
            > 0
    );
    for refused in [
        format!("other.test:{port}"),
        "10.0.0.1:80".to_string(),
        "169.254.169.254:80".to_string(),
    ] {
        assert_eq!(target(&refused)["allowed"], false, "{refused}");
    }
    let summary = &ran.report.expect("a report")["attempts"][0]["generate"]["egress"];
    assert_eq!(summary["refused"], 3, "{summary}");
    assert!(common::leftovers(&records_job(&attempt)).is_empty());
}

/// The job id, from the artifacts folder `<root>/<id>/attempt-1`.
fn records_job(attempt: &std::path::Path) -> String {
    attempt
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap()
}

#[test]
fn a_job_may_name_only_hosts_the_operator_permits() {
    let fixture = common::Fixture::with_files(&[("README", "hello\n")]);
    let config = fixture.path("kiln.toml");
    std::fs::write(&config, "[egress]\npermit = [\"pypi.org:443\"]\n").unwrap();
    let job = fixture.job(
        "branch = \"factory/egress\"\nprompt = \"x\"",
        "true",
        "true",
        "",
    );
    fixture.edit_job(
        &job,
        "[test]",
        "[generate.network]\nallow = [\"pypi.org:443\", \"evil.example:443\"]\n\n[test]",
    );
    let ran = fixture.run_configured(&config, &job);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("generate.network")
            && ran.stderr.contains("evil.example:443")
            && ran.stderr.contains("[egress] permit"),
        "{}",
        ran.stderr
    );
    assert!(ran.artifacts.is_none(), "nothing ran");
}
