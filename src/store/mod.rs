//! Durable state: events (the idempotency table) and jobs (the queue), behind one seam.
//!
//! [`Store`] is an enum over backends rather than a trait object: the set of backends is closed
//! (Postgres for production, an embedded one later), static dispatch keeps the ack path free of
//! boxing, and the HTTP and worker modules never see SQL.

mod postgres;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::envelope::Envelope;
use crate::verify::Scheme;

pub use postgres::PgStore;

/// The `webhook-id` of a delivery: Gemini's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct WebhookId(pub String);

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A row of the jobs table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Errors of the store. Every one of them on the ack path means "not stored": the receiver
/// answers 503 and Gemini retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL is not a postgres:// URL")]
    UnsupportedUrl,
    #[error("the database URL is malformed")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("the database could not be reached or refused the statement")]
    Database(#[from] sqlx::Error),
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// How long a request waits for a connection before the store reports itself unavailable.
    pub acquire_timeout: Duration,
}

/// A verified delivery about to be recorded.
#[derive(Debug)]
pub struct NewEvent<'a> {
    pub webhook_id: &'a str,
    pub webhook_timestamp: i64,
    pub envelope: &'a Envelope,
    pub scheme: Scheme,
    /// The webhook headers as received (a JSON object of name → value).
    pub headers: &'a serde_json::Value,
    /// The raw body, byte for byte.
    pub body: &'a [u8],
}

/// The outcome of recording a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new event, and its job, are committed.
    Accepted { job_id: JobId },
    /// The `webhook-id` was already stored; nothing new was written.
    Duplicate,
}

/// One line of `gemhook events list`.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub resource_id: Option<String>,
    pub status: String,
    pub scheme: String,
    pub received_at: DateTime<Utc>,
    /// The state of the event's job, if it has one.
    pub job_state: Option<String>,
}

/// Everything stored about one event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    #[serde(flatten)]
    pub summary: EventSummary,
    pub webhook_timestamp: i64,
    pub headers: serde_json::Value,
    /// The raw body; shown as text where it is UTF-8, in base64 otherwise.
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// The state of the schema, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: bool,
    pub migrations_applied: bool,
}

impl Readiness {
    pub fn is_ready(self) -> bool {
        self.database && self.migrations_applied
    }
}

/// The store: one variant per backend.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
}

impl Store {
    /// Connects lazily: nothing is dialled until the first statement, so a process can start
    /// (and answer `/healthz`) while its database is still coming up.
    pub fn connect_lazy(url: &str, options: &ConnectOptions) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::connect_lazy(url, options)?))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.migrate().await,
        }
    }

    pub async fn readiness(&self) -> Readiness {
        match self {
            Store::Postgres(s) => s.readiness().await,
        }
    }

    /// Records a verified delivery and enqueues its job atomically, or reports a duplicate.
    /// Returns only once the outcome is durable.
    pub async fn record_delivery(&self, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
        match self {
            Store::Postgres(s) => s.record_delivery(event).await,
        }
    }

    /// The newest events first.
    pub async fn list_events(&self, limit: i64) -> Result<Vec<EventSummary>, StoreError> {
        match self {
            Store::Postgres(s) => s.list_events(limit).await,
        }
    }

    pub async fn find_event(&self, webhook_id: &str) -> Result<Option<EventRecord>, StoreError> {
        match self {
            Store::Postgres(s) => s.find_event(webhook_id).await,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Store::Postgres(s) => s.close().await,
        }
    }
}
