//! The console and the admin API: their own listener (`admin_listen`, loopback by default),
//! never the public address Gemini calls. Pages are server-rendered ([`pages`]), the API is
//! JSON ([`api`]); both read and act through [`crate::inspect`] and the store, as the CLI does.
//! `/metrics` is served here too, under the same rule ([`auth`]).
//!
//! Beside the core: it depends on `store`, `inspect` and `observe`; nothing in the core
//! depends on it.

pub mod api;
pub mod auth;
mod chart;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

pub use auth::{AdminAuth, AdminConfigError, Principal};

use crate::gemini::watch::WatchHandle;
use crate::http::AppState;
use crate::store::Store;
use api::ApiProblem;

/// The largest form the console posts (a CSRF token and a filter or two).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// What the console's handlers share.
#[derive(Clone)]
pub struct AdminState {
    store: Store,
    auth: Arc<AdminAuth>,
    /// The receiving side's state, whose metrics `/metrics` renders.
    metrics: Option<AppState>,
    watch: Option<WatchHandle>,
}

impl AdminState {
    pub fn new(
        store: Store,
        auth: AdminAuth,
        metrics: Option<AppState>,
        watch: Option<WatchHandle>,
    ) -> AdminState {
        AdminState {
            store,
            auth: Arc::new(auth),
            metrics,
            watch,
        }
    }
}

/// The console's router: pages, the API and (when given a handle) `/metrics`.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/events", get(api::list_events))
        .route("/events/{webhook_id}", get(api::show_event))
        .route("/events/{webhook_id}/replay", post(api::replay_event))
        .route("/jobs", get(api::list_jobs))
        .route("/jobs/retry-dead-letters", post(api::retry_dead_jobs))
        .route("/jobs/{id}", get(api::show_job))
        .route("/jobs/{id}/retry", post(api::retry_job))
        .route("/jobs/{id}/cancel", post(api::cancel_job))
        .route("/deliveries", get(api::list_deliveries))
        .route(
            "/deliveries/retry-dead-letters",
            post(api::retry_dead_deliveries),
        )
        .route("/deliveries/{id}", get(api::show_delivery))
        .route("/deliveries/{id}/retry", post(api::retry_delivery))
        .route("/stats", get(api::stats))
        .route("/openapi.json", get(api::openapi))
        .fallback(|| async {
            ApiProblem::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        });
    Router::new()
        .nest("/api/v1", api)
        .merge(pages::routes())
        .route("/metrics", get(metrics_only))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A router serving only `/metrics`, under the console's rule, for `metrics_listen`.
pub fn metrics_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_only))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn metrics_only(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(app) => crate::http::metrics_text(app).await.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Paths anyone may fetch: the login form, the stylesheet, the API's description.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/login" | "/assets/console.css" | "/api/v1/openapi.json"
    )
}

/// Paths answered as an API (JSON errors), not as pages (a redirect to the login form).
fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Authentication and CSRF for every request: see [`auth`] for the rules.
async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let headers = request.headers();
    let host = header_str(headers, header::HOST).map(str::to_owned);
    let now = chrono::Utc::now().timestamp();
    let changes_state = request.method() != Method::GET && request.method() != Method::HEAD;
    if changes_state
        && !auth::same_origin(
            header_str(headers, header::ORIGIN),
            headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
            host.as_deref(),
        )
    {
        return refuse(&path, auth::Refused::Csrf);
    }
    if is_public(&path) {
        // The login form still needs a loopback host when there is no token (nothing to log
        // in to then, but the rule is the same everywhere).
        if !state.auth.has_token() && !host.as_deref().is_some_and(auth::is_loopback_host) {
            return refuse(&path, auth::Refused::NotLoopbackHost);
        }
        return next.run(request).await;
    }
    let session = header_str(headers, header::COOKIE)
        .and_then(|cookies| auth::cookie(cookies, auth::SESSION_COOKIE))
        .map(str::to_owned);
    let principal = match state.auth.authenticate(
        header_str(headers, header::AUTHORIZATION),
        session.as_deref(),
        host.as_deref(),
        now,
    ) {
        Ok(principal) => principal,
        Err(refused) => return refuse(&path, refused),
    };
    let mut request = request;
    if changes_state && principal.is_ambient() {
        request = match csrf_checked(&state.auth, &principal, &path, request).await {
            Ok(request) => request,
            Err(refused) => return refuse(&path, refused),
        };
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// A state change sent with ambient credentials, checked: the API's must carry a JSON body;
/// a page's form must carry the session's CSRF token (the body is read here and handed on).
async fn csrf_checked(
    auth: &AdminAuth,
    principal: &Principal,
    path: &str,
    request: Request,
) -> Result<Request, auth::Refused> {
    let content_type = header_str(request.headers(), header::CONTENT_TYPE).unwrap_or("");
    if is_api(path) {
        return if content_type.starts_with("application/json") {
            Ok(request)
        } else {
            Err(auth::Refused::Csrf)
        };
    }
    let from_header = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| auth::Refused::Csrf)?;
    let offered = from_header.or_else(|| {
        url::form_urlencoded::parse(&bytes)
            .find(|(key, _)| key == auth::CSRF_FIELD)
            .map(|(_, value)| value.into_owned())
    });
    match offered {
        Some(token) if auth.csrf_matches(principal, &token) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(auth::Refused::Csrf),
    }
}

fn refuse(path: &str, refused: auth::Refused) -> Response {
    let status = match refused {
        auth::Refused::Unauthenticated => StatusCode::UNAUTHORIZED,
        auth::Refused::NotLoopbackHost | auth::Refused::Csrf => StatusCode::FORBIDDEN,
    };
    if is_api(path) {
        let mut response =
            ApiProblem::new(status, refused.code(), refused.to_string()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        return response;
    }
    if refused == auth::Refused::Unauthenticated {
        return Redirect::to("/login").into_response();
    }
    (status, pages::refused(refused)).into_response()
}
