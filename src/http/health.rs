//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AppState;
use crate::observe;
use crate::telemetry::error_chain;

/// 200 while the process runs: a liveness probe must not depend on the database, or a database
/// outage would get every replica restarted.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the database answers, accepts writes and every migration is applied, else 503. The body also
/// shows the JWKS and the backlog, which do not decide readiness: a replica that cannot reach
/// Google or has a backlog must still take deliveries.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let shared = &state.inner;
    let readiness = shared.store.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let backlog_age_secs = if readiness.is_ready() {
        shared
            .store
            .queue_stats()
            .await
            .ok()
            .map(|q| q.backlog_age_secs)
    } else {
        None
    };
    let jwks = shared.jwks.as_ref().map(|cache| {
        let jwks = cache.status();
        json!({
            "age_secs": jwks.age_secs,
            "last_error": jwks.last_error,
            "ed25519_keys": jwks.ed25519_keys,
            "rsa_keys": jwks.rsa_keys,
        })
    });
    // Shown, never decisive: a replica that cannot read Google's WebhookService still takes
    // deliveries.
    let gemini_webhooks = shared
        .webhook_watch
        .as_ref()
        .map(|watch| serde_json::to_value(watch.status()).unwrap_or(Value::Null));
    let body = json!({
        "status": if readiness.is_ready() { "ready" } else { "not_ready" },
        "database": readiness.database,
        "migrations_applied": readiness.migrations_applied,
        "writable": readiness.writable,
        "backlog_age_secs": backlog_age_secs,
        "jwks": jwks,
        "gemini_webhooks": gemini_webhooks,
    });
    (status, Json(body))
}

/// The Prometheus text exposition, served by the console's listener (or `metrics_listen`), never
/// on the public address. Queue gauges are read from the database at each scrape, so every
/// replica reports the shared queue.
pub async fn metrics_text(state: &AppState) -> impl IntoResponse + use<> {
    let shared = &state.inner;
    match shared.store.queue_stats().await {
        Ok(stats) => observe::queue_gauges(&stats.every_state(), stats.backlog_age_secs),
        Err(error) => tracing::warn!(error = %error_chain(&error), "queue gauges not refreshed"),
    }
    if let Some(jwks) = &shared.jwks {
        observe::jwks_age(jwks.status().age_secs);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}
