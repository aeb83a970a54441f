//! The HTTP side: thin axum handlers over `verify` and `store`.

mod error;
mod health;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use error::ApiError;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::jwks::JwksCache;
use crate::store::Store;
use crate::verify::{Keys, Policy};

/// The path Gemini is configured to call.
pub const WEBHOOK_PATH: &str = "/webhooks/gemini";

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    store: Store,
    keys: Keys,
    policy: Policy,
    /// Google's published keys, when dynamic webhooks are on.
    jwks: Option<JwksCache>,
    max_body_bytes: usize,
    metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(
        store: Store,
        keys: Keys,
        policy: Policy,
        jwks: Option<JwksCache>,
        max_body_bytes: usize,
        metrics: PrometheusHandle,
    ) -> Self {
        AppState {
            inner: Arc::new(Shared {
                store,
                keys,
                policy,
                jwks,
                max_body_bytes,
                metrics,
            }),
        }
    }
}

/// The main router: webhooks (when `receive` is set), health endpoints (always) and
/// `/metrics` (unless it has a listener of its own).
pub fn router(state: AppState, receive: bool, serve_metrics: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if receive {
        router = router.route(WEBHOOK_PATH, post(webhook::receive));
    }
    if serve_metrics {
        router = router.route("/metrics", get(health::metrics));
    }
    router.with_state(state)
}

/// `/metrics` alone, for a separate listener (`metrics_listen`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
