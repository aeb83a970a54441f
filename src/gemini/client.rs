//! The Gemini REST client: file downloads, URL downloads and interactions, with the API key.
//!
//! Security rests on one check, made before every request including each redirect hop: the
//! target's origin must be the base URL's or an allowed one ([`AllowedOrigins`]). reqwest's
//! automatic redirects are off because they would carry our headers to wherever a `Location`
//! points; we follow up to [`MAX_REDIRECTS`] hops by hand and refuse a hop to any other origin
//! rather than follow it without the key, so that a misconfiguration shows up as an error
//! instead of a silent anonymous download.
//!
//! Errors never include the key, nor a URL's path or query (signed URLs carry tokens there):
//! only origins, status codes and a short, key-redacted excerpt of an error body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, TryStreamExt};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use serde_json::Value;
use url::Url;

use super::origin::{AllowedOrigins, ConfigError, display_origin};
use super::pointer::is_safe_id;
use crate::outbound;

/// Gemini's public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// Most redirect hops followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// Largest interaction body we read into memory. Interactions are JSON documents that may carry
/// inline media; anything beyond this is not something we should buffer.
pub const MAX_INTERACTION_BYTES: usize = 64 * 1024 * 1024;
/// How much of an error response's body is kept for the job's error message.
const ERROR_DETAIL_BYTES: usize = 512;
const API_KEY_HEADER: &str = "x-goog-api-key";

/// The Gemini API key: sent only to allowed hosts, shown nowhere.
pub type ApiKey = crate::redact::Redacted;

/// How to build a [`GeminiClient`].
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `GEMHOOK_GEMINI_BASE_URL`, default [`DEFAULT_BASE_URL`]. A path prefix is kept.
    pub base_url: String,
    pub api_key: ApiKey,
    /// `GEMHOOK_ALLOWED_HOSTS`: `host`, `host:port` or `http(s)://host:port` entries.
    pub allowed_hosts: Vec<String>,
    pub connect_timeout: Duration,
    /// Longest wait for any single read (headers or a body chunk); a download as a whole may
    /// take as long as it needs.
    pub read_timeout: Duration,
}

/// A request that failed. [`GeminiError::is_retryable`] says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum GeminiError {
    #[error(
        "refusing to send the API key to {origin}: neither the Gemini base URL nor an allowed host"
    )]
    HostNotAllowed { origin: String },
    #[error("refusing a redirect to {origin}: neither the Gemini base URL nor an allowed host")]
    RedirectNotAllowed { origin: String },
    #[error("more than {limit} redirects")]
    TooManyRedirects { limit: usize },
    #[error("a redirect from {origin} has no usable Location header")]
    BadRedirect { origin: String },
    #[error("the pointer cannot be followed: {reason}")]
    BadPointer { reason: &'static str },
    #[error("{origin} answered {status}{}", detail_suffix(.detail))]
    Status {
        status: StatusCode,
        origin: String,
        retry_after: Option<Duration>,
        /// The start of the response body, with the key redacted.
        detail: String,
    },
    #[error("timed out talking to {origin}")]
    Timeout {
        origin: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("could not connect to {origin}")]
    Connect {
        origin: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the request to {origin} failed")]
    Transport {
        origin: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the response body from {origin} was cut off")]
    Body {
        origin: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the interaction from {origin} is not JSON")]
    InvalidJson {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the response from {origin} is larger than {limit} bytes")]
    TooLarge { origin: String, limit: usize },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl GeminiError {
    /// Transient failures (5xx, 408, 429, timeouts, connection and body errors, a garbled
    /// body) may succeed later; everything else (other 4xx, a host or redirect not allowed, a
    /// bad pointer, an oversized body) will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            GeminiError::Status { status, .. } => outbound::is_retryable(*status),
            // A 200 whose body is not JSON is most likely a proxy's page or a cut-off body.
            GeminiError::Timeout { .. }
            | GeminiError::Connect { .. }
            | GeminiError::Transport { .. }
            | GeminiError::Body { .. }
            | GeminiError::InvalidJson { .. } => true,
            GeminiError::HostNotAllowed { .. }
            | GeminiError::RedirectNotAllowed { .. }
            | GeminiError::TooManyRedirects { .. }
            | GeminiError::BadRedirect { .. }
            | GeminiError::BadPointer { .. }
            | GeminiError::TooLarge { .. } => false,
        }
    }

    /// The server's `Retry-After` on a 429 or 5xx, if it sent a readable one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GeminiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GeminiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A successful download whose body has not been read yet.
#[derive(Debug)]
pub struct Download {
    response: reqwest::Response,
    origin: String,
}

impl Download {
    /// `Content-Length`, when the server sent one.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    pub fn content_type(&self) -> Option<&str> {
        self.response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
    }

    /// The origin that finally served the body (after redirects).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The body as it arrives, chunk by chunk: nothing is buffered beyond what the caller holds.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, GeminiError>> + Send + 'static {
        let origin = self.origin;
        self.response
            .bytes_stream()
            .map_err(move |source| body_error(&origin, source))
    }
}

/// An interaction as fetched.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// The interaction's `status` (`completed`, `requires_action`, …), if present.
    pub status: Option<String>,
    pub json: Value,
    /// The body byte for byte, for storing as received.
    pub raw: Bytes,
}

/// What the API answered to [`GeminiClient::call`]: any status, with its whole body.
#[derive(Debug, Clone)]
pub struct ApiAnswer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The client. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct GeminiClient {
    http: reqwest::Client,
    /// The base URL as text without a trailing slash, so paths append cleanly.
    base: String,
    allowed: AllowedOrigins,
    api_key: ApiKey,
}

impl GeminiClient {
    pub fn new(settings: ClientSettings) -> Result<GeminiClient, ConfigError> {
        let base_url =
            Url::parse(settings.base_url.trim()).map_err(|err| ConfigError::InvalidBaseUrl {
                reason: err.to_string(),
            })?;
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(ConfigError::InvalidBaseUrl {
                reason: "a query or fragment cannot be extended with API paths".into(),
            });
        }
        let allowed = AllowedOrigins::new(&base_url, &settings.allowed_hosts)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .user_agent(concat!("gemhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ConfigError::HttpClient)?;
        Ok(GeminiClient {
            http,
            base: base_url.as_str().trim_end_matches('/').to_owned(),
            allowed,
            api_key: settings.api_key,
        })
    }

    /// The origins the key may be sent to; pointers are planned against the same set.
    pub fn allowed_origins(&self) -> &AllowedOrigins {
        &self.allowed
    }

    /// `GET {base}/download/v1beta/files/{file_id}:download?alt=media`.
    pub async fn download_file(&self, file_id: &str) -> Result<Download, GeminiError> {
        let file_id = checked_id(file_id)?;
        let url = self.api_url(&format!(
            "/download/v1beta/files/{file_id}:download?alt=media"
        ))?;
        self.download(url).await
    }

    /// GET a URL on an allowed origin (a video URI, say). Any other origin is refused before a
    /// connection is made.
    pub async fn download_url(&self, url: &Url) -> Result<Download, GeminiError> {
        self.download(url.clone()).await
    }

    /// `GET {base}/v1beta/interactions/{id}` (an `interactions/` prefix is accepted).
    pub async fn get_interaction(&self, id: &str) -> Result<Interaction, GeminiError> {
        let id = checked_id(id.strip_prefix("interactions/").unwrap_or(id))?;
        let url = self.api_url(&format!("/v1beta/interactions/{id}"))?;
        let (json, raw) = self.get_json(url).await?;
        let status = json
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Interaction { status, json, raw })
    }

    /// `GET {base}/v1beta/batches/{id}` (a `batches/` prefix is accepted): the batch operation,
    /// for a `batch.succeeded` that names no results file.
    pub async fn get_batch(&self, id: &str) -> Result<Value, GeminiError> {
        let id = checked_id(id.strip_prefix("batches/").unwrap_or(id))?;
        let url = self.api_url(&format!("/v1beta/batches/{id}"))?;
        Ok(self.get_json(url).await?.0)
    }

    /// `{method} {base}{path_and_query}` with the key and an optional JSON body, answered
    /// whatever its status: the WebhookService's callers read Google's error shape themselves.
    /// Redirects are not followed: the API answers in place, and a write must not be replayed
    /// at another address. The path is the caller's, built from checked ids only.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<ApiAnswer, GeminiError> {
        let url = self.api_url(path_and_query)?;
        let origin = display_origin(&url);
        if !self.allowed.is_base(&url) {
            return Err(GeminiError::HostNotAllowed { origin });
        }
        let mut request = self
            .http
            .request(method, url)
            .header(API_KEY_HEADER, self.key_header()?);
        request = match body {
            Some(body) => request.json(body),
            // An explicit empty body, so a POST carries `content-length: 0` as Google's front
            // ends expect of a call with no request message.
            None => request.body(Vec::new()),
        };
        let mut response = request
            .send()
            .await
            .map_err(|source| request_error(&origin, source))?;
        let status = response.status();
        let body = read_limited(&mut response, &origin).await?;
        Ok(ApiAnswer { status, body })
    }

    /// A GET of a JSON document, following redirects within allowed origins.
    async fn get_json(&self, url: Url) -> Result<(Value, Bytes), GeminiError> {
        let (mut response, origin) = self.get_following_redirects(url).await?;
        let raw = read_limited(&mut response, &origin).await?;
        let json: Value =
            serde_json::from_slice(&raw).map_err(|source| GeminiError::InvalidJson {
                origin: origin.clone(),
                source,
            })?;
        Ok((json, raw))
    }

    fn key_header(&self) -> Result<HeaderValue, GeminiError> {
        let mut key =
            HeaderValue::from_str(self.api_key.expose()).map_err(|_| GeminiError::BadPointer {
                reason: "the API key is not a valid header value",
            })?;
        // Keeps the key out of any Debug output of the request's headers.
        key.set_sensitive(true);
        Ok(key)
    }

    async fn download(&self, url: Url) -> Result<Download, GeminiError> {
        let (response, origin) = self.get_following_redirects(url).await?;
        Ok(Download { response, origin })
    }

    fn api_url(&self, path: &str) -> Result<Url, GeminiError> {
        Url::parse(&format!("{}{path}", self.base)).map_err(|_| GeminiError::BadPointer {
            reason: "the request URL could not be built",
        })
    }

    /// GETs `url` with the key, following redirects within allowed origins. Returns a 2xx
    /// response and the origin that sent it.
    async fn get_following_redirects(
        &self,
        mut url: Url,
    ) -> Result<(reqwest::Response, String), GeminiError> {
        let key = self.key_header()?;
        for hop in 0..=MAX_REDIRECTS {
            let origin = display_origin(&url);
            // The one check that keeps the key home: before every request, redirects included.
            if !self.allowed.allows(&url) {
                return Err(if hop == 0 {
                    GeminiError::HostNotAllowed { origin }
                } else {
                    GeminiError::RedirectNotAllowed { origin }
                });
            }
            let response = self
                .http
                .get(url.clone())
                .header(API_KEY_HEADER, key.clone())
                .send()
                .await
                .map_err(|source| request_error(&origin, source))?;
            let status = response.status();
            if status.is_success() {
                return Ok((response, origin));
            }
            if is_followed_redirect(status) {
                let next = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|location| url.join(location).ok());
                url = next.ok_or(GeminiError::BadRedirect { origin })?;
                tracing::debug!(%status, to = %display_origin(&url), "following a redirect");
                continue;
            }
            return Err(self.status_error(response, origin).await);
        }
        Err(GeminiError::TooManyRedirects {
            limit: MAX_REDIRECTS,
        })
    }

    /// Builds the error for a non-2xx answer, reading a little of its body for the message.
    async fn status_error(&self, response: reqwest::Response, origin: String) -> GeminiError {
        let answer = outbound::read(response, ERROR_DETAIL_BYTES).await;
        GeminiError::Status {
            status: answer.status,
            origin,
            retry_after: answer.retry_after,
            detail: self.redact(&answer.excerpt),
        }
    }

    /// One line of text, without the key even if a server echoed it.
    pub fn redact(&self, text: &str) -> String {
        let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let key = self.api_key.expose();
        if key.is_empty() {
            one_line
        } else {
            one_line.replace(key, "<redacted>")
        }
    }
}

/// A JSON document's body, read whole up to [`MAX_INTERACTION_BYTES`].
async fn read_limited(
    response: &mut reqwest::Response,
    origin: &str,
) -> Result<Bytes, GeminiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| body_error(origin, source))?
    {
        if body.len() + chunk.len() > MAX_INTERACTION_BYTES {
            return Err(GeminiError::TooLarge {
                origin: origin.to_owned(),
                limit: MAX_INTERACTION_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn checked_id(id: &str) -> Result<&str, GeminiError> {
    if is_safe_id(id) {
        Ok(id)
    } else {
        Err(GeminiError::BadPointer {
            reason: "the id has characters that cannot be put in a request path",
        })
    }
}

/// The redirects that mean "GET this other URL instead". 300 and 304 are not among them.
fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// Classifies a failed send. The URL is dropped from reqwest's error: its query may carry a
/// signed token, and the origin is already in our message.
fn request_error(origin: &str, source: reqwest::Error) -> GeminiError {
    let origin = origin.to_owned();
    let source = source.without_url();
    if source.is_timeout() {
        GeminiError::Timeout { origin, source }
    } else if source.is_connect() {
        GeminiError::Connect { origin, source }
    } else {
        GeminiError::Transport { origin, source }
    }
}

fn body_error(origin: &str, source: reqwest::Error) -> GeminiError {
    let origin = origin.to_owned();
    let source = source.without_url();
    if source.is_timeout() {
        GeminiError::Timeout { origin, source }
    } else {
        GeminiError::Body { origin, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::Mutex;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use futures::StreamExt;

    const KEY: &str = "AIza-test-key-do-not-leak";

    /// A request as a test server saw it: its path and query, and the key it carried.
    type SeenRequest = (String, Option<String>);

    /// Everything a test server saw.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<SeenRequest>>>);

    impl Seen {
        fn record(&self, uri: &Uri, headers: &HeaderMap) {
            let key = headers
                .get(API_KEY_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            self.0.lock().unwrap().push((uri.to_string(), key));
        }

        fn requests(&self) -> Vec<SeenRequest> {
            self.0.lock().unwrap().clone()
        }
    }

    #[derive(Clone)]
    struct App {
        seen: Seen,
        /// Where `/redirect-away` points.
        elsewhere: Arc<Mutex<String>>,
    }

    async fn spawn(router: Router<App>) -> (SocketAddr, App) {
        let app = App {
            seen: Seen::default(),
            elsewhere: Arc::new(Mutex::new(String::new())),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = router.with_state(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (addr, app)
    }

    fn gemini_stand_in() -> Router<App> {
        async fn file(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            if headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) != Some(KEY) {
                return (StatusCode::UNAUTHORIZED, "no key").into_response();
            }
            "{\"key\":\"1\"}\n".into_response()
        }
        async fn interaction(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            r#"{"id":"v1_Chd1","status":"requires_action","steps":[]}"#.into_response()
        }
        async fn unavailable(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "7")],
                format!("overloaded; your key {KEY} is fine"),
            )
                .into_response()
        }
        async fn redirect_away(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            let target = app.elsewhere.lock().unwrap().clone();
            (StatusCode::FOUND, [(header::LOCATION, target)]).into_response()
        }
        async fn redirect_home(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(
                    header::LOCATION,
                    "/download/v1beta/files/f1:download?alt=media",
                )],
            )
                .into_response()
        }
        async fn redirect_loop(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            (StatusCode::FOUND, [(header::LOCATION, "/loop")]).into_response()
        }
        async fn slow(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late".into_response()
        }
        async fn stalls(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
                b"{\"key\":\"1\"}\n",
            ))])
            .chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Bytes::from_static(b"too late\n"))
            }));
            axum::body::Body::from_stream(chunks).into_response()
        }
        async fn throttled(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT")],
            )
                .into_response()
        }
        Router::new()
            .route("/download/v1beta/files/{name}", get(file))
            .route("/v1beta/interactions/{id}", get(interaction))
            .route("/unavailable", get(unavailable))
            .route("/throttled", get(throttled))
            .route("/redirect-away", get(redirect_away))
            .route("/redirect-home", get(redirect_home))
            .route("/loop", get(redirect_loop))
            .route("/slow", get(slow))
            .route("/stalls", get(stalls))
    }

    fn foreign_server() -> Router<App> {
        async fn anything(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
            app.seen.record(&uri, &headers);
            "foreign content".into_response()
        }
        Router::new().fallback(anything)
    }

    fn client(base: SocketAddr, allowed_hosts: &[String]) -> GeminiClient {
        GeminiClient::new(ClientSettings {
            base_url: format!("http://{base}"),
            api_key: ApiKey::new(KEY),
            allowed_hosts: allowed_hosts.to_vec(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_millis(300),
        })
        .unwrap()
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    async fn body_of(download: Download) -> Vec<u8> {
        download
            .into_stream()
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_file_download_sends_the_key_to_the_base_host() {
        let (gemini, app) = spawn(gemini_stand_in()).await;
        let download = client(gemini, &[]).download_file("f1").await.unwrap();
        assert_eq!(body_of(download).await, b"{\"key\":\"1\"}\n");
        assert_eq!(
            app.seen.requests(),
            [(
                "/download/v1beta/files/f1:download?alt=media".to_owned(),
                Some(KEY.to_owned())
            )]
        );
    }

    #[tokio::test]
    async fn an_interaction_is_returned_with_its_status_and_raw_body() {
        let (gemini, app) = spawn(gemini_stand_in()).await;
        let interaction = client(gemini, &[])
            .get_interaction("interactions/v1_Chd1")
            .await
            .unwrap();
        assert_eq!(interaction.status.as_deref(), Some("requires_action"));
        assert_eq!(interaction.json["id"], "v1_Chd1");
        assert!(interaction.raw.starts_with(b"{\"id\":\"v1_Chd1\""));
        assert_eq!(app.seen.requests()[0].0, "/v1beta/interactions/v1_Chd1");
    }

    #[tokio::test]
    async fn a_url_on_a_foreign_origin_is_refused_before_any_request() {
        let (gemini, _) = spawn(gemini_stand_in()).await;
        let (foreign, foreign_app) = spawn(foreign_server()).await;
        let err = client(gemini, &[])
            .download_url(&url(&format!("http://{foreign}/video.mp4")))
            .await
            .unwrap_err();
        assert!(matches!(err, GeminiError::HostNotAllowed { .. }), "{err:?}");
        assert!(!err.is_retryable());
        assert!(foreign_app.seen.requests().is_empty());
    }

    #[tokio::test]
    async fn a_url_on_an_allowed_origin_gets_the_key() {
        let (gemini, _) = spawn(gemini_stand_in()).await;
        let (other, other_app) = spawn(foreign_server()).await;
        let download = client(gemini, &[format!("http://{other}")])
            .download_url(&url(&format!("http://{other}/video.mp4")))
            .await
            .unwrap();
        assert_eq!(body_of(download).await, b"foreign content");
        assert_eq!(other_app.seen.requests()[0].1.as_deref(), Some(KEY));
    }

    #[tokio::test]
    async fn a_redirect_to_a_foreign_origin_is_refused_and_the_key_never_leaves() {
        let (gemini, app) = spawn(gemini_stand_in()).await;
        let (foreign, foreign_app) = spawn(foreign_server()).await;
        *app.elsewhere.lock().unwrap() = format!("http://{foreign}/collect");
        let err = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/redirect-away")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, GeminiError::RedirectNotAllowed { .. }),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert!(foreign_app.seen.requests().is_empty());
    }

    #[tokio::test]
    async fn a_redirect_within_the_base_origin_is_followed_with_the_key() {
        let (gemini, app) = spawn(gemini_stand_in()).await;
        let download = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/redirect-home")))
            .await
            .unwrap();
        assert_eq!(body_of(download).await, b"{\"key\":\"1\"}\n");
        let seen = app.seen.requests();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|(_, key)| key.as_deref() == Some(KEY)));
    }

    #[tokio::test]
    async fn a_redirect_loop_stops_after_five_hops() {
        let (gemini, app) = spawn(gemini_stand_in()).await;
        let err = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/loop")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, GeminiError::TooManyRedirects { limit: 5 }),
            "{err:?}"
        );
        assert_eq!(app.seen.requests().len(), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn a_503_is_retryable_with_its_retry_after_and_no_key_in_the_message() {
        let (gemini, _) = spawn(gemini_stand_in()).await;
        let err = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/unavailable")))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        let message = format!("{err} {err:?}");
        assert!(message.contains("overloaded"), "{message}");
        assert!(!message.contains(KEY), "{message}");
    }

    #[tokio::test]
    async fn a_429_with_a_past_http_date_means_retry_now() {
        let (gemini, _) = spawn(gemini_stand_in()).await;
        let err = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/throttled")))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn a_404_is_permanent() {
        let (gemini, _) = spawn(gemini_stand_in()).await;
        let err = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/no-such-thing")))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        assert!(!err.is_retryable());
        assert_eq!(err.retry_after(), None);
    }

    #[tokio::test]
    async fn a_read_timeout_waiting_for_headers_is_retryable() {
        let (gemini, _) = spawn(gemini_stand_in()).await;
        let err = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/slow")))
            .await
            .unwrap_err();
        assert!(matches!(err, GeminiError::Timeout { .. }), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn a_body_that_stalls_mid_download_ends_in_a_retryable_timeout() {
        let (gemini, _) = spawn(gemini_stand_in()).await;
        let download = client(gemini, &[])
            .download_url(&url(&format!("http://{gemini}/stalls")))
            .await
            .unwrap();
        let mut stream = Box::pin(download.into_stream());
        assert!(stream.next().await.unwrap().is_ok());
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, GeminiError::Timeout { .. }), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let err = client(closed, &[]).download_file("f1").await.unwrap_err();
        assert!(matches!(err, GeminiError::Connect { .. }), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn ids_that_would_change_the_request_path_are_refused() {
        let (gemini, app) = spawn(gemini_stand_in()).await;
        let client = client(gemini, &[]);
        for id in ["../v1beta/models", "a/b", "a?b", ""] {
            let err = client.download_file(id).await.unwrap_err();
            assert!(matches!(err, GeminiError::BadPointer { .. }), "{id}");
            let err = client.get_interaction(id).await.unwrap_err();
            assert!(matches!(err, GeminiError::BadPointer { .. }), "{id}");
        }
        assert!(app.seen.requests().is_empty());
    }

    #[test]
    fn the_api_key_is_redacted_in_debug_output() {
        let settings = ClientSettings {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: ApiKey::new(KEY),
            allowed_hosts: vec![],
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        };
        assert!(!format!("{settings:?}").contains(KEY));
        let client = GeminiClient::new(settings).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains(KEY));
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn a_base_url_that_cannot_take_api_paths_is_a_configuration_error() {
        for base in ["not a url", "ftp://h", "https://h/?a=1", "https://u:p@h"] {
            let settings = ClientSettings {
                base_url: base.into(),
                api_key: ApiKey::new(KEY),
                allowed_hosts: vec![],
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
            };
            assert!(GeminiClient::new(settings).is_err(), "{base}");
        }
    }
}
