//! Durable state: events (the idempotency table) and jobs (the queue), behind one seam.
//!
//! [`Store`] is an enum over backends rather than a trait object: the set of backends is closed
//! (Postgres for production, an embedded one later), static dispatch keeps the ack path free of
//! boxing, and the HTTP and worker modules never see SQL.

mod group_commit;
mod pg_deliveries;
mod pg_jobs;
mod pg_read_only;
mod postgres;
mod sqlite;
mod sqlite_deliveries;
mod sqlite_jobs;
pub mod storable;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;

use crate::envelope::Envelope;
use crate::verify::Scheme;

pub use group_commit::BatchLimits;
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, file_of as sqlite_file};

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
    #[error("the database URL is neither postgres://... nor sqlite://...")]
    UnsupportedUrl,
    #[error("the database URL is malformed")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("the database could not be reached or refused the statement")]
    Database(#[from] sqlx::Error),
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database refused the batch this delivery was written in")]
    Batch(#[source] Arc<sqlx::Error>),
    #[error("the group-commit writer has stopped")]
    WriterStopped,
    #[error("cannot open or create the SQLite database at {}", path.display())]
    SqliteFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the database at {target}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database did not answer within {}ms (ack_deadline_ms)", .0.as_millis())]
    Deadline(Duration),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// How long a request waits for a connection before the store reports itself unavailable.
    pub acquire_timeout: Duration,
    /// Postgres: a direct URL for `LISTEN` (the pool's URL may be a transaction-mode pooler).
    pub listen_url: Option<String>,
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
    /// The raw body, byte for byte (shared, not copied, on its way to the writer).
    pub body: bytes::Bytes,
}

impl NewEvent<'_> {
    /// The envelope's fields as every backend can store them (see [`storable`]).
    pub fn storable_fields(&self) -> storable::EventFields {
        storable::EventFields::from(
            self.envelope.event_type.as_deref(),
            self.envelope.resource_id.as_deref(),
        )
    }
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
    /// What was changed to store the type or resource id (NUL escaped, cut), if anything.
    pub altered: Option<String>,
    /// The raw body; shown as text where it is UTF-8, in base64 otherwise.
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// The state of the schema, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: bool,
    pub migrations_applied: bool,
    /// False when the database refuses writes (in recovery, or read-only by default): the
    /// replica would answer every delivery 503.
    pub writable: bool,
}

impl Readiness {
    pub fn is_ready(self) -> bool {
        self.database && self.migrations_applied && self.writable
    }
}

/// The store: one variant per backend.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    /// The embedded default: one file, one writer at a time, in-process wake-ups.
    Sqlite(SqliteStore),
}

impl Store {
    /// Connects lazily: nothing is dialled until the first statement, so a process can start
    /// (and answer `/healthz`) while its database is still coming up.
    pub fn connect_lazy(url: &str, options: &ConnectOptions) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::connect_lazy(url, options)?))
        } else if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect_lazy(url, options)?))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// Routes `record_delivery` through a group-commit writer (see `group_commit`): `writers`
    /// tasks, batches within `limits`. `writers = 0` keeps one statement
    /// per delivery. Backends whose writes are serialised anyway ignore it.
    pub fn with_group_commit(self, writers: usize, limits: BatchLimits) -> Store {
        match self {
            Store::Postgres(s) => Store::Postgres(s.with_group_commit(writers, limits)),
            Store::Sqlite(s) => Store::Sqlite(s),
        }
    }

    /// Connects once, directly, with the pool's options: the pool reports only "timed out"
    /// when it cannot connect, this says why (refused, unknown host, authentication).
    pub async fn check_connection(&self) -> Result<(), StoreError> {
        use sqlx::ConnectOptions as _;
        use sqlx::Connection as _;
        match self {
            Store::Postgres(s) => {
                let options = s.pool().connect_options();
                let target = format!(
                    "{}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or("postgres")
                );
                let connection = options
                    .connect()
                    .await
                    .map_err(|source| StoreError::Connect { target, source })?;
                let _ = connection.close().await;
                Ok(())
            }
            Store::Sqlite(_) => Ok(()),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.migrate().await,
            Store::Sqlite(s) => s.migrate().await,
        }
    }

    pub async fn readiness(&self) -> Readiness {
        match self {
            Store::Postgres(s) => s.readiness().await,
            Store::Sqlite(s) => s.readiness().await,
        }
    }

    /// Records a verified delivery and enqueues its job atomically, or reports a duplicate.
    /// Returns only once the outcome is durable.
    pub async fn record_delivery(&self, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
        match self {
            Store::Postgres(s) => s.record_delivery(event).await,
            Store::Sqlite(s) => s.record_delivery(event).await,
        }
    }

    /// The newest events first.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<EventSummary>, StoreError> {
        match self {
            Store::Postgres(s) => s.list_events(filter, limit).await,
            Store::Sqlite(s) => s.list_events(filter, limit).await,
        }
    }

    pub async fn find_event(&self, webhook_id: &str) -> Result<Option<EventRecord>, StoreError> {
        match self {
            Store::Postgres(s) => s.find_event(webhook_id).await,
            Store::Sqlite(s) => s.find_event(webhook_id).await,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Store::Postgres(s) => s.close().await,
            Store::Sqlite(s) => s.close().await,
        }
    }
}

/// A job a worker has claimed, with what it needs from its event.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    /// 1 for the first attempt; the finish guards compare it.
    pub attempt: i32,
    pub webhook_id: String,
    pub event_type: Option<String>,
    pub body: Vec<u8>,
}

/// What following a pointer produced, recorded with the job's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub resource_kind: &'static str,
    pub resource_id: Option<String>,
    /// `stored`, `recorded`, `nothing` or `not_followable`.
    pub outcome: &'static str,
    pub location: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub summary: serde_json::Value,
}

/// A result already stored for a resource, reusable by another delivery of the same resource.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub location: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub summary: serde_json::Value,
}

/// One line of `gemhook jobs list`.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: i64,
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub state: String,
    pub attempt: i32,
    pub scheduled_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Everything about one job: every attempt's error and the result.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub errors: serde_json::Value,
    pub result: Option<serde_json::Value>,
}

/// What `gemhook replay` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// The job is available again.
    Queued(JobId),
    /// A worker is running it right now; nothing changed.
    Running,
    /// No such event or job.
    NotFound,
}

impl Store {
    /// Claims up to `limit` runnable jobs for `worker_id`, leased for `lease`.
    pub async fn claim_jobs(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        match self {
            Store::Postgres(s) => s.claim_jobs(worker_id, lease, limit).await,
            Store::Sqlite(s) => s.claim_jobs(worker_id, lease, limit).await,
        }
    }

    /// Extends a running job's lease; false when the job is no longer ours.
    pub async fn heartbeat(
        &self,
        job: &ClaimedJob,
        worker_id: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Postgres(s) => s.heartbeat(job, worker_id, lease).await,
            Store::Sqlite(s) => s.heartbeat(job, worker_id, lease).await,
        }
    }

    /// Marks the job completed and records its result, if it is still this attempt's.
    pub async fn complete_if_running(
        &self,
        job: &ClaimedJob,
        result: &JobResult,
        handoff: Option<&Handoff>,
    ) -> Result<bool, StoreError> {
        let result = storable_result(result);
        let handoff = handoff.map(storable_handoff);
        let (result, handoff) = (result.as_ref(), handoff.as_ref().map(Cow::as_ref));
        match self {
            Store::Postgres(s) => s.complete_if_running(job, result, handoff).await,
            Store::Sqlite(s) => s.complete_if_running(job, result, handoff).await,
        }
    }

    /// Schedules another attempt after `delay`, keeping the error.
    pub async fn retry_if_running(
        &self,
        job: &ClaimedJob,
        error: &str,
        delay: Duration,
    ) -> Result<bool, StoreError> {
        let error = &storable::unindexed_text(error);
        match self {
            Store::Postgres(s) => s.retry_if_running(job, error, delay).await,
            Store::Sqlite(s) => s.retry_if_running(job, error, delay).await,
        }
    }

    /// Dead-letters the job with its final error (and a result, when there is one to keep).
    pub async fn discard_if_running(
        &self,
        job: &ClaimedJob,
        error: &str,
        result: Option<&JobResult>,
        handoff: Option<&Handoff>,
    ) -> Result<bool, StoreError> {
        let error = &storable::unindexed_text(error);
        let result = result.map(storable_result);
        let handoff = handoff.map(storable_handoff);
        let (result, handoff) = (
            result.as_ref().map(Cow::as_ref),
            handoff.as_ref().map(Cow::as_ref),
        );
        match self {
            Store::Postgres(s) => s.discard_if_running(job, error, result, handoff).await,
            Store::Sqlite(s) => s.discard_if_running(job, error, result, handoff).await,
        }
    }

    /// Gives a running job back (shutdown): available at once, the attempt not counted.
    pub async fn release_if_running(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        match self {
            Store::Postgres(s) => s.release_if_running(job).await,
            Store::Sqlite(s) => s.release_if_running(job).await,
        }
    }

    /// Running jobs whose lease expired (their worker died) become retryable, or discarded when
    /// they had their last attempt. Returns how many were rescued.
    pub async fn rescue_expired_leases(&self, max_attempts: i32) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.rescue_expired_leases(max_attempts).await,
            Store::Sqlite(s) => s.rescue_expired_leases(max_attempts).await,
        }
    }

    /// A result another job already stored for this resource.
    pub async fn find_stored_result(
        &self,
        resource_kind: &str,
        resource_id: &str,
        except_job: JobId,
    ) -> Result<Option<StoredResult>, StoreError> {
        match self {
            Store::Postgres(s) => {
                s.find_stored_result(resource_kind, resource_id, except_job)
                    .await
            }
            Store::Sqlite(s) => {
                s.find_stored_result(resource_kind, resource_id, except_job)
                    .await
            }
        }
    }

    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: i64,
    ) -> Result<Vec<JobSummary>, StoreError> {
        match self {
            Store::Postgres(s) => s.list_jobs(filter, limit).await,
            Store::Sqlite(s) => s.list_jobs(filter, limit).await,
        }
    }

    pub async fn find_job(&self, id: JobId) -> Result<Option<JobDetail>, StoreError> {
        match self {
            Store::Postgres(s) => s.find_job(id).await,
            Store::Sqlite(s) => s.find_job(id).await,
        }
    }

    /// Re-queues one job that is not running (attempts start again from zero).
    pub async fn requeue_job(&self, id: JobId) -> Result<Requeued, StoreError> {
        match self {
            Store::Postgres(s) => s.requeue_job(id).await,
            Store::Sqlite(s) => s.requeue_job(id).await,
        }
    }

    /// Re-queues every discarded job; returns how many.
    pub async fn requeue_discarded(&self) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.requeue_discarded().await,
            Store::Sqlite(s) => s.requeue_discarded().await,
        }
    }

    /// Processes a stored event again: its job is re-queued.
    pub async fn replay_event(&self, webhook_id: &str) -> Result<Requeued, StoreError> {
        match self {
            Store::Postgres(s) => s.replay_event(webhook_id).await,
            Store::Sqlite(s) => s.replay_event(webhook_id).await,
        }
    }

    /// Resolves when new jobs may be runnable: a wake-up from this process's receiver, or from
    /// any process through the database. Spurious wake-ups are harmless (the claim finds
    /// nothing).
    pub fn job_wakeups(&self) -> Arc<Notify> {
        match self {
            Store::Postgres(s) => s.job_wakeups(),
            Store::Sqlite(s) => s.job_wakeups(),
        }
    }

    /// Like [`Store::job_wakeups`], for hand-off deliveries.
    pub fn delivery_wakeups(&self) -> Arc<Notify> {
        match self {
            Store::Postgres(s) => s.delivery_wakeups(),
            Store::Sqlite(s) => s.delivery_wakeups(),
        }
    }

    /// Starts delivering other processes' wake-ups to [`Store::job_wakeups`] (Postgres
    /// `LISTEN`); a no-op where the backend has no such channel.
    pub fn listen_for_jobs(&self) {
        match self {
            Store::Postgres(s) => s.listen_for_jobs(),
            Store::Sqlite(s) => s.listen_for_jobs(),
        }
    }
}

/// The queue at a glance: for metrics, readiness and `gemhook stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// Jobs per state (states with no job are absent).
    pub by_state: Vec<(String, i64)>,
    /// Seconds since the oldest runnable job became due; 0 when none waits. The number on-call
    /// looks at first: it grows when workers are down or too few.
    pub backlog_age_secs: f64,
}

impl Store {
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        match self {
            Store::Postgres(s) => s.queue_stats().await,
            Store::Sqlite(s) => s.queue_stats().await,
        }
    }

    /// Dead letters grouped by their last error, most common first.
    pub async fn discard_reasons(&self, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        match self {
            Store::Postgres(s) => s.discard_reasons(limit).await,
            Store::Sqlite(s) => s.discard_reasons(limit).await,
        }
    }
}

/// Which events `gemhook events list` shows; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// Which jobs `gemhook jobs list` shows; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// What retention may delete: events received before `cutoff` whose job is finished
/// (`completed` or `cancelled`), and with `include_discarded` also dead letters, which are
/// otherwise kept until retried or pruned explicitly. Deleting an event deletes its job and
/// result rows; result objects in the results store are the user's data and stay.
#[derive(Debug, Clone, Copy)]
pub struct PruneScope {
    pub cutoff: DateTime<Utc>,
    pub include_discarded: bool,
}

impl Store {
    /// Deletes up to `batch` prunable events; returns how many. Small batches keep each
    /// statement short, so pruning never holds locks the ack path waits on for long.
    pub async fn prune_batch(&self, scope: &PruneScope, batch: i64) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.prune_batch(scope, batch).await,
            Store::Sqlite(s) => s.prune_batch(scope, batch).await,
        }
    }

    /// How many events [`Store::prune_batch`] would delete in all (for `--dry-run`).
    pub async fn count_prunable(&self, scope: &PruneScope) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.count_prunable(scope).await,
            Store::Sqlite(s) => s.count_prunable(scope).await,
        }
    }
}

/// A finished job's outcome and the sinks it goes to: written in the job's finishing
/// transaction, so a job is never finished without its hand-off queued.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The outcome JSON the application receives.
    pub outcome: serde_json::Value,
    /// Names of the sinks whose filter matched.
    pub sinks: Vec<String>,
}

/// The result as every backend can store it: text from the event (the resource id, the
/// summary's `user_metadata`) may hold NUL or be long; see [`storable`].
fn storable_result(result: &JobResult) -> Cow<'_, JobResult> {
    let resource_id = result
        .resource_id
        .as_deref()
        .map(|id| storable::text(id, storable::MAX_FIELD_BYTES));
    let id_changed = resource_id
        .as_ref()
        .is_some_and(|(_, done)| !done.is_empty());
    if !id_changed && !storable::json_has_nul(&result.summary) {
        return Cow::Borrowed(result);
    }
    let mut summary = result.summary.clone();
    storable::json(&mut summary);
    Cow::Owned(JobResult {
        resource_id: resource_id.map(|(id, _)| id.into_owned()),
        summary,
        ..result.clone()
    })
}

fn storable_handoff(handoff: &Handoff) -> Cow<'_, Handoff> {
    if !storable::json_has_nul(&handoff.outcome) {
        return Cow::Borrowed(handoff);
    }
    let mut outcome = handoff.outcome.clone();
    storable::json(&mut outcome);
    Cow::Owned(Handoff {
        outcome,
        sinks: handoff.sinks.clone(),
    })
}

/// A delivery a dispatcher has claimed.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub attempt: i32,
    pub sink: String,
    pub webhook_id: String,
    /// Bumped when a replay rewrites the outcome; part of the outgoing delivery id.
    pub revision: i32,
    pub outcome: serde_json::Value,
}

/// One line of `gemhook deliveries list`.
#[derive(Debug, Clone, Serialize)]
pub struct DeliverySummary {
    pub id: i64,
    pub webhook_id: String,
    pub sink: String,
    pub state: String,
    pub attempt: i32,
    pub scheduled_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Everything about one delivery: `gemhook deliveries show`.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    #[serde(flatten)]
    pub summary: DeliverySummary,
    /// The outcome's revision (bumped by a replay); part of the outgoing delivery id.
    pub revision: i32,
    /// One object per failed attempt: {"attempt", "at", "error", "retryable"}.
    pub errors: serde_json::Value,
    /// The outcome JSON the sink is sent.
    pub outcome: serde_json::Value,
}

impl Store {
    pub async fn claim_deliveries(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        match self {
            Store::Postgres(s) => s.claim_deliveries(worker_id, lease, limit).await,
            Store::Sqlite(s) => s.claim_deliveries(worker_id, lease, limit).await,
        }
    }

    /// Finishes a delivery attempt if it is still this attempt's: `Ok(())` completes it,
    /// `Err((error, Some(delay)))` schedules a retry, `Err((error, None))` dead-letters it.
    pub async fn finish_delivery(
        &self,
        delivery: &ClaimedDelivery,
        outcome: Result<(), (&str, Option<Duration>)>,
    ) -> Result<bool, StoreError> {
        let error = outcome
            .err()
            .map(|(error, delay)| (storable::unindexed_text(error), delay));
        let outcome = match &error {
            None => Ok(()),
            Some((error, delay)) => Err((error.as_ref(), *delay)),
        };
        match self {
            Store::Postgres(s) => s.finish_delivery(delivery, outcome).await,
            Store::Sqlite(s) => s.finish_delivery(delivery, outcome).await,
        }
    }

    pub async fn rescue_expired_deliveries(&self, max_attempts: i32) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.rescue_expired_deliveries(max_attempts).await,
            Store::Sqlite(s) => s.rescue_expired_deliveries(max_attempts).await,
        }
    }

    pub async fn list_deliveries(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        match self {
            Store::Postgres(s) => s.list_deliveries(state, None, limit).await,
            Store::Sqlite(s) => s.list_deliveries(state, None, limit).await,
        }
    }

    /// Re-queues one delivery (`Some(id)`) or every discarded one (`None`); returns how many.
    /// One delivery with every attempt's error and the outcome it sends.
    pub async fn find_delivery(&self, id: i64) -> Result<Option<DeliveryRecord>, StoreError> {
        let (summary, detail) = match self {
            Store::Postgres(s) => (
                s.list_deliveries(None, Some(id), 1).await?,
                s.delivery_detail(id).await?,
            ),
            Store::Sqlite(s) => (
                s.list_deliveries(None, Some(id), 1).await?,
                s.delivery_detail(id).await?,
            ),
        };
        Ok(summary
            .into_iter()
            .next()
            .zip(detail)
            .map(|(summary, (errors, outcome, revision))| DeliveryRecord {
                summary,
                revision,
                errors,
                outcome,
            }))
    }

    pub async fn requeue_deliveries(&self, id: Option<i64>) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.requeue_deliveries(id).await,
            Store::Sqlite(s) => s.requeue_deliveries(id).await,
        }
    }
}
