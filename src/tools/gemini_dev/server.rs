//! The stand-in's HTTP side: the routes the worker calls, with Gemini's key check and errors.
//!
//! | route                                              | answer                                   |
//! |----------------------------------------------------|------------------------------------------|
//! | `GET /download/v1beta/files/<id>:download?alt=media` | batch results (JSONL); a video redirects to its media URL |
//! | `GET /v1beta/files/<id>`                           | the file's metadata                      |
//! | `GET /v1beta/files/<id>:download?alt=media`        | a redirect to the download above (the URI a Veo operation names) |
//! | `GET /media/files/<id>?sig=...`                    | the video bytes (a signed URL: no key)   |
//! | `GET /v1beta/batches/<id>`                         | the batch operation                      |
//! | `GET /v1beta/models/<model>/operations/<id>`       | the video operation                      |
//! | `GET /v1beta/interactions/<id>`                    | the interaction                          |
//!
//! Every route but the media one wants the key, in `x-goog-api-key` or `?key=` as Google
//! accepts it: without one the answer is Google's 403, with a wrong one its 400
//! `API_KEY_INVALID` (what the real API answers; both dead-letter a job at once). Unknown
//! resources and paths are Google-shaped 404s.
//!
//! The video redirect is there because a real video download redirects too, and a dev run
//! should exercise the worker's redirect handling (same origin here, so it is followed with
//! the key; in production the storage host must be in `GEMHOOK_ALLOWED_HOSTS`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use super::bodies;
use super::resources::{self, DevFile};
use crate::config::Redacted;
use crate::gemini::pointer::is_safe_id;

const API_KEY_HEADER: &str = "x-goog-api-key";
const DOWNLOAD_SUFFIX: &str = ":download";

/// How the stand-in answers.
#[derive(Debug, Clone)]
pub struct StandInSettings {
    /// The key callers must present. Held redacted: the development key is not a secret, but
    /// a real key given here (`--gemini-only` reads `GEMINI_API_KEY`) must not be printed.
    pub api_key: Redacted,
    /// When set, every batch results file is this many generated lines of
    /// [`bodies::SIZED_LINE_BYTES`] (for benchmarks); otherwise the usual small file.
    pub batch_lines: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    #[error("the Gemini stand-in listens on loopback addresses only, not {addr}")]
    NotLoopback { addr: SocketAddr },
    #[error("the Gemini stand-in cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct Shared {
    api_key: Redacted,
    batch_lines: Option<u64>,
    /// `http://127.0.0.1:<port>`: what the stand-in's own URLs start with.
    base_url: String,
}

type AppState = Arc<Shared>;

/// The stand-in, bound and not yet serving: `bind` → `url` → `run_until_stopped`, like
/// [`crate::startup::Application`], so callers can read a port-0 address before serving.
pub struct GeminiStandIn {
    listener: TcpListener,
    router: Router,
    url: String,
}

impl GeminiStandIn {
    pub async fn bind(
        addr: SocketAddr,
        settings: StandInSettings,
    ) -> Result<GeminiStandIn, StandInError> {
        // It serves a well-known key and fake data: nothing off this machine should reach it.
        if !addr.ip().is_loopback() {
            return Err(StandInError::NotLoopback { addr });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StandInError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| StandInError::Bind { addr, source })?;
        let url = format!("http://{local}");
        let state = Arc::new(Shared {
            api_key: settings.api_key,
            batch_lines: settings.batch_lines,
            base_url: url.clone(),
        });
        Ok(GeminiStandIn {
            listener,
            router: router(state),
            url,
        })
    }

    /// `http://127.0.0.1:<port>`: the worker's `gemini_base_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "gemini stand-in listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/download/v1beta/files/{name}", get(download))
        .route("/v1beta/files/{name}", get(file))
        .route("/v1beta/batches/{id}", get(batch))
        .route("/v1beta/models/{model}/operations/{id}", get(operation))
        .route("/v1beta/interactions/{id}", get(interaction))
        // Only on matched routes: an unknown path is a 404 whatever key it carries.
        .route_layer(middleware::from_fn_with_state(state.clone(), check_key));
    Router::new()
        .route("/media/files/{id}", get(media))
        .merge(api)
        .fallback(|| async { not_found() })
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One line per request: method, path (never the query, which may carry `?key=`) and status.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(%method, %path, status = response.status().as_u16(), "gemini stand-in answered");
    response
}

async fn check_key(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("key").cloned());
    match given {
        None => json_response(StatusCode::FORBIDDEN, &bodies::api_key_missing()),
        Some(key) if !same_key(&key, state.api_key.expose()) => {
            json_response(StatusCode::BAD_REQUEST, &bodies::api_key_invalid())
        }
        Some(_) => next.run(request).await,
    }
}

/// Compared in constant time, out of habit: this is a key check like any other.
fn same_key(given: &str, expected: &str) -> bool {
    Sha256::digest(given)
        .as_slice()
        .ct_eq(Sha256::digest(expected).as_slice())
        .into()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    json_response(code, &bodies::google_error(code.as_u16(), message))
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, bodies::default_message(404))
}

/// The id of a `<id>:download` path segment, when it is one and safe.
fn download_id(name: &str) -> Option<&str> {
    name.strip_suffix(DOWNLOAD_SUFFIX)
        .filter(|id| is_safe_id(id))
}

fn wants_media(query: &HashMap<String, String>) -> bool {
    query.get("alt").map(String::as_str) == Some("media")
}

/// Google's download endpoint does not document its answer without `alt=media`; a 400 that
/// says what is missing is the most useful one for a stand-in.
fn media_required() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "Downloads need the query parameter alt=media.",
    )
}

async fn download(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = download_id(&name) else {
        return not_found();
    };
    if !wants_media(&query) {
        return media_required();
    }
    match resources::file(id) {
        None => not_found(),
        Some(DevFile::BatchResults { batch }) => batch_results(&state, batch),
        Some(DevFile::Video { .. }) => {
            let location = format!("/media/files/{id}?sig={}", bodies::media_signature(id));
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
    }
}

fn batch_results(state: &Shared, batch: &str) -> Response {
    let mime = [(header::CONTENT_TYPE, "application/jsonl")];
    match state.batch_lines {
        None => (StatusCode::OK, mime, bodies::batch_results(batch)).into_response(),
        Some(lines) => {
            let mut response = (
                StatusCode::OK,
                mime,
                Body::from_stream(bodies::sized_batch_results(batch, lines)),
            )
                .into_response();
            // Known in advance (fixed-length lines), so sent as Google sends it.
            response.headers_mut().insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(bodies::sized_batch_results_len(lines)),
            );
            response
        }
    }
}

async fn media(Path(id): Path<String>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some(DevFile::Video { operation }) = resources::file(&id) else {
        return not_found();
    };
    if query.get("sig") != Some(&bodies::media_signature(&id)) {
        return error(
            StatusCode::FORBIDDEN,
            "The signature of this media URL is missing or invalid.",
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "video/mp4")],
        bodies::video(operation),
    )
        .into_response()
}

async fn file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if name.ends_with(DOWNLOAD_SUFFIX) {
        // The URI a Veo operation names: Google redirects it to the download endpoint.
        let Some(id) = download_id(&name) else {
            return not_found();
        };
        if !wants_media(&query) {
            return media_required();
        }
        if resources::file(id).is_none() {
            return not_found();
        }
        let location = format!("/download/v1beta/files/{id}{DOWNLOAD_SUFFIX}?alt=media");
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    let Some(found) = Some(name.as_str())
        .filter(|id| is_safe_id(id))
        .and_then(resources::file)
    else {
        return not_found();
    };
    let (size, digest) = match (found, state.batch_lines) {
        (DevFile::BatchResults { .. }, Some(lines)) => {
            (bodies::sized_batch_results_len(lines), None)
        }
        (DevFile::BatchResults { batch }, None) => {
            let body = bodies::batch_results(batch);
            (body.len() as u64, Some(Sha256::digest(&body)))
        }
        (DevFile::Video { operation }, _) => {
            let body = bodies::video(operation);
            (body.len() as u64, Some(Sha256::digest(&body)))
        }
    };
    let metadata = bodies::file_metadata(
        &name,
        found.mime_type(),
        size,
        digest.as_ref().map(|d| d.as_slice()),
        &state.base_url,
    );
    json_response(StatusCode::OK, &metadata)
}

async fn batch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(batch_state) = Some(id.as_str())
        .filter(|id| is_safe_id(id))
        .and_then(resources::batch_state)
    else {
        return not_found();
    };
    let requests = state.batch_lines.unwrap_or(bodies::BATCH_RESULT_LINES);
    json_response(
        StatusCode::OK,
        &bodies::batch_resource(&id, batch_state, requests),
    )
}

async fn operation(
    State(state): State<AppState>,
    Path((model, id)): Path<(String, String)>,
) -> Response {
    if !is_safe_id(&model) || !is_safe_id(&id) || !resources::operation_exists(&id) {
        return not_found();
    }
    json_response(
        StatusCode::OK,
        &bodies::operation(&model, &id, &state.base_url),
    )
}

async fn interaction(Path(id): Path<String>) -> Response {
    let Some(status) = Some(id.as_str())
        .filter(|id| is_safe_id(id))
        .and_then(resources::interaction_status)
    else {
        return not_found();
    };
    json_response(StatusCode::OK, &bodies::interaction(&id, status))
}
