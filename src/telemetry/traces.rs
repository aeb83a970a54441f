//! Traces: spans exported over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and the W3C trace context that makes one trace of
//! a delivery, its job and the outcome's hand-off.
//!
//! The delivery's context crosses processes through the database (`events.trace_context`, a
//! `traceparent` value): the worker that runs the job, and the dispatcher that hands its outcome
//! to a sink, may run elsewhere and later. Their spans take that context as parent (so the trace
//! id is the delivery's) and link to it. Without an endpoint nothing here is installed and every
//! helper returns at its first line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::HeaderMap;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const TRACEPARENT: &str = "traceparent";

/// Set once the exporter is installed: the ack path asks this before spending anything on
/// trace context.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured and the provider installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    /// Named, not shown: a collector URL may carry credentials.
    #[error(
        "{variable} is not an http:// or https:// URL (the OTLP/HTTP collector, e.g. http://127.0.0.1:4318)"
    )]
    InvalidEndpoint { variable: &'static str },
    #[error("the OTLP span exporter could not be built")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The tracer provider the standard `OTEL_*` variables describe, or `None` when no endpoint is
/// set (or `OTEL_SDK_DISABLED=true`). The SDK reads the rest itself: `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `_ARG`, `OTEL_BSP_*`,
/// `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT` / `_COMPRESSION` and their `TRACES_` forms.
pub(super) fn provider_from_env() -> Result<Option<SdkTracerProvider>, TraceSetupError> {
    if env_is("OTEL_SDK_DISABLED", "true") {
        return Ok(None);
    }
    let Some(variable) = [TRACES_ENDPOINT, ENDPOINT]
        .into_iter()
        .find(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
    else {
        return Ok(None);
    };
    // The exporter falls back to localhost:4318 on a value it cannot parse; a typo should
    // stop start-up instead, like any other setting.
    let value = std::env::var(variable).unwrap_or_default();
    if !url::Url::parse(value.trim()).is_ok_and(|url| matches!(url.scheme(), "http" | "https")) {
        return Err(TraceSetupError::InvalidEndpoint { variable });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(TraceSetupError::Exporter)?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build(),
    ))
}

/// The protocol the exporter speaks, when another one is asked for: this build has only
/// OTLP/HTTP with protobuf (no gRPC, no JSON), and the SDK does not read the variable.
pub(super) fn unsupported_protocol() -> Option<(&'static str, String)> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| Some((name, std::env::var(name).ok()?)))
    .filter(|(_, value)| value.trim() != "http/protobuf")
}

/// `service.name` is `gemhook` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` says
/// otherwise (the SDK's own default is `unknown_service`).
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| name.as_str() != "unknown_service");
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name("gemhook");
    }
    if detected
        .get(&opentelemetry::Key::from_static_str("service.version"))
        .is_none()
    {
        builder =
            builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
}

fn env_is(name: &str, expected: &str) -> bool {
    std::env::var(name).is_ok_and(|value| value.trim().eq_ignore_ascii_case(expected))
}

/// The layer that turns `tracing` spans into OpenTelemetry spans for `provider`.
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("gemhook"))
        .with_threads(false)
}

/// Makes `provider` and the W3C propagator the process's own, once the subscriber carrying its
/// layer is installed; from then on the helpers below do their work.
pub(super) fn install(provider: &SdkTracerProvider) {
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
}

/// Makes `span` continue the caller's trace when the request carries a valid `traceparent`
/// (else it starts a new one). Call before the span is first entered.
pub fn continue_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The W3C `traceparent` of `span`, to store with what it recorded; `None` when tracing is off.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    let context = span.context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the stored delivery context and links it there, so that work done
/// later, in this or another process, is in the delivery's trace. Call before the span is
/// first entered. Nothing happens without tracing or without a stored context.
pub fn follow_stored(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(stored) = traceparent.filter(|_| enabled()) else {
        return;
    };
    let parent = from_traceparent(stored);
    let linked = parent.span().span_context().clone();
    if linked.is_valid() {
        let _ = span.set_parent(parent);
        span.add_link(linked);
    }
}

/// Adds the `traceparent` (and `tracestate`) of `span` to an outgoing request's headers.
pub fn inject_into(span: &tracing::Span, headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let context = span.context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

fn from_traceparent(traceparent: &str) -> Context {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    global::get_text_map_propagator(|p| p.extract(&carrier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_nothing_is_propagated_or_stored() {
        let span = tracing::info_span!("delivery");
        let mut headers = HeaderMap::new();

        inject_into(&span, &mut headers);

        assert!(!enabled());
        assert_eq!(traceparent(&span), None);
        assert!(headers.is_empty());
    }
}
