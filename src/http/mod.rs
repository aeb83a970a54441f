//! The HTTP side: thin axum handlers over `verify` and `store`.

mod error;
mod health;
mod serve;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub use error::ApiError;
pub use health::metrics_text;
pub use serve::{ConnectionLimits, serve};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

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
    limits: ReceiveLimits,
    /// Body bytes that may be held at once; a delivery reserves its size before reading.
    body_budget: Arc<Semaphore>,
    metrics: PrometheusHandle,
    /// The Gemini webhooks' states, when the watcher runs (shown by `/readyz`).
    webhook_watch: Option<crate::gemini::watch::WatchHandle>,
}

/// What bounds one delivery on the ack path, in size and in time.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLimits {
    /// Larger bodies are answered 413.
    pub max_body_bytes: usize,
    /// Bodies held at once across all requests (the body budget in the shared state).
    pub max_inflight_body_bytes: usize,
    /// A body that has not arrived whole by then is answered 408.
    pub body_read_timeout: Duration,
    /// The longest a verified delivery waits for its reservation and for the store before it is
    /// answered 503.
    pub ack_deadline: Duration,
}

impl AppState {
    pub fn new(
        store: Store,
        keys: Keys,
        policy: Policy,
        jwks: Option<JwksCache>,
        limits: ReceiveLimits,
        metrics: PrometheusHandle,
    ) -> Self {
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        let budget = limits.max_inflight_body_bytes.min(Semaphore::MAX_PERMITS);
        AppState {
            inner: Arc::new(Shared {
                store,
                keys,
                policy,
                jwks,
                limits,
                body_budget: Arc::new(Semaphore::new(budget)),
                metrics,
                webhook_watch: None,
            }),
        }
    }

    /// Shows the webhook watcher's status in `/readyz`. Call before the state is shared.
    pub fn with_webhook_watch(mut self, watch: crate::gemini::watch::WatchHandle) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(shared) => shared.webhook_watch = Some(watch),
            // Already shared: the handlers built so far would not see it either way.
            None => tracing::warn!("the webhook watcher was attached too late to show in /readyz"),
        }
        self
    }
}

/// The main router: webhooks (when `receive` is set) and health endpoints (always). `/metrics`
/// is not here: anyone who can reach Gemini's URL could read the queue's state (see `admin`).
pub fn router(state: AppState, receive: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if receive {
        router = router.route(WEBHOOK_PATH, post(webhook::receive));
    }
    router.with_state(state)
}
