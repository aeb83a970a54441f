//! The HTTP side: thin axum handlers over `verify` and `store`.

mod error;
mod health;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use error::ApiError;

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
}

impl AppState {
    pub fn new(
        store: Store,
        keys: Keys,
        policy: Policy,
        jwks: Option<JwksCache>,
        max_body_bytes: usize,
    ) -> Self {
        AppState {
            inner: Arc::new(Shared {
                store,
                keys,
                policy,
                jwks,
                max_body_bytes,
            }),
        }
    }
}

/// The full router: webhooks (when `receive` is set) and health endpoints (always).
pub fn router(state: AppState, receive: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if receive {
        router = router.route(WEBHOOK_PATH, post(webhook::receive));
    }
    router.with_state(state)
}
