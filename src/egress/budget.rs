//! A job's spending limit on model calls, enforced where the agent cannot reach: in the tunnels
//! kiln opens to add a model API's key. Every response from a model host is metered as it
//! passes (`usage`), its cost added to the job's spend; once the budget is spent, the next
//! request to a model host is not sent on but answered 429 with a JSON error saying so.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, SizeHint};

use super::intercept::Exchange;
use super::usage::{Meter, estimate};
use crate::model::spend::{ApiKind, Budget, Price, Spend};

/// What kiln knows of one model API host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelHost {
    pub kind: ApiKind,
    pub price: Price,
}

/// One job's (or one job's reviewer's) model spend, shared by the proxies of all its stages
/// across attempts, and the budget it is held to.
#[derive(Debug)]
pub struct SpendMeter {
    hosts: HashMap<String, ModelHost>,
    budget: Budget,
    spend: Mutex<Spend>,
    /// The same, by model host.
    by_host: Mutex<BTreeMap<String, Spend>>,
    /// Why the first request was refused, once one was: the stage making it is stopped.
    cut: tokio::sync::watch::Sender<Option<String>>,
    /// With `[egress] transcripts`: each call's request and response, until the stage that
    /// made them takes them.
    transcripts: Option<Mutex<Transcript>>,
}

/// The calls of one stage run, as kept for its transcript.
#[derive(Debug, Default)]
struct Transcript {
    lines: Vec<serde_json::Value>,
    bytes: usize,
    dropped: usize,
}

/// The most of one stage run's transcript kept; calls past it are counted only.
const MAX_TRANSCRIPT: usize = 16 << 20;
/// The most of one request body kept in a transcript.
const MAX_REQUEST: usize = 2 << 20;

impl SpendMeter {
    /// A meter of calls to `hosts` held to `budget`, keeping transcripts when `transcripts`.
    pub fn new(
        hosts: HashMap<String, ModelHost>,
        budget: Budget,
        transcripts: bool,
    ) -> Arc<SpendMeter> {
        Arc::new(SpendMeter {
            transcripts: transcripts.then(Mutex::default),
            hosts,
            budget,
            spend: Mutex::new(Spend::default()),
            by_host: Mutex::new(BTreeMap::new()),
            cut: tokio::sync::watch::channel(None).0,
        })
    }

    /// The model API at `host`, if it is one.
    pub fn model(&self, host: &str) -> Option<ModelHost> {
        self.hosts.get(host).copied()
    }

    /// What has been spent so far.
    pub fn spent(&self) -> Spend {
        *self.spend.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Why no further request may be made, once the budget is spent.
    pub fn exhausted(&self) -> Option<String> {
        self.spent().exhausted(&self.budget)
    }

    /// Counts a request about to be sent, unless the budget is spent (then why not): checked
    /// and counted at once, so that requests sent together cannot pass the limit together.
    pub(super) fn begin(&self, host: &str) -> Result<(), String> {
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = spend.exhausted(&self.budget) {
            self.cut.send_if_modified(|cut| {
                let first = cut.is_none();
                if first {
                    *cut = Some(why.clone());
                }
                first
            });
            return Err(why);
        }
        spend.requests += 1;
        drop(spend);
        let mut by_host = self.by_host.lock().unwrap_or_else(|e| e.into_inner());
        by_host.entry(host.to_string()).or_default().requests += 1;
        Ok(())
    }

    /// What has been spent so far, by model host, with the API each speaks.
    pub fn by_host(&self) -> Vec<(String, ApiKind, Spend)> {
        let by_host = self.by_host.lock().unwrap_or_else(|e| e.into_inner());
        by_host
            .iter()
            .filter_map(|(host, spent)| Some((host.clone(), self.model(host)?.kind, *spent)))
            .collect()
    }

    /// Whether the calls' requests and responses are kept.
    pub(super) fn keeps_transcripts(&self) -> bool {
        self.transcripts.is_some()
    }

    /// The transcript lines kept since the last take (one JSON object per call), and how many
    /// calls past the cap were left out.
    pub fn take_transcript(&self) -> (Vec<serde_json::Value>, usize) {
        let Some(t) = &self.transcripts else {
            return (Vec::new(), 0);
        };
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::take(&mut *t);
        (taken.lines, taken.dropped)
    }

    fn keep_transcript(&self, line: serde_json::Value) {
        let Some(t) = &self.transcripts else {
            return;
        };
        let size = line.to_string().len();
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        if t.bytes + size > MAX_TRANSCRIPT {
            t.dropped += 1;
        } else {
            t.bytes += size;
            t.lines.push(line);
        }
    }

    /// Why a request was refused for the budget, once one was.
    pub fn cut_short(&self) -> Option<String> {
        self.cut.borrow().clone()
    }

    /// Resolves once a request has been refused for the budget, with why.
    pub async fn cut(&self) -> String {
        let mut watching = self.cut.subscribe();
        let cut = match watching.wait_for(Option::is_some).await {
            Ok(cut) => cut.clone(),
            // The sender lives as long as `self`: this is never reached while waiting.
            Err(_) => None,
        };
        match cut {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    fn add(&self, host: &str, spend: &Spend) {
        self.spend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge(spend);
        self.by_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .merge(spend);
    }
}

type Boxed = BoxBody<Bytes, hyper::Error>;

/// The answer to a request made after the budget is spent: 429, with an error in the API's own
/// shape so that an agent reports it rather than retrying blindly.
pub(super) fn refusal(kind: ApiKind, why: &str) -> hyper::Response<Boxed> {
    let message = format!("kiln: this job's model budget is spent ({why}); no further requests");
    let body = match kind {
        ApiKind::Anthropic => serde_json::json!({
            "type": "error",
            "error": {"type": "budget_exhausted", "message": message},
        }),
        ApiKind::Openai => serde_json::json!({
            "error": {"type": "budget_exhausted", "code": "budget_exhausted", "message": message},
        }),
    };
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-kiln-budget",
        hyper::header::HeaderValue::from_static("exhausted"),
    );
    response
}

/// A model host's response body on its way to the sandbox, metered as it passes; as its last
/// bytes pass (or when it is dropped half-way), its usage (or the estimate) is added to the
/// job's spend and to its exchange's record.
pub(super) struct Metered {
    inner: Boxed,
    host: String,
    /// The request: its body counted as it passed (and kept, for a transcript).
    asked: Asked,
    status: u16,
    meter: Option<Meter>,
    price: Price,
    response_bytes: u64,
    spend: Arc<SpendMeter>,
    record: Arc<Mutex<Vec<Exchange>>>,
    index: Option<usize>,
}

impl Metered {
    /// Wraps `response` from `host` to the request `asked`; its usage goes to `spend` and to
    /// `record[index]`.
    pub(super) fn wrap(
        response: hyper::Response<Boxed>,
        name: &str,
        asked: Asked,
        host: ModelHost,
        spend: Arc<SpendMeter>,
        record: Arc<Mutex<Vec<Exchange>>>,
        index: Option<usize>,
    ) -> hyper::Response<Boxed> {
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let meter = Meter::new(
            host.kind,
            header(hyper::header::CONTENT_TYPE).as_deref(),
            header(hyper::header::CONTENT_ENCODING).as_deref(),
        );
        let status = response.status().as_u16();
        response.map(|inner| {
            Metered {
                inner,
                host: name.to_string(),
                asked,
                status,
                meter: Some(meter),
                price: host.price,
                response_bytes: 0,
                spend,
                record,
                index,
            }
            .boxed()
        })
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.response_bytes += data.len() as u64;
                    if let Some(meter) = &mut this.meter {
                        meter.feed(data);
                    }
                }
                // Counted before the last bytes go out: a request the sandbox sends as soon
                // as it has them finds the spend already added.
                if this.inner.is_end_stream() {
                    this.settle();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.settle(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Metered {
    /// Adds the response's usage (or the estimate) to the spend and its record, once.
    fn settle(&mut self) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        let reading = meter.finish();
        let kept = self.asked.body.lock().unwrap_or_else(|e| e.into_inner());
        let (usage, estimated) = match reading.usage {
            Some(usage) => (usage, false),
            None => (estimate(kept.total, self.response_bytes), true),
        };
        let usd = self.price.cost(&usage);
        // The request itself was counted as it began.
        let mut spend = Spend::default();
        spend.add(usage, usd, estimated);
        spend.requests = 0;
        self.spend.add(&self.host, &spend);
        if self.asked.transcript {
            let (method, path) = (&self.asked.method, &self.asked.path);
            let request = serde_json::from_slice::<serde_json::Value>(&kept.bytes)
                .unwrap_or_else(|_| String::from_utf8_lossy(&kept.bytes).into_owned().into());
            self.spend.keep_transcript(serde_json::json!({
                "host": self.host,
                "method": method,
                "path": path,
                "status": self.status,
                "request": request,
                "request_truncated": kept.truncated,
                "response": reading.text,
                "usage": usage,
                "usd": usd,
                "estimated": estimated,
            }));
        }
        drop(kept);
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exchange) = self.index.and_then(|i| record.get_mut(i)) {
            exchange.usage = Some(usage);
            exchange.usd = Some(usd);
            exchange.estimated = estimated;
        }
    }
}

/// A body dropped half-way (the sandbox went away) is counted for what passed.
impl Drop for Metered {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A model call's request as its response's meter sees it.
pub(super) struct Asked {
    pub method: String,
    pub path: String,
    /// Its body, counted as it passes (and its first bytes kept, for a transcript).
    pub body: Arc<Mutex<Kept>>,
    /// Whether the call goes to the stage's transcript.
    pub transcript: bool,
}

/// A request body as it passed: every byte counted (the estimate of a response whose usage
/// cannot be read counts them, however the body was framed), its first bytes kept for a
/// transcript (up to a cap).
#[derive(Debug, Default)]
pub(super) struct Kept {
    total: u64,
    room: usize,
    bytes: Vec<u8>,
    truncated: bool,
}

/// A request body on its way to a model host, counted, and its first bytes kept when `keep`.
pub(super) struct Teed {
    inner: hyper::body::Incoming,
    kept: Arc<Mutex<Kept>>,
}

impl Teed {
    /// `body`, counted (and teed, when `keep`) into the returned `Kept`.
    pub(super) fn new(body: hyper::body::Incoming, keep: bool) -> (Teed, Arc<Mutex<Kept>>) {
        let kept = Arc::new(Mutex::new(Kept {
            room: if keep { MAX_REQUEST } else { 0 },
            ..Kept::default()
        }));
        (
            Teed {
                inner: body,
                kept: kept.clone(),
            },
            kept,
        )
    }
}

impl Body for Teed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let mut kept = this.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.total += data.len() as u64;
            let room = kept.room.saturating_sub(kept.bytes.len());
            kept.bytes.extend_from_slice(&data[..room.min(data.len())]);
            kept.truncated |= data.len() > room;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
