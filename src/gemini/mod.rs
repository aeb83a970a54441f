//! Following Gemini's pointers: what an event asks for, and the REST client that fetches it.
//!
//! - [`pointer`]: pure; an event body → the [`Work`] it asks for (download, fetch, record, …).
//! - [`origin`]: which origins may ever receive the API key (the base URL's, and allowed ones).
//! - [`client`]: the HTTP client; sends the key only to allowed origins, follows redirects by
//!   hand so that a redirect can never carry the key elsewhere, and classifies failures as
//!   retryable or permanent.
//! - [`retry`]: pure; exponential backoff with full jitter, and `Retry-After`.
//! - [`webhooks`]: the WebhookService client (`gemhook webhooks`), over [`client`].
//! - [`watch`]: the watcher that reads the webhooks' states while `serve` runs.
//! - [`batch`]: pure; where a fetched batch keeps its results (file or inline).
//! - [`gcs`]: reading `gs://` pointers with Google Cloud Storage credentials.

pub mod batch;
pub mod client;
pub mod gcs;
pub mod origin;
pub mod pointer;
pub mod retry;
pub mod watch;
pub mod webhooks;

pub use client::{
    ApiAnswer, ApiKey, ClientSettings, Download, GeminiClient, GeminiError, Interaction,
};
pub use origin::{AllowedOrigins, ConfigError};
pub use pointer::{Plan, PointerPolicy, ResourceKind, Unfollowable, Work};
