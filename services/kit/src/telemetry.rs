//! Traces: the process's `tracing` subscriber (logs, `RUST_LOG`) with an OpenTelemetry layer,
//! W3C trace context (`traceparent`) in and out, and OTLP export (http/protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! - [`init`]: the subscriber. Spans always get trace and span ids (so logs carry `trace_id` and
//!   calls carry `traceparent`); they leave the process only when an endpoint is set.
//! - [`server_span`]: the span of one HTTP request, a child of the caller's `traceparent` (the
//!   kit's middleware opens it for every route of every server).
//! - [`inject`] / [`traced`]: the current span's `traceparent` on an outgoing request (every
//!   protocol's sender goes through [`traced`]); [`current`] /
//!   [`with_parent`]: the same context kept as a string (a saga carries its creator's trace to
//!   every step it runs later).
//!
//! `OTEL_SDK_DISABLED=true` ([`disabled`]) installs the logs alone: no OpenTelemetry context,
//! nothing propagated or exported (what the bench's `--observability-cost` compares against).
//!
//! Without [`init`] (tests in one process) spans have no OpenTelemetry context and nothing is
//! propagated.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The standard variable that switches the SDK off: `true` installs no OpenTelemetry layer —
/// spans get no trace ids, no `traceparent` is read or sent, nothing is exported (logs stay).
pub const DISABLED_VAR: &str = "OTEL_SDK_DISABLED";

/// Whether tracing is switched off ([`DISABLED_VAR`] is `true`).
pub fn disabled() -> bool {
    std::env::var(DISABLED_VAR).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The standard variable naming the OTLP collector (`http://host:4318`; spans go to
/// `…/v1/traces`). Unset: no export.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Install the subscriber: logs (`RUST_LOG`, default `info`) and OpenTelemetry spans for
/// `service` (`OTEL_SERVICE_NAME` overrides it), exported over OTLP if [`ENDPOINT_VAR`] is set.
/// Call inside the Tokio runtime (the exporter sends on it). A second call does nothing.
pub fn init(service: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    if disabled() {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer())
            .try_init();
        return;
    }
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(name.clone())
            .build(),
    );
    let exporting = std::env::var_os(ENDPOINT_VAR).is_some_and(|v| !v.is_empty());
    if exporting {
        match exporter() {
            Ok(e) => builder = builder.with_batch_exporter(e),
            Err(e) => eprintln!("{ENDPOINT_VAR} is set but the OTLP exporter failed: {e}"),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(name);
    let registered = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer())
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .is_ok();
    if registered {
        let _ = PROVIDER.set(provider);
    }
}

/// Export what is still buffered (call before the process exits).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

fn exporter() -> Result<opentelemetry_otlp::SpanExporter, Box<dyn std::error::Error>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?,
        runtime: tokio::runtime::Handle::try_current()?,
    };
    Ok(opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(client)
        .build()?)
}

/// The exporter's HTTP client: the workspace's reqwest, run on the process's Tokio runtime
/// (the batch processor exports from a thread of its own, outside the runtime).
#[derive(Debug, Clone)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let resp = http.execute(reqwest::Request::try_from(request)?).await?;
            let mut answer = opentelemetry_http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                answer = answer.header(k, v);
            }
            let body = resp.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The span of one request to `route` (a template), a child of its `traceparent` if any.
pub fn server_span(method: &axum::http::Method, route: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "request",
        method = %method,
        route,
        status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = propagator().extract(&opentelemetry_http::HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_trace_id(&span);
    span
}

/// Record the span's trace id in its `trace_id` field (so its log lines carry it).
pub fn record_trace_id(span: &Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
}

/// Add the current span's `traceparent` (and `tracestate`) to `headers`.
pub fn inject(headers: &mut HeaderMap) {
    let cx = Span::current().context();
    propagator().inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
}

/// `request` with the current span's `traceparent`: the one way every protocol's sender (saga
/// steps, 2PC, 3PC and Paxos Commit messages) carries the trace to the process it calls.
pub fn traced(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    if headers.is_empty() {
        request
    } else {
        request.headers(headers)
    }
}

/// The current span's trace context as a `traceparent` value, if it has one.
pub fn current() -> Option<String> {
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map = HashMap::new();
    propagator().inject_context(&cx, &mut map);
    map.remove("traceparent")
}

/// Make `span` a child of `traceparent` (as [`current`] gave it); no-op for None or garbage.
pub fn with_parent(span: &Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let map = HashMap::from([("traceparent".to_string(), tp.to_string())]);
        let parent = propagator().extract(&map);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    record_trace_id(span);
}
