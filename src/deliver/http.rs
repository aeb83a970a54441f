//! The HTTP sink: POST the outcome as JSON, signed the Standard Webhooks way, so the
//! application verifies it with any Standard Webhooks library and gemhook's `whsec_` secret.
//!
//! Headers: `webhook-id` (the delivery id: the same on every retry, so the application can
//! drop duplicates), `webhook-timestamp` (this attempt, Unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256>` of `id.timestamp.body`). Redirects are not followed: the URL is
//! the operator's own, and a redirected POST would carry the signed body somewhere else.

use std::fmt;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::redirect;
use url::Url;

use super::outcome::Outcome;
use super::sinks::{HttpSinkConfig, SinkConfigError};
use super::{SinkError, display_endpoint};
use crate::outbound;
use crate::telemetry::traces;
use crate::verify::{WebhookSecret, sign_v1};

/// How much of an error answer's body goes into the error message.
const ERROR_DETAIL_BYTES: usize = 256;

/// Posts outcomes to one URL. Cheap to clone (the client is shared).
#[derive(Clone)]
pub struct HttpSink {
    url: Url,
    /// `scheme://host:port`, the only part of the URL that messages show.
    endpoint: String,
    secret: WebhookSecret,
    client: reqwest::Client,
    inline_max_bytes: usize,
}

impl HttpSink {
    /// `timeout` bounds the whole attempt: connecting, sending, and reading the answer.
    pub fn new(
        url: Url,
        secret: WebhookSecret,
        timeout: Duration,
        inline_max_bytes: usize,
    ) -> Result<HttpSink, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirect::Policy::none())
            .user_agent(concat!("gemhook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpSink {
            endpoint: display_endpoint(&url),
            url,
            secret,
            client,
            inline_max_bytes,
        })
    }

    pub fn from_config(config: &HttpSinkConfig) -> Result<HttpSink, SinkConfigError> {
        HttpSink::new(
            config.parsed_url()?,
            config.parsed_secret()?,
            config.timeout(),
            config.inline_max_bytes,
        )
        .map_err(|source| SinkConfigError::HttpClient {
            name: config.name.clone(),
            source: source.without_url(),
        })
    }

    pub fn inline_max_bytes(&self) -> usize {
        self.inline_max_bytes
    }

    /// One signed POST. Any 2xx is success; what else can happen is in [`SinkError`].
    pub async fn send(&self, delivery_id: &str, outcome: &Outcome) -> Result<(), SinkError> {
        let body = outcome
            .encode(self.inline_max_bytes)
            .map_err(SinkError::Encode)?;
        // Signed per attempt: the application checks the timestamp's freshness, and a retry
        // hours later must not look like a replay.
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign_v1(&self.secret, delivery_id, timestamp, &body);
        // The dispatch span's `traceparent`, so the application's own spans join the trace
        // of the delivery from Gemini (nothing is added when traces are off).
        let mut trace_headers = HeaderMap::new();
        traces::inject_into(&tracing::Span::current(), &mut trace_headers);
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", delivery_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .headers(trace_headers)
            .body(body)
            .send()
            .await
            .map_err(|error| self.transport_error(error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(self.status_error(response).await)
    }

    fn transport_error(&self, error: reqwest::Error) -> SinkError {
        // reqwest puts the full URL (path, query, user info) in its errors: drop it.
        let endpoint = self.endpoint.clone();
        let source = error.without_url();
        if source.is_timeout() {
            SinkError::Timeout { endpoint, source }
        } else if source.is_connect() {
            SinkError::Connect { endpoint, source }
        } else {
            SinkError::Request { endpoint, source }
        }
    }

    async fn status_error(&self, response: reqwest::Response) -> SinkError {
        let answer = outbound::read(response, ERROR_DETAIL_BYTES).await;
        SinkError::Status {
            endpoint: self.endpoint.clone(),
            status: answer.status,
            retry_after: answer.retry_after,
            detail: answer.excerpt,
        }
    }
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("endpoint", &self.endpoint)
            .field("secret", &self.secret)
            .field("inline_max_bytes", &self.inline_max_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::delivery_id;
    use crate::deliver::outcome::tests::sample;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, HeaderValue};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use reqwest::StatusCode;
    use reqwest::header::RETRY_AFTER;
    use std::sync::{Arc, Mutex};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// What the local receiver saw: whether the independent library accepted the signature,
    /// the headers and the body.
    #[derive(Debug, Clone)]
    struct Received {
        verified: Result<(), String>,
        headers: HeaderMap,
        body: Bytes,
    }

    #[derive(Clone)]
    struct Receiver {
        answer: (StatusCode, Option<&'static str>),
        received: Arc<Mutex<Vec<Received>>>,
    }

    async fn receive(
        State(receiver): State<Receiver>,
        headers: HeaderMap,
        body: Bytes,
    ) -> impl IntoResponse {
        // The independent implementation: the standardwebhooks crate, with the same secret.
        let verified = standardwebhooks::Webhook::new(SECRET)
            .map_err(|e| e.to_string())
            .and_then(|hook| hook.verify(&body, &headers).map_err(|e| e.to_string()));
        receiver.received.lock().unwrap().push(Received {
            verified,
            headers,
            body,
        });
        let (status, retry_after) = receiver.answer;
        let mut response = (status, "receiver says no").into_response();
        if let Some(value) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(value));
        }
        response
    }

    /// A receiver on 127.0.0.1:0 answering `status`; returns its URL and what it received.
    async fn spawn_receiver(
        status: StatusCode,
        retry_after: Option<&'static str>,
    ) -> (Url, Arc<Mutex<Vec<Received>>>) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hooks/gemini-results", post(receive))
            .with_state(Receiver {
                answer: (status, retry_after),
                received: received.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = Url::parse(&format!(
            "http://{address}/hooks/gemini-results?token=t0p-s3cret"
        ))
        .unwrap();
        (url, received)
    }

    fn sink(url: Url) -> HttpSink {
        HttpSink::new(
            url,
            WebhookSecret::parse(SECRET).unwrap(),
            Duration::from_secs(5),
            65536,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_outcome_arrives_signed_so_an_independent_library_verifies_it() {
        let (url, received) = spawn_receiver(StatusCode::NO_CONTENT, None).await;
        let outcome = sample();
        let id = delivery_id(&outcome.webhook_id, "nightly");

        sink(url).send(&id, &outcome).await.unwrap();

        let received = received.lock().unwrap();
        assert_eq!(received.len(), 1);
        let delivery = &received[0];
        assert_eq!(delivery.verified, Ok(()));
        assert_eq!(delivery.headers["webhook-id"], id.as_str());
        assert_eq!(delivery.headers["content-type"], "application/json");
        let body: Outcome = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(body, outcome);
    }

    #[tokio::test]
    async fn a_receiver_with_another_secret_rejects_the_signature() {
        let (url, received) = spawn_receiver(StatusCode::OK, None).await;
        let other = HttpSink::new(
            url,
            WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap(),
            Duration::from_secs(5),
            0,
        )
        .unwrap();

        other.send("gh_x", &sample()).await.unwrap();

        assert!(received.lock().unwrap()[0].verified.is_err());
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_keeps_its_retry_after() {
        let (url, _) = spawn_receiver(StatusCode::SERVICE_UNAVAILABLE, Some("7")).await;

        let error = sink(url).send("gh_1", &sample()).await.unwrap_err();

        assert!(error.is_retryable(), "{error}");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        assert!(matches!(&error, SinkError::Status { detail, .. } if detail == "receiver says no"));
    }

    #[tokio::test]
    async fn a_429_is_retryable() {
        let (url, _) = spawn_receiver(StatusCode::TOO_MANY_REQUESTS, None).await;

        let error = sink(url).send("gh_1", &sample()).await.unwrap_err();

        assert!(error.is_retryable(), "{error}");
    }

    #[tokio::test]
    async fn a_400_is_permanent() {
        let (url, _) = spawn_receiver(StatusCode::BAD_REQUEST, None).await;

        let error = sink(url).send("gh_1", &sample()).await.unwrap_err();

        assert!(!error.is_retryable(), "{error}");
        assert_eq!(error.retry_after(), None);
    }

    #[tokio::test]
    async fn a_410_gone_is_permanent() {
        let (url, _) = spawn_receiver(StatusCode::GONE, None).await;

        let error = sink(url).send("gh_1", &sample()).await.unwrap_err();

        assert!(!error.is_retryable(), "{error}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_is_permanent() {
        let (url, received) = spawn_receiver(StatusCode::TEMPORARY_REDIRECT, None).await;

        let error = sink(url).send("gh_1", &sample()).await.unwrap_err();

        assert!(!error.is_retryable(), "{error}");
        assert_eq!(received.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_its_error_shows_no_secret_or_query() {
        // Bind then drop: nothing listens on that port any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let url = Url::parse(&format!("http://user:pw@{address}/hook?token=t0p-s3cret")).unwrap();

        let error = sink(url).send("gh_1", &sample()).await.unwrap_err();

        assert!(error.is_retryable(), "{error}");
        let shown = format!("{} / {error:?}", crate::telemetry::error_chain(&error));
        for hidden in ["t0p-s3cret", "pw@", "/hook", &SECRET[6..]] {
            assert!(!shown.contains(hidden), "{hidden} in {shown}");
        }
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_a_retryable_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts, then never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let slow = HttpSink::new(
            Url::parse(&format!("http://{address}/")).unwrap(),
            WebhookSecret::parse(SECRET).unwrap(),
            Duration::from_millis(200),
            0,
        )
        .unwrap();

        let error = slow.send("gh_1", &sample()).await.unwrap_err();

        assert!(matches!(error, SinkError::Timeout { .. }), "{error:?}");
        assert!(error.is_retryable());
    }

    #[test]
    fn debug_output_never_contains_the_secret_or_the_urls_path() {
        let sink = sink(Url::parse("http://127.0.0.1:9/hook?token=t0p-s3cret").unwrap());

        let shown = format!("{sink:?}");

        assert!(!shown.contains(&SECRET[6..]), "{shown}");
        assert!(!shown.contains("t0p-s3cret"), "{shown}");
    }
}
