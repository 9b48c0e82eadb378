//! OpenTelemetry traces over OTLP/HTTP (docs/operations.md), on only when the standard
//! `OTEL_*` variables ask for them. The spans are ordinary `tracing` spans
//! bridged by tracing-opentelemetry; everything here is a no-op, and no span
//! the gateway creates for tracing alone exists, while [`enabled`] is false.
//!
//! Attributes are set with [`OpenTelemetrySpanExt::set_attribute`] rather than
//! as `tracing` fields, so the log formats none of them (only the server
//! span's `otel.name` and `otel.kind` are fields, recorded while tracing is on).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_http::{Bytes, HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, Resource};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: set once at start, read on the hot path.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What the `OTEL_*` variables ask for: `Ok(None)` for no tracing (no
/// endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`), else
/// OTLP over HTTP in a protocol (`http/protobuf` unless told `http/json`);
/// `Err` names a variable asking for what this gateway cannot do. `var`
/// reads the environment (or a test's map); an empty variable counts as
/// unset, as the OpenTelemetry specification says.
pub fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<Option<Protocol>, String> {
    let var = |name: &str| {
        var(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER: {other:?} is not supported; use otlp (over HTTP) or none"
            ));
        }
    }
    let (name, protocol) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(p)),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            var("OTEL_EXPORTER_OTLP_PROTOCOL"),
        ),
    };
    // Checked even with no endpoint: a bad value is a mistake to report.
    let protocol = match protocol.as_deref() {
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some("http/json") => Protocol::HttpJson,
        Some(other) => {
            return Err(format!(
                "{name}: {other:?} is not supported; use http/protobuf or http/json"
            ));
        }
    };
    let endpoint =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if endpoint.is_none() {
        return Ok(None);
    }
    Ok(Some(protocol))
}

/// The tracer provider; [`Tracing::shutdown`] exports what is still queued.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Flushes the batch and stops the export thread. Blocking: call it once
    /// the server has stopped, outside the async runtime's workers.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }
}

/// Builds the OTLP exporter and provider when the environment asks for them
/// (protocol, headers, timeout, batch and sampler settings are the SDK's own
/// readings of the `OTEL_*` variables). Returns the tracer for the
/// subscriber's layer; `Ok(None)` when tracing is off.
pub fn start() -> Result<Option<(Tracing, opentelemetry_sdk::trace::SdkTracer)>, String> {
    let Some(protocol) = wanted(|name| std::env::var(name).ok())? else {
        return Ok(None);
    };
    // Each attempt's timeout; the exporter also bounds its retries by it.
    let timeout = [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis);
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(Exporter(client))
        .with_protocol(protocol)
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_*: {e}"))?;
    // `service.name` is ours unless OTEL_SERVICE_NAME or
    // OTEL_RESOURCE_ATTRIBUTES name another.
    let mut resource = Resource::builder_empty()
        .with_service_name("visits-gateway")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detector(Box::new(EnvResourceDetector::new()));
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
        && !name.trim().is_empty()
    {
        resource = resource.with_service_name(name.trim().to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("visits-gateway");
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((Tracing { provider }, tracer)))
}

/// The SDK exports from a thread of its own, outside any async runtime: a
/// blocking client of the reqwest (rustls) the gateway already uses.
#[derive(Debug)]
struct Exporter(reqwest::blocking::Client);

#[async_trait::async_trait]
impl HttpClient for Exporter {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<Bytes>,
    ) -> Result<opentelemetry_http::Response<Bytes>, HttpError> {
        let response = self.0.execute(request.try_into()?)?;
        let mut answer = opentelemetry_http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        Ok(answer.body(response.bytes()?)?)
    }
}

/// A client's W3C `traceparent` (and `tracestate`) as `span`'s parent.
pub fn adopt_parent(span: &Span, headers: &HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

/// `span`'s context as `traceparent` for the platform.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The trace id of `span`, for the access log.
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Sets attributes on `span` (nothing happens while tracing is off).
pub fn attributes<const N: usize>(span: &Span, attributes: [(&'static str, Value); N]) {
    for (key, value) in attributes {
        span.set_attribute(key, value);
    }
}

/// A cache outcome as an event on the current span, when tracing is on.
pub fn cache_event(cache: &'static str, outcome: &'static str) {
    if enabled() {
        Span::current().add_event(
            "cache lookup",
            vec![
                KeyValue::new("cache.name", cache),
                KeyValue::new("cache.outcome", outcome),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Option<Protocol>, String> {
        wanted(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn an_endpoint_turns_tracing_on_and_the_standard_switches_turn_it_off() {
        let proto = Ok(Some(Protocol::HttpBinary));
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        assert_eq!(
            with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
            proto
        );
        assert_eq!(
            with(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]),
            proto
        );
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(with(&[on, ("OTEL_SDK_DISABLED", "TRUE")]), Ok(None));
        assert_eq!(with(&[on, ("OTEL_SDK_DISABLED", "false")]), proto);
        assert_eq!(with(&[on, ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
        assert_eq!(with(&[on, ("OTEL_TRACES_EXPORTER", "otlp")]), proto);
        assert!(
            with(&[on, ("OTEL_TRACES_EXPORTER", "zipkin")])
                .unwrap_err()
                .starts_with("OTEL_TRACES_EXPORTER:")
        );
    }

    #[test]
    fn the_protocol_is_protobuf_unless_json_is_asked_for() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let json = Ok(Some(Protocol::HttpJson));
        assert_eq!(
            with(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            json
        );
        assert_eq!(
            with(&[
                on,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
            ]),
            json
        );
        assert!(
            with(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
                .unwrap_err()
                .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:")
        );
    }

    #[test]
    fn while_off_nothing_is_recorded_or_propagated() {
        let span = Span::none();
        let mut headers = HeaderMap::new();
        inject(&span, &mut headers);
        assert!(headers.is_empty());
        assert_eq!(trace_id(&span), None);
    }
}
