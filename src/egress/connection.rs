//! One client connection: read its request, decide it against the rules, and carry it out as a
//! tunnel, one forwarded exchange, or (for a host a secret is bound to) an opened tunnel.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::head::{forwarded_head, parse_head, read_head};
use super::pump::tunnel;
use super::record::hide_secrets;
use super::resolve::resolve;
use super::{HANDSHAKE_TIMEOUT, MAX_RECORDS, Request, Shared, intercept, stopped};
use crate::model::{Allow, Host};

/// One client connection: one request, then a tunnel or one forwarded exchange.
pub(super) async fn serve(mut client: TcpStream, shared: &Shared, stopping: watch::Receiver<bool>) {
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
    let allow = Allow::parse(&request.authority).map_err(|e| e.0)?;
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
