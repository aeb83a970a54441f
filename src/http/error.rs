//! One error type for the HTTP layer: each variant has one status and one reason code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;
use crate::verify::Rejection;

/// How long Gemini is asked to wait before retrying when we cannot store, in seconds.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the body is larger than max_body_bytes")]
    PayloadTooLarge,
    #[error("the body could not be read")]
    UnreadableBody,
    #[error("the body did not arrive within body_read_timeout_secs")]
    BodyTimeout,
    #[error("too many request bodies are held at once (max_inflight_body_bytes)")]
    Overloaded,
    #[error("the delivery could not be stored")]
    Unavailable(#[source] StoreError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Rejected(Rejection::MissingHeader(_) | Rejection::InvalidHeader { .. }) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Rejected(_) => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnreadableBody => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The reason code: the `error` field of the body and the `outcome` of the log line.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Rejected(rejection) => rejection.code(),
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnreadableBody => "bad_request",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Small fixed bodies: nothing about the cause (a store error's text) reaches the client.
        let body = format!(r#"{{"error":"{}"}}"#, self.code());
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if matches!(self, ApiError::Unavailable(_) | ApiError::Overloaded) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
