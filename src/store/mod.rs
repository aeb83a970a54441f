//! Durable state: events (the idempotency table), the two queues (jobs, deliveries), results
//! and outcomes, behind one seam with a Postgres and an embedded SQLite backend.
//!
//! The house, from the bottom: `db` is the seam (a pool of either database, the few SQL
//! fragments and codecs that differ); [`queue`] is the state machine both queues share,
//! written once; `events`, `jobs` and `deliveries` are the operations on each table, written
//! once over the seam; `postgres` and `sqlite` hold only what really differs between the
//! backends (connecting, migrating, readiness, the ack path's write, wake-ups across processes).
//! The HTTP and worker modules never see SQL.

#[cfg(test)]
mod conformance;
mod db;
mod deliveries;
mod events;
mod finish_group;
mod group_commit;
mod jobs;
mod pg_read_only;
mod postgres;
pub mod queue;
mod sqlite;
pub mod storable;
#[cfg(test)]
mod testing;

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;

use crate::envelope::Envelope;
use crate::verify::Scheme;
use db::{Db, Exec as _};

pub use db::Dialect;
pub use group_commit::BatchLimits;
use group_commit::GroupWriter;
pub use queue::{QueueState, UnknownState};
pub use sqlite::file_of as sqlite_file;

/// The `webhook-id` of a delivery: Gemini's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, sqlx::Type, utoipa::ToSchema)]
#[serde(transparent)]
#[sqlx(transparent)]
#[schema(value_type = String)]
pub struct WebhookId(pub String);

impl WebhookId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read as the text it is (`&id`, `id.len()`), so a typed id costs its callers nothing.
impl std::ops::Deref for WebhookId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for WebhookId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for WebhookId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A row of the jobs table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type, utoipa::ToSchema)]
#[serde(transparent)]
#[sqlx(transparent)]
#[schema(value_type = i64)]
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
    /// The delivery span's W3C `traceparent`, when traces are exported: the job and the
    /// hand-off continue its trace from it.
    pub trace_context: Option<&'a str>,
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventSummary {
    /// The row's id: the listing's cursor (lists are newest first, by id), not shown.
    #[serde(skip)]
    pub id: i64,
    pub webhook_id: WebhookId,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub resource_id: Option<String>,
    pub status: String,
    pub scheme: String,
    pub received_at: DateTime<Utc>,
    /// The state of the event's job, if it has one.
    pub job_state: Option<QueueState>,
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

/// Readiness from the applied migrations' versions (or why they could not be read).
fn readiness_from(
    migrator: &sqlx::migrate::Migrator,
    applied: Result<Vec<i64>, sqlx::Error>,
    writable: bool,
) -> Readiness {
    match applied {
        Ok(applied) => Readiness {
            database: true,
            migrations_applied: migrator.iter().all(|m| applied.contains(&m.version)),
            writable,
        },
        // The table is missing before the first migration: the database answers, the schema
        // is not there.
        Err(sqlx::Error::Database(_)) => Readiness {
            database: true,
            migrations_applied: false,
            writable,
        },
        Err(_) => Readiness {
            database: false,
            migrations_applied: false,
            writable: false,
        },
    }
}

/// The store: one pool, the in-process wake-ups, and what is particular to its backend.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    wakeups: Wakeups,
    backend: Backend,
    /// The workers' shared finishes, started by the first one (see `finish_group`).
    finishes: Arc<OnceLock<finish_group::FinishWriter>>,
}

/// In-process wake-ups: a worker or dispatcher of this process starts at once when this
/// process queues something (other processes' work arrives by `LISTEN`, or the poll).
#[derive(Debug, Clone, Default)]
struct Wakeups {
    jobs: Arc<Notify>,
    deliveries: Arc<Notify>,
}

#[derive(Debug, Clone)]
enum Backend {
    Postgres(postgres::Postgres),
    Sqlite(sqlite::Sqlite),
}

impl QueueStats {
    /// Every state with its count, 0 for the states no job is in.
    pub fn every_state(&self) -> Vec<(&'static str, i64)> {
        QueueState::ALL
            .iter()
            .map(|&state| {
                let count = self.by_state.iter().find(|(s, _)| *s == state);
                (state.as_str(), count.map_or(0, |(_, n)| *n))
            })
            .collect()
    }
}

impl Store {
    /// Connects lazily: nothing is dialled until the first statement, so a process can start
    /// (and answer `/healthz`) while its database is still coming up.
    pub fn connect_lazy(url: &str, options: &ConnectOptions) -> Result<Store, StoreError> {
        let (db, backend) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (pool, parts) = postgres::connect_lazy(url, options)?;
            (Db::Postgres(pool), Backend::Postgres(parts))
        } else if url.starts_with("sqlite:") {
            (
                Db::Sqlite(sqlite::connect_lazy(url, options)?, db::WriteGate::new()),
                Backend::Sqlite(sqlite::Sqlite::default()),
            )
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(Store {
            db,
            wakeups: Wakeups::default(),
            backend,
            finishes: Arc::default(),
        })
    }

    pub fn dialect(&self) -> Dialect {
        (&self.db).dialect()
    }

    /// How many transactions the workers' shared finishes have committed in this process (0
    /// before the first finish); finishes divided by it is their mean batch.
    pub fn finish_commits(&self) -> u64 {
        self.finishes
            .get()
            .map_or(0, finish_group::FinishWriter::commits)
    }

    fn finisher(&self) -> &finish_group::FinishWriter {
        self.finishes.get_or_init(|| {
            finish_group::FinishWriter::start(self.db.clone(), self.wakeups.deliveries.clone())
        })
    }

    /// Routes `record_delivery` through a group-commit writer (see `group_commit`): `writers`
    /// tasks, batches within `limits`. On Postgres `writers = 0` keeps one statement per
    /// delivery. SQLite always commits in groups, with one writer whatever `writers` says: the
    /// file has one write lock, and a second writer would only wait for it.
    pub fn with_group_commit(mut self, writers: usize, limits: BatchLimits) -> Store {
        match &mut self.backend {
            Backend::Postgres(parts) => {
                parts.start_group_commit(&self.db, &self.wakeups.jobs, writers, limits)
            }
            Backend::Sqlite(parts) => *parts = sqlite::Sqlite::with_limits(limits),
        }
        self
    }

    /// How many transactions the ack path's group-commit writer has committed in this process,
    /// `None` while there is none (Postgres with `group_commit_writers = 0`, or SQLite before
    /// its first delivery).
    pub fn group_commits(&self) -> Option<u64> {
        match &self.backend {
            Backend::Postgres(parts) => parts.writer(),
            Backend::Sqlite(parts) => parts.started_writer(),
        }
        .map(GroupWriter::commits)
    }

    /// Connects once, directly, with the pool's options: the pool reports only "timed out"
    /// when it cannot connect, this says why (refused, unknown host, authentication).
    pub async fn check_connection(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Postgres(pool) => postgres::check_connection(pool).await,
            Db::Sqlite(..) => Ok(()),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Postgres(pool) => postgres::migrate(pool).await,
            Db::Sqlite(pool, _) => sqlite::migrate(pool).await,
        }
    }

    pub async fn readiness(&self) -> Readiness {
        match (&self.db, &self.backend) {
            (Db::Postgres(pool), Backend::Postgres(parts)) => parts.readiness(pool).await,
            (Db::Sqlite(pool, _), _) => sqlite::readiness(pool).await,
            (Db::Postgres(_), Backend::Sqlite(_)) => {
                unreachable!("a Postgres pool has its parts")
            }
        }
    }

    /// Records a verified delivery and enqueues its job atomically, or reports a duplicate.
    /// Returns only once the outcome is durable.
    pub async fn record_delivery(&self, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
        let recorded = match (&self.db, &self.backend) {
            (Db::Postgres(_), Backend::Postgres(parts)) => {
                parts.record_delivery(&self.db, event).await
            }
            (Db::Sqlite(..), Backend::Sqlite(parts)) => {
                parts
                    .writer(&self.db, &self.wakeups.jobs)
                    .record(event)
                    .await
            }
            (Db::Postgres(_), Backend::Sqlite(_)) | (Db::Sqlite(..), Backend::Postgres(_)) => {
                unreachable!("a pool has its own backend's parts")
            }
        };
        if let Ok(Recorded::Accepted { .. }) = recorded {
            // A worker in this process starts at once, without the NOTIFY round trip.
            self.wakeups.jobs.notify_one();
        }
        recorded
    }

    /// Resolves when new jobs may be runnable: a wake-up from this process's receiver, or from
    /// any process through the database. Spurious wake-ups are harmless (the claim finds
    /// nothing).
    pub fn job_wakeups(&self) -> Arc<Notify> {
        self.wakeups.jobs.clone()
    }

    /// Like [`Store::job_wakeups`], for hand-off deliveries.
    pub fn delivery_wakeups(&self) -> Arc<Notify> {
        self.wakeups.deliveries.clone()
    }

    /// Starts delivering other processes' wake-ups to [`Store::job_wakeups`] and
    /// [`Store::delivery_wakeups`]: Postgres `LISTEN`; on SQLite, which has no channel between
    /// processes, a watch of the file's commits (`PRAGMA data_version`, every 20 ms).
    pub fn listen_for_jobs(&self) {
        match (&self.db, &self.backend) {
            (Db::Postgres(pool), Backend::Postgres(parts)) => {
                parts.listen(pool, &self.wakeups.jobs, &self.wakeups.deliveries)
            }
            (Db::Sqlite(pool, _), _) => {
                sqlite::watch_commits(pool, &self.wakeups.jobs, &self.wakeups.deliveries)
            }
            (Db::Postgres(_), Backend::Sqlite(_)) => {}
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        if let Backend::Postgres(parts) = &self.backend {
            parts.close().await;
        }
        match &self.db {
            Db::Postgres(pool) => pool.close().await,
            Db::Sqlite(pool, _) => pool.close().await,
        }
    }

    /// Wakes this process's claimers of `queue` and, through the database, other processes'.
    async fn wake(&self, queue: &queue::QueueKind) -> Result<(), StoreError> {
        if queue.table == queue::JOBS.table {
            self.wakeups.jobs.notify_one();
        } else {
            self.wakeups.deliveries.notify_one();
        }
        queue::notify(&self.db, queue).await
    }
}

/// A job a worker has claimed, with what it needs from its event.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    /// 1 for the first attempt; the finish guards compare it.
    pub attempt: i32,
    pub webhook_id: WebhookId,
    pub event_type: Option<String>,
    pub body: Vec<u8>,
    /// The delivery's `traceparent` (see [`NewEvent::trace_context`]).
    pub trace_context: Option<String>,
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: JobId,
    pub webhook_id: WebhookId,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub state: QueueState,
    pub attempt: i32,
    pub scheduled_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Everything about one job: every attempt's error and the result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// The queue at a glance: for metrics, readiness and `gemhook stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// Jobs per state (states with no job are absent).
    pub by_state: Vec<(QueueState, i64)>,
    /// Seconds since the oldest runnable job became due; 0 when none waits. The number on-call
    /// looks at first: it grows when workers are down or too few.
    pub backlog_age_secs: f64,
}

/// Which events `gemhook events list` and the console show; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub status: Option<String>,
    /// The verifying scheme (`v1`, `v1a`, `jwt`).
    pub scheme: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub resource_id: Option<String>,
    /// Events whose `webhook-id` starts with this (matched literally: `%` and `_` are not
    /// wildcards).
    pub webhook_id_prefix: Option<String>,
    /// The cursor: only events older than the one with this row id (the last of a page).
    pub before: Option<i64>,
}

/// Which jobs `gemhook jobs list`, the console and a bulk retry take; `None` fields do not
/// filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<QueueState>,
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Jobs whose last attempt failed with exactly this error (as the dashboard groups dead
    /// letters).
    pub last_error: Option<String>,
    /// The cursor: only jobs with a smaller id (the last of a page).
    pub before: Option<i64>,
}

/// Which deliveries to the application's sinks a list shows.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub state: Option<QueueState>,
    pub sink: Option<String>,
    /// The deliveries of one event's outcome.
    pub webhook_id: Option<String>,
    /// The cursor: only deliveries with a smaller id.
    pub before: Option<i64>,
}

/// An event's outcome as handed off: what the sinks are sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutcomeRecord {
    /// Bumped when a replay rewrites the outcome; part of the outgoing delivery id.
    pub revision: i32,
    pub body: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// What cancelling a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    Cancelled,
    /// Only a job waiting to run (available or retryable) can be cancelled; it is in this state.
    NotWaiting(QueueState),
    NotFound,
}

/// Events received in one minute whose job is in one state (`None`: no job), for the
/// dashboard's chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MinuteCount {
    /// The minute's start, as seconds since the epoch.
    pub minute: i64,
    pub job_state: Option<QueueState>,
    pub count: i64,
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

/// Where a prune has got to: the last event (by `received_at`, then id) a batch deleted. The
/// next batch starts after it, so no batch walks again over what earlier ones deleted (dead
/// index entries until vacuum) or left (jobs in flight, dead letters). An event that becomes
/// prunable behind the cursor is left to the next prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PruneCursor {
    // In this order: the derived `Ord` compares as the batch's `ORDER BY` does.
    received_at: DateTime<Utc>,
    id: i64,
}

impl Default for PruneCursor {
    /// Before every event: none is received before 1970.
    fn default() -> PruneCursor {
        PruneCursor {
            received_at: DateTime::<Utc>::UNIX_EPOCH,
            id: 0,
        }
    }
}

/// What one [`Store::prune_batch`] did: how many events it deleted, and the cursor to start
/// the next batch from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrunedBatch {
    pub deleted: u64,
    pub next: PruneCursor,
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
    pub webhook_id: WebhookId,
    /// Bumped when a replay rewrites the outcome; part of the outgoing delivery id.
    pub revision: i32,
    pub outcome: serde_json::Value,
    /// The delivery's `traceparent`: the hand-off continues the delivery's trace.
    pub trace_context: Option<String>,
}

/// One line of `gemhook deliveries list`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliverySummary {
    pub id: i64,
    pub webhook_id: WebhookId,
    pub sink: String,
    pub state: QueueState,
    pub attempt: i32,
    pub scheduled_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Everything about one delivery: `gemhook deliveries show`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
