//! The routes that read a job's artifacts: its report, its stage logs (whole, or followed as
//! they grow), and any one file. Files are streamed in chunks with a size cap, never read whole;
//! a followed log is read from where the last look stopped, not again from its start.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State as Shared};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Answer, ApiError, row_of};
use crate::artifacts::Artifacts;
use crate::model::Stage;
use crate::secrets::Redactor;
use crate::serve::{Server, kept};
use crate::store::State;

/// The largest report the API serves.
const MAX_REPORT: u64 = 64 << 20;
/// The largest artifact the API serves; a bigger one is read from the state folder.
const MAX_ARTIFACT: u64 = 1 << 30;
/// Bytes read from a file at a time.
const CHUNK: usize = 64 << 10;
/// How often a followed log is looked at again.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// The stage logs of an attempt, in the order they are written.
const LOG_STAGES: [Stage; 3] = [Stage::Generate, Stage::Test, Stage::Review];

/// The job's artifacts folder, once the job exists; with a shared store, the store's latest files
/// of it are brought here first.
async fn artifacts_of(server: &Arc<Server>, id: &str) -> Result<Artifacts, ApiError> {
    row_of(server, id)?;
    kept::fetch(server, id).await?;
    Ok(Artifacts::at(
        server.artifacts().join(id),
        Redactor::default(),
    ))
}

pub(super) async fn report(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    let path = artifacts_of(&server, &id).await?.report();
    let body = stream_file(&path, MAX_REPORT).await.map_err(|e| match e {
        Unserved::Missing => ApiError(
            StatusCode::NOT_FOUND,
            format!("job `{id}` has no report yet"),
        ),
        other => other.into_api("the report"),
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// GET /jobs/{id}/artifacts/{path}: one file of the job's artifacts; the path may not leave the
/// folder nor follow a link.
pub(super) async fn artifact(
    Shared(server): Shared<Arc<Server>>,
    UrlPath((id, path)): UrlPath<(String, String)>,
) -> Answer {
    let dir = artifacts_of(&server, &id).await?;
    let relative = Path::new(&path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`path` must stay inside the job's artifacts".into(),
        ));
    }
    let body = stream_file(&dir.dir().join(relative), MAX_ARTIFACT)
        .await
        .map_err(|e| match e {
            Unserved::Missing => ApiError(StatusCode::NOT_FOUND, format!("no artifact `{path}`")),
            other => other.into_api(&format!("artifact `{path}`")),
        })?;
    Ok(body.into_response())
}

/// Why a file is not served.
enum Unserved {
    /// Absent, a link, or not a regular file.
    Missing,
    TooLarge(u64, u64),
    Io(std::io::Error),
}

impl Unserved {
    fn into_api(self, what: &str) -> ApiError {
        match self {
            Unserved::Missing => ApiError(StatusCode::NOT_FOUND, format!("no {what}")),
            Unserved::TooLarge(len, cap) => ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{what} is {len} bytes, over the {cap} the API serves; read it from the server's state folder"
                ),
            ),
            Unserved::Io(e) => ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {what}: {e}"),
            ),
        }
    }
}

/// The regular file at `path` (a link is not followed), streamed in chunks up to the length it
/// had when opened, if that is at most `cap`.
async fn stream_file(path: &Path, cap: u64) -> Result<Body, Unserved> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Unserved::Missing,
            // O_NOFOLLOW on a link fails with ELOOP.
            _ if e.raw_os_error() == Some(nix::libc::ELOOP) => Unserved::Missing,
            _ => Unserved::Io(e),
        })?;
    let meta = file.metadata().await.map_err(Unserved::Io)?;
    if !meta.is_file() {
        return Err(Unserved::Missing);
    }
    if meta.len() > cap {
        return Err(Unserved::TooLarge(meta.len(), cap));
    }
    let stream = futures_util::stream::unfold((file, meta.len()), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut chunk = vec![0; CHUNK.min(left as usize)];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    Ok(Body::from_stream(stream))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    follow: Option<bool>,
}

/// GET /jobs/{id}/logs: every stage log written so far, each under a header line, as the
/// container wrote it (bytes, not necessarily UTF-8); with `follow=true`, the answer goes on as
/// the logs grow, until the job ends.
pub(super) async fn logs(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Answer {
    let row = row_of(&server, &id)?;
    if let Some(owner) = row.server.as_deref().filter(|owner| {
        server.shared && row.state == State::Running && *owner != server.id.as_str()
    }) {
        // A running stage's log is on the server running it: its answer is passed on.
        return relay_logs(&server, owner, &id, q.follow.unwrap_or(false)).await;
    }
    let artifacts = artifacts_of(&server, &id).await?;
    let follow = q.follow.unwrap_or(false);
    let reader = LogReader::new(artifacts);
    let stream = futures_util::stream::unfold(Some(reader), move |reader| {
        let (server, id) = (server.clone(), id.clone());
        async move {
            let mut reader = reader?;
            loop {
                let ended = !follow
                    || server
                        .db(|s| s.get(&id))
                        .ok()
                        .flatten()
                        .is_none_or(|row| row.state.is_final());
                let chunk = match reader.next_chunk().await {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), None)),
                };
                if !chunk.is_empty() {
                    return Some((Ok(chunk), Some(reader)));
                }
                if ended {
                    // Everything there is was sent: close the last log's line, and stop.
                    let tail = reader.finish();
                    return (!tail.is_empty()).then(|| (Ok(tail), None));
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        }
    });
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    Ok((plain, Body::from_stream(stream)).into_response())
}

/// GET /jobs/{id}/logs of the server `owner`, which runs the job, passed on as it comes (the
/// servers of one store share one token).
async fn relay_logs(server: &Arc<Server>, owner: &str, id: &str, follow: bool) -> Answer {
    let url = server
        .db(|s| match s.shared() {
            Some(pg) => pg.server_url(owner),
            None => Ok(None),
        })?
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_GATEWAY,
                format!("job `{id}` runs on server {owner}, which gave no address"),
            )
        })?;
    let unreachable = |e: reqwest::Error| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!("job `{id}` runs on server {owner} at {url}, which did not answer: {e}"),
        )
    };
    let answer = reqwest::Client::new()
        .get(format!("{url}/jobs/{id}/logs?follow={follow}"))
        .bearer_auth(&server.token)
        .send()
        .await
        .map_err(unreachable)?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    Ok((status, plain, Body::from_stream(answer.bytes_stream())).into_response())
}

/// Reads a job's stage logs in the order they are written, each from where it last stopped.
/// The logs only grow (a running stage's log is the start of what it will be), so nothing sent
/// is ever sent again.
struct LogReader {
    artifacts: Artifacts,
    /// The log being read, as (attempt, index into [`LOG_STAGES`]).
    at: (u32, usize),
    /// Whether the current log's header was sent, and how much of it.
    started: bool,
    offset: u64,
    /// The last byte sent, to close a log's last line before the next header.
    last: Option<u8>,
}

impl LogReader {
    fn new(artifacts: Artifacts) -> Self {
        LogReader {
            artifacts,
            at: (1, 0),
            started: false,
            offset: 0,
            last: None,
        }
    }

    fn path(&self, (n, i): (u32, usize)) -> PathBuf {
        self.artifacts.stage_log(n, LOG_STAGES[i])
    }

    /// The log after `at` that exists now, if any.
    async fn next_log(&self) -> Option<(u32, usize)> {
        let (n, i) = self.at;
        let later = (i + 1..LOG_STAGES.len())
            .map(|j| (n, j))
            .chain((0..LOG_STAGES.len()).map(|j| (n + 1, j)));
        for at in later {
            if tokio::fs::try_exists(self.path(at)).await.unwrap_or(false) {
                return Some(at);
            }
        }
        None
    }

    /// The next bytes to send (empty when there is nothing new now), at most about a chunk.
    async fn next_chunk(&mut self) -> std::io::Result<Bytes> {
        let mut out = Vec::new();
        loop {
            let path = self.path(self.at);
            if !self.started {
                if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    match self.next_log().await {
                        Some(at) => {
                            self.at = at;
                            continue;
                        }
                        None => return Ok(out.into()),
                    }
                }
                let (n, i) = self.at;
                self.close_line(&mut out);
                out.extend_from_slice(
                    format!("==> attempt {n} {}.log <==\n", LOG_STAGES[i]).as_bytes(),
                );
                self.started = true;
                self.offset = 0;
                self.last = Some(b'\n');
            }
            let read = self.read_from(&path).await?;
            if let Some(&byte) = read.last() {
                self.last = Some(byte);
                self.offset += read.len() as u64;
                out.extend_from_slice(&read);
                return Ok(out.into());
            }
            // This log has nothing new: move on when a later one exists (this one is done).
            match self.next_log().await {
                Some(at) => {
                    self.at = at;
                    self.started = false;
                }
                None => return Ok(out.into()),
            }
        }
    }

    /// Up to a chunk of the log at `path` from the offset reached.
    async fn read_from(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(std::io::SeekFrom::Start(self.offset)).await?;
        let mut chunk = vec![0; CHUNK];
        let n = file.read(&mut chunk).await?;
        chunk.truncate(n);
        Ok(chunk)
    }

    fn close_line(&mut self, out: &mut Vec<u8>) {
        if self.last.is_some_and(|b| b != b'\n') {
            out.push(b'\n');
            self.last = Some(b'\n');
        }
    }

    /// What ends the answer: the last log's line closed.
    fn finish(&mut self) -> Bytes {
        let mut out = Vec::new();
        self.close_line(&mut out);
        out.into()
    }
}
