//! OpenTelemetry: `gemhook serve` processes export their spans to a local OTLP/HTTP receiver,
//! and one trace runs from the delivery through its job to the outcome's hand-off, across
//! processes, with the trace context carried to the application's HTTP sink.
//!
//! Real processes: the tracer provider is process-wide, so each gemhook is a child process
//! with its own `OTEL_*` environment.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

use crate::handoff::http_sink;
use crate::helpers::*;
use crate::process::{Gemhook, gemhook_ok};

/// One exported span, as the receiver decoded it (ids in lowercase hex, as in `traceparent`).
#[derive(Debug, Clone)]
struct ExportedSpan {
    name: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
    webhook_id: Option<String>,
}

/// A local OTLP/HTTP collector: `POST /v1/traces` with protobuf, every span kept, and the raw
/// bodies too (to look for what must never be exported).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Collector {
    /// Starts it; returns the endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    async fn start(&self) -> String {
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        endpoint
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The span named `name` of the delivery `webhook_id`, waiting up to 20 s for it.
    async fn span(&self, name: &str, webhook_id: &str) -> ExportedSpan {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .spans()
                .into_iter()
                .find(|s| s.name == name && s.webhook_id.as_deref() == Some(webhook_id));
            if let Some(span) = found {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no {name:?} span for {webhook_id} was exported; got {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn export(State(collector): State<Collector>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body.clone()) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    collector.bodies.lock().unwrap().push(body);
    let mut spans = collector.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = text(&resource.attributes, "service.name").unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            spans.push(ExportedSpan {
                name: span.name,
                service: service.clone(),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                links: span
                    .links
                    .iter()
                    .map(|link| (hex::encode(&link.trace_id), hex::encode(&link.span_id)))
                    .collect(),
                webhook_id: text(&span.attributes, "webhook_id"),
            });
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, answer)
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(text) => Some(text.clone()),
            _ => None,
        }
    })
}

/// The application behind the HTTP sink: keeps the `traceparent` of every POST.
#[derive(Clone, Default)]
struct Application {
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
}

impl Application {
    async fn start(&self) -> String {
        let router = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }

    /// The first POST's `traceparent` (None when it had none), waiting up to 20 s for a POST.
    async fn first_traceparent(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(first) = self.traceparents.lock().unwrap().first() {
                return first.clone();
            }
            assert!(Instant::now() < deadline, "the sink received nothing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(app): State<Application>, headers: HeaderMap) -> StatusCode {
    let traceparent = headers
        .get("traceparent")
        .map(|value| value.to_str().unwrap().to_owned());
    app.traceparents.lock().unwrap().push(traceparent);
    StatusCode::OK
}

/// A `batch.failed` delivery: its job needs nothing from Gemini, and its outcome is handed off.
fn failed_batch(batch: &str) -> String {
    format!(r#"{{"type":"batch.failed","data":{{"id":"batches/{batch}","error_code":13}}}}"#)
}

/// The environment of a traced gemhook: the database, the sink (in a config file under `dir`),
/// the collector.
fn traced_env(
    db: &TestDatabase,
    dir: &std::path::Path,
    sink_url: &str,
    collector: &str,
) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("sinks.toml");
    std::fs::write(&config, http_sink("app", sink_url, "")).unwrap();
    [
        ("GEMHOOK_DATABASE_URL", db.url.clone()),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false".to_owned()),
        (
            "GEMHOOK_RESULTS_DIR",
            dir.join("results").display().to_string(),
        ),
        ("GEMHOOK_CONFIG", config.display().to_string()),
        ("GEMHOOK_POLL_INTERVAL_MS", "100".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.to_owned()),
    ]
    .map(|(name, value)| (name.to_owned(), value))
    .into()
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn one_trace_runs_from_a_delivery_through_its_job_in_another_process_to_the_sink() {
    crate::require_postgres!();
    let db = TestDatabase::create().await;
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let application = Application::default();
    let sink_url = application.start().await;
    let dir = std::env::temp_dir().join(format!("gemhook-traces-{}", db.name));
    let mut env = traced_env(&db, &dir, &sink_url, &endpoint);
    env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    gemhook_ok(&borrowed(&env), &["migrate"]);
    let (mut receiver, address) = Gemhook::start(&["serve", "--role", "receiver"], &borrowed(&env));
    env.push(("OTEL_SERVICE_NAME".into(), "gemhook-worker".into()));
    let (mut worker, _) = Gemhook::start(&["serve", "--role", "worker"], &borrowed(&env));
    let id = unique_id();
    let body = failed_batch("traced");
    let timestamp = unix_now();
    let signed = signature(SECRET, &id, timestamp, body.as_bytes());

    let answer = reqwest::Client::new()
        .post(format!("{address}/webhooks/gemini"))
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", &signed)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let sent = application.first_traceparent().await;
    let delivery = collector.span("delivery", &id).await;
    let job = collector.span("job", &id).await;
    let handoff = collector.span("delivery_attempt", &id).await;
    for process in [&mut receiver, &mut worker] {
        process.terminate();
        assert!(process.wait_success());
    }
    let _ = std::fs::remove_dir_all(&dir);

    // A new trace (the request carried none), exported by the receiver under the default name.
    assert_eq!(delivery.parent_span_id, "", "{delivery:?}");
    assert_eq!(delivery.service, "gemhook");
    // The worker process continued it from the stored context: parent and link.
    assert_eq!(job.service, "gemhook-worker");
    assert_eq!(job.trace_id, delivery.trace_id, "{job:?}");
    assert_eq!(job.parent_span_id, delivery.span_id, "{job:?}");
    assert_eq!(
        job.links,
        [(delivery.trace_id.clone(), delivery.span_id.clone())]
    );
    // So did its dispatcher, whose span is what the sink's `traceparent` names.
    assert_eq!(handoff.trace_id, delivery.trace_id, "{handoff:?}");
    assert_eq!(handoff.parent_span_id, delivery.span_id, "{handoff:?}");
    assert_eq!(
        sent,
        Some(format!("00-{}-{}-01", delivery.trace_id, handoff.span_id))
    );
    // Nothing secret went out with the spans.
    let key = SECRET.trim_start_matches("whsec_");
    let signature_value = signed.trim_start_matches("v1,");
    for exported in collector.bodies.lock().unwrap().iter() {
        let raw = String::from_utf8_lossy(exported);
        assert!(
            !raw.contains(signature_value) && !raw.contains(key),
            "{raw}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_carrying_a_traceparent_continues_the_callers_trace_and_shutdown_exports_it() {
    // SQLite: the stored context round-trips through the embedded database too.
    let db = BACKEND.scope(Backend::Sqlite, TestDatabase::create()).await;
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let application = Application::default();
    let sink_url = application.start().await;
    let dir = std::env::temp_dir().join(format!("gemhook-traces-{}", db.name));
    let mut env = traced_env(&db, &dir, &sink_url, &endpoint);
    // Longer than the test: the spans can only arrive by the flush at shutdown.
    env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into()));
    let (mut gemhook, address) = Gemhook::serve(&borrowed(&env));
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let id = unique_id();

    let url = format!("{address}/webhooks/gemini");
    let answer = signed_request(&reqwest::Client::new(), &url, &id, failed_batch("caller"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let sent = application.first_traceparent().await;
    assert!(collector.spans().is_empty(), "exported before shutdown");
    gemhook.terminate();
    assert!(gemhook.wait_success());
    let delivery = collector.span("delivery", &id).await;
    let job = collector.span("job", &id).await;
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(delivery.trace_id, caller_trace);
    assert_eq!(delivery.parent_span_id, caller_span);
    assert_eq!(job.trace_id, caller_trace);
    assert_eq!(job.parent_span_id, delivery.span_id);
    assert!(
        sent.as_deref()
            .is_some_and(|tp| tp.starts_with(&format!("00-{caller_trace}-"))),
        "{sent:?}"
    );
}
