//! A failed answer from a server gemhook called (Gemini's API, an application's HTTP sink),
//! read one way for every client: its status, whether another attempt can succeed, the
//! `Retry-After` it named, and a one-line excerpt of its body for the message.
//!
//! A leaf: the clients turn a [`FailedAnswer`] into their own typed errors (and the Gemini
//! client takes its key out of the excerpt).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;

/// What a non-2xx answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAnswer {
    pub status: StatusCode,
    /// The server's `Retry-After`, when it gave a readable one on an answer worth retrying.
    pub retry_after: Option<Duration>,
    /// At most the first `excerpt_bytes` of the body, on one line (whitespace runs folded).
    pub excerpt: String,
}

/// 5xx, 408 and 429 may succeed later; any other status fails the same way again.
pub fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Reads a failed answer: its status and `Retry-After` now, and up to `excerpt_bytes` of its
/// body. A body that cannot be read only shortens the excerpt.
pub async fn read(mut response: reqwest::Response, excerpt_bytes: usize) -> FailedAnswer {
    let status = response.status();
    let retry_after = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()))
    } else {
        None
    };
    let mut body = Vec::new();
    while body.len() < excerpt_bytes {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(excerpt_bytes);
    let excerpt = String::from_utf8_lossy(&body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    FailedAnswer {
        status,
        retry_after,
        excerpt,
    }
}

/// A `Retry-After` header value: delta-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`. A date in the past means "now".
/// `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail: the cap applies later.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}
