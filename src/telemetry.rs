//! Traces of kiln's work, exported as OpenTelemetry spans over OTLP/HTTP (JSON) when the
//! operator names a collector (`[telemetry] otlp_endpoint`).
//!
//! kiln's own `tracing` spans (job, attempt, stage, container, tar, diff, policy, publish,
//! merge) become OpenTelemetry spans; nothing else does: no event, no other crate's span. The
//! fields those spans carry are ids, names, counts and outcomes; never a secret, a prompt or a
//! file's content. Spans are batched on a thread of their own and sent off kiln's async threads;
//! a collector that is slow or gone costs dropped spans (the queue is bounded), never a job.

use std::io::Read;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_http::{Bytes, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TelemetryConfig;
use crate::model::TraceParent;

/// The most of a collector's answer kiln reads (it only needs the status).
const MAX_ANSWER: u64 = 64 * 1024;

/// The exporter of one kiln process; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the trace exporter: {0}")]
pub struct TelemetryError(String);

impl Telemetry {
    /// Starts exporting to the config's collector; `None` when it names none. Call it outside
    /// an async runtime: the HTTP client it makes runs one of its own.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, TelemetryError> {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url)
            .with_timeout(config.timeout)
            .with_http_client(Client(client))
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Telemetry {
            provider,
            timeout: config.timeout,
        }))
    }

    /// The `tracing` layer that turns kiln's spans (and only spans, only kiln's) into
    /// OpenTelemetry spans for this exporter.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("kiln"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|meta| {
                meta.is_span() && meta.target().split("::").next() == Some("kiln")
            }))
    }

    /// Sends the spans not yet sent, waiting at most the configured timeout; at exit. Call it
    /// outside an async runtime.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(self.timeout) {
            eprintln!("kiln: traces not all sent: {e}");
        }
    }
}

/// Makes `span`, not yet entered, a child of the caller's span `parent` (the trace a client
/// sent): the job's spans then sit in the client's trace.
pub fn continue_trace(span: &tracing::Span, parent: &TraceParent) {
    let (Ok(trace), Ok(id)) = (
        TraceId::from_hex(parent.trace_id()),
        SpanId::from_hex(parent.parent_id()),
    ) else {
        return;
    };
    let flags = TraceFlags::new(parent.flags());
    let remote = SpanContext::new(trace, id, flags, true, TraceState::NONE);
    let context = opentelemetry::Context::new().with_remote_span_context(remote);
    // Fails only when no exporter layer is installed: then there is no trace to continue.
    let _ = span.set_parent(context);
}

/// The trace id `span` belongs to, when traces are exported (for the report).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// OTLP's HTTP client: reqwest's blocking client, called from the exporter's own thread.
#[derive(Debug)]
struct Client(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (head, body) = request.into_parts();
        let mut sent = self
            .0
            .request(head.method, head.uri.to_string())
            .headers(head.headers)
            .body(body)
            .send()?;
        let mut answer = Vec::new();
        (&mut sent).take(MAX_ANSWER).read_to_end(&mut answer)?;
        let mut response = Response::builder().status(sent.status());
        if let Some(headers) = response.headers_mut() {
            *headers = sent.headers().clone();
        }
        Ok(response.body(Bytes::from(answer))?)
    }
}
