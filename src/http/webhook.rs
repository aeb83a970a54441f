//! `POST /webhooks/gemini`: raw bytes in, verified, recorded with its job, then 200.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use serde_json::{Map, Value};
use tracing::{Instrument, field};

use super::{ApiError, AppState};
use crate::envelope;
use crate::jwks;
use crate::observe;
use crate::store::{NewEvent, Recorded, StoreError};
use crate::telemetry::{error_chain, traces};
use crate::verify::{self, Rejection, WebhookHeaders};

const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Headers kept with the event besides the three webhook headers (for support and forensics).
const KEPT_HEADERS: &[&str] = &[
    WEBHOOK_ID,
    WEBHOOK_TIMESTAMP,
    WEBHOOK_SIGNATURE,
    "content-type",
    "user-agent",
];

pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(
        "delivery",
        webhook_id = field::Empty,
        r#type = field::Empty,
        outcome = field::Empty,
        latency_ms = field::Empty,
    );
    // Before the span is first entered: its parent is fixed then.
    traces::continue_from_headers(&span, &headers);
    async move {
        let result = handle(&state, &headers, body).await;
        let span = tracing::Span::current();
        span.record("latency_ms", started.elapsed().as_secs_f64() * 1000.0);
        match result {
            Ok(recorded) => {
                let (outcome, body) = match recorded {
                    Recorded::Accepted { .. } => ("accepted", r#"{"status":"accepted"}"#),
                    Recorded::Duplicate => ("duplicate", r#"{"status":"duplicate"}"#),
                };
                span.record("outcome", outcome);
                observe::delivery(outcome, started.elapsed());
                tracing::info!("delivery {outcome}");
                let json = HeaderValue::from_static("application/json");
                ([(header::CONTENT_TYPE, json)], body).into_response()
            }
            Err(error) => {
                span.record("outcome", error.code());
                observe::delivery(error.code(), started.elapsed());
                match &error {
                    ApiError::Unavailable(cause) => {
                        tracing::error!(error = %error_chain(cause), "delivery not stored");
                    }
                    other => tracing::info!(reason = %other, "delivery rejected"),
                }
                error.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn handle(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Recorded, ApiError> {
    let shared = &state.inner;
    let limits = &shared.limits;
    // Refused before the body is read: cheap, and a proxy in front may have read the other copy.
    for name in [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(Rejection::InvalidHeader {
                header: name,
                why: "repeated",
            }
            .into());
        }
    }
    let declared = declared_length(headers)?;
    if declared.is_some_and(|len| len > limits.max_body_bytes) {
        return Err(ApiError::PayloadTooLarge);
    }
    // Reserve the body's size (the limit when undeclared) before reading it, so that a flood
    // of large bodies waits here instead of filling memory. The reservation lives until the
    // answer: the body is held until its batch has committed.
    let reserve = declared.unwrap_or(limits.max_body_bytes).max(1);
    let permits = u32::try_from(reserve).map_err(|_| ApiError::PayloadTooLarge)?;
    let _reservation = tokio::time::timeout(
        limits.ack_deadline,
        shared.body_budget.clone().acquire_many_owned(permits),
    )
    .await
    .map_err(|_| ApiError::Overloaded)?
    .map_err(|_| ApiError::Overloaded)?;
    let body = tokio::time::timeout(
        limits.body_read_timeout,
        read_body(body, declared, limits.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout)??;

    let webhook_headers = WebhookHeaders {
        id: header_text(headers, WEBHOOK_ID)?,
        timestamp: header_text(headers, WEBHOOK_TIMESTAMP)?,
        signature: header_text(headers, WEBHOOK_SIGNATURE)?,
    };
    let checked = verify::check_headers(&webhook_headers)?;
    tracing::Span::current().record("webhook_id", checked.id);

    let (verified, _) = jwks::verify_refetching(
        shared.jwks.as_ref(),
        &checked,
        &body,
        &shared.keys,
        &shared.policy,
        unix_now(),
    )
    .await;
    let verified = verified?;
    observe::verified(verified.scheme.as_str());

    let envelope = envelope::parse(&body);
    if let Some(event_type) = &envelope.event_type {
        tracing::Span::current().record("type", event_type.as_str());
    }
    let kept_headers = kept_headers(headers);
    // This span's context, stored with the event: the job's and the hand-off's spans continue
    // its trace from it, in whichever process claims them.
    let trace_context = traces::traceparent(&tracing::Span::current());
    let event = NewEvent {
        webhook_id: checked.id,
        webhook_timestamp: verified.timestamp,
        envelope: &envelope,
        scheme: verified.scheme,
        headers: &kept_headers,
        body: body.clone(),
        trace_context: trace_context.as_deref(),
    };
    // The deadline bounds what the database can make Gemini wait (a frozen server, a full
    // pool, a queue behind the group writer). A 503 after it is safe even if the commit then
    // happens: Gemini's retry is acknowledged as a duplicate.
    match tokio::time::timeout(limits.ack_deadline, shared.store.record_delivery(&event)).await {
        Ok(recorded) => recorded.map_err(ApiError::Unavailable),
        Err(_) => Err(ApiError::Unavailable(StoreError::Deadline(
            limits.ack_deadline,
        ))),
    }
}

/// The declared Content-Length; one over `limit` is refused by [`read_body`]'s caller before a
/// byte is read. An unparseable one is a malformed request.
fn declared_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|len| Some(usize::try_from(len).unwrap_or(usize::MAX)))
            .ok_or(ApiError::UnreadableBody),
    }
}

/// Reads the whole body, refusing more than `limit` bytes; a chunked body is cut off as it
/// crosses the limit. Into one buffer sized from the declared length, each chunk copied once
/// and dropped: collecting the chunks first and joining them (what `to_bytes` does) briefly
/// holds every body twice, which under a flood of large bodies doubles the peak.
async fn read_body(body: Body, declared: Option<usize>, limit: usize) -> Result<Bytes, ApiError> {
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::UnreadableBody)?;
        if buffer.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// A header as text. Absent → `None`; present but not visible ASCII → `invalid_header`.
/// Names are case-insensitive: `HeaderMap` stores them lowercased.
fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, Rejection> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| Rejection::InvalidHeader {
                header: name,
                why: "not visible ASCII",
            }),
    }
}

fn kept_headers(headers: &HeaderMap) -> Value {
    let mut kept = Map::new();
    for name in KEPT_HEADERS {
        if let Some(value) = headers.get(*name).and_then(|v| v.to_str().ok()) {
            kept.insert((*name).to_owned(), Value::String(value.to_owned()));
        }
    }
    Value::Object(kept)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
