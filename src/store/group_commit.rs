//! Group commit for the ack path, on both backends: concurrent deliveries share one transaction.
//!
//! A commit costs an fsync; one per request caps ingest at the disk's commit rate (about 3,400
//! two-insert transactions per second here), while rows sharing a commit go ten times further.
//! Writers take whatever deliveries are waiting (up to `max_batch`), insert them in one
//! transaction (Postgres: one statement over arrays; SQLite: one `BEGIN IMMEDIATE`, the events in
//! multi-row inserts and their jobs in one), and only after the commit answer each request: the 200 still never leaves before its event and job are durable. There is no timer:
//! under light load a batch is one delivery and costs what a single insert costs; under load,
//! deliveries arriving while a writer commits form the next batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use super::db::{Arg, Db, Dialect, Exec as _, ListOf};
use super::events::{self, EventRow};
use super::postgres::JOBS_CHANNEL;
use super::{JobId, NewEvent, Recorded, StoreError};

/// A delivery waiting for its batch, with the way to answer it.
struct Pending {
    event: EventRow,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// How writers form and bound their batches. The default is `serve`'s (`config/default.toml`).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Deliveries per transaction at most.
    pub max_rows: usize,
    /// Body bytes per transaction at most (a batch always takes at least one delivery): the
    /// statement's encoded parameters are a copy of every body in it.
    pub max_bytes: usize,
    /// The longest one batch statement may take; past it the batch is answered "unavailable"
    /// and its connection dropped, so a frozen database never holds a writer forever.
    pub deadline: Duration,
}

impl Default for BatchLimits {
    fn default() -> BatchLimits {
        BatchLimits {
            max_rows: 256,
            max_bytes: 4 << 20,
            deadline: Duration::from_secs(5),
        }
    }
}

/// The handle the store keeps: a queue that writer tasks drain.
#[derive(Debug)]
pub struct GroupWriter {
    queue: mpsc::Sender<Pending>,
    /// Transactions committed so far; deliveries divided by it is the mean batch.
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("webhook_id", &self.event.webhook_id)
            .finish()
    }
}

impl GroupWriter {
    /// Starts `writers` tasks, each holding at most one pooled connection at a time. One writer
    /// makes the largest batches (the fewest fsyncs); several can overlap commits where the
    /// database has the disks for it.
    pub fn start(db: Db, wakeups: Arc<Notify>, writers: usize, limits: BatchLimits) -> Self {
        let limits = BatchLimits {
            max_rows: limits.max_rows.max(1),
            ..limits
        };
        // Bounded: when the database falls behind, requests wait here (back-pressure) instead
        // of piling up in memory.
        let (queue, receiver) = mpsc::channel(limits.max_rows * writers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(Batcher::new(receiver)));
        let commits = Arc::new(AtomicU64::new(0));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(
                db.clone(),
                receiver.clone(),
                wakeups.clone(),
                limits,
                commits.clone(),
            ));
        }
        GroupWriter { queue, commits }
    }

    /// How many transactions the writers have committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues the delivery and waits for its batch's commit.
    pub async fn record(&self, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            event: EventRow::from(event),
            reply,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

/// What a batch's byte limit counts of an item.
pub(super) trait Weighed {
    fn bytes(&self) -> usize;
}

impl Weighed for Pending {
    fn bytes(&self) -> usize {
        self.event.body.len()
    }
}

/// A queue's receiving end, shared by its writers, with the item that did not fit the previous
/// batch (it opens the next one). The ack path's deliveries and the workers' finishes
/// (`finish_group`) are batched alike.
pub(super) struct Batcher<T> {
    receiver: mpsc::Receiver<T>,
    carried: Option<T>,
}

impl<T: Weighed> Batcher<T> {
    pub(super) fn new(receiver: mpsc::Receiver<T>) -> Batcher<T> {
        Batcher {
            receiver,
            carried: None,
        }
    }

    /// Waits for one item, then takes what else is waiting, within the limits; `None` once
    /// every sender is gone.
    pub(super) async fn next_batch(&mut self, limits: &BatchLimits) -> Option<Vec<T>> {
        let first = match self.carried.take() {
            Some(first) => first,
            None => self.receiver.recv().await?,
        };
        let mut bytes = first.bytes();
        let mut batch = Vec::with_capacity(limits.max_rows);
        batch.push(first);
        while batch.len() < limits.max_rows {
            let Ok(next) = self.receiver.try_recv() else {
                break;
            };
            if bytes + next.bytes() > limits.max_bytes {
                self.carried = Some(next);
                break;
            }
            bytes += next.bytes();
            batch.push(next);
        }
        Some(batch)
    }
}

async fn write_batches(
    db: Db,
    batcher: Arc<Mutex<Batcher<Pending>>>,
    wakeups: Arc<Notify>,
    limits: BatchLimits,
    commits: Arc<AtomicU64>,
) {
    loop {
        // One writer at a time gathers a batch; the others are committing meanwhile.
        let Some(batch) = batcher.lock().await.next_batch(&limits).await else {
            return; // every store handle is gone
        };
        let mut answers = Vec::with_capacity(batch.len());
        let committed = write_isolating(&db, &batch, limits.deadline, &mut answers).await;
        commits.fetch_add(committed, Ordering::Relaxed);
        crate::observe::group_commit(batch.len(), committed);
        if answers
            .iter()
            .any(|a| matches!(a, Ok(Recorded::Accepted { .. })))
        {
            wakeups.notify_one();
        }
        for (pending, answer) in batch.into_iter().zip(answers) {
            let _ = pending.reply.send(answer);
        }
    }
}

/// Writes `batch` and pushes one answer per delivery, in order. When the database refuses the
/// statement itself (a constraint, a value it cannot hold, a deadlock), one delivery must not
/// fail the others: the batch is split in halves, each written on its own, down to the single
/// delivery that is refused. Failures of the connection or the deadline fail the whole batch:
/// the database is unavailable to every row alike.
async fn write_isolating(
    db: &Db,
    batch: &[Pending],
    deadline: Duration,
    answers: &mut Vec<Result<Recorded, StoreError>>,
) -> u64 {
    // Ranges still to write, in order (a stack: the left half is written first).
    let mut todo: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
    todo.push(0..batch.len());
    let mut transient_retries = 0;
    let mut committed = 0;
    while let Some(range) = todo.pop() {
        let part = &batch[range.clone()];
        match tokio::time::timeout(deadline, insert_batch(db, part)).await {
            // A deadlock or serialization failure says nothing about the rows: the same
            // statement can succeed at once. Bounded, so a pathological case still ends in 503.
            Ok(Err(sqlx::Error::Database(refused)))
                if is_transient(refused.code().as_deref()) && transient_retries < 3 =>
            {
                transient_retries += 1;
                tracing::warn!(rows = part.len(), error = %refused, "batch aborted by the database; retrying it");
                todo.push(range);
            }
            Ok(Ok(mut accepted)) => {
                committed += 1;
                for pending in part {
                    // `remove`: when one batch holds two copies of an id, the first is the
                    // accepted one and the second a duplicate, as if they had come in order.
                    answers.push(Ok(match accepted.remove(&pending.event.webhook_id) {
                        Some(job_id) => Recorded::Accepted {
                            job_id: JobId(job_id),
                        },
                        None => Recorded::Duplicate,
                    }));
                }
            }
            Ok(Err(sqlx::Error::Database(refused))) if part.len() > 1 => {
                tracing::warn!(
                    rows = part.len(),
                    error = %refused,
                    "the database refused a batch; writing its halves separately"
                );
                let middle = range.start + part.len() / 2;
                todo.push(middle..range.end);
                todo.push(range.start..middle);
            }
            Ok(Err(error)) => {
                let error = Arc::new(error);
                answers.extend(part.iter().map(|_| Err(StoreError::Batch(error.clone()))));
            }
            Err(_elapsed) => {
                answers.extend(part.iter().map(|_| Err(StoreError::Deadline(deadline))));
            }
        }
    }
    committed
}

/// Codes after which the same statement may simply be run again: Postgres' serialization_failure
/// and deadlock_detected; SQLite's BUSY and LOCKED (another process held the file's write lock
/// past the busy timeout).
fn is_transient(code: Option<&str>) -> bool {
    matches!(code, Some("40001" | "40P01" | "5" | "6"))
}

/// The whole batch in one transaction; the webhook ids that were new, with their job ids.
async fn insert_batch(db: &Db, batch: &[Pending]) -> Result<HashMap<String, i64>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => insert_batch_postgres(pool, batch).await,
        Db::Sqlite(..) => insert_batch_sqlite(db, batch).await.map_err(into_sqlx),
    }
}

/// SQLite: one `BEGIN IMMEDIATE`, the events in multi-row inserts, their jobs in one insert, one
/// commit. Every statement crosses to the connection's thread and back, which costs more than
/// the insert itself, so rows go in chunks of up to [`SQLITE_CHUNK`] (powers of two, so that
/// few statement shapes exist and each stays prepared). A second copy of an id in the same
/// batch conflicts with the first one's row and inserts nothing, as if it had come after it.
async fn insert_batch_sqlite(
    db: &Db,
    batch: &[Pending],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut tx = db.begin().await?;
    let mut event_ids: HashMap<i64, String> = HashMap::with_capacity(batch.len());
    let mut rest = batch;
    while !rest.is_empty() {
        let size = chunk_size(rest.len());
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let args: Vec<Arg<'_>> = chunk
            .iter()
            .flat_map(|pending| pending.event.insert_args())
            .collect();
        for row in (&mut tx)
            .fetch_all(&events::insert_many(Dialect::Sqlite, size), &args)
            .await?
        {
            event_ids.insert(row.get("id")?, row.get("webhook_id")?);
        }
    }
    let mut accepted = HashMap::with_capacity(event_ids.len());
    if !event_ids.is_empty() {
        let ids: Vec<i64> = event_ids.keys().copied().collect();
        let sql = format!(
            "INSERT INTO jobs (event_id) SELECT value FROM {} RETURNING id, event_id",
            Dialect::Sqlite.list_rows("$1", ListOf::Int)
        );
        for row in (&mut tx).fetch_all(&sql, &[Arg::IntList(&ids)]).await? {
            let event_id: i64 = row.get("event_id")?;
            if let Some(webhook_id) = event_ids.remove(&event_id) {
                accepted.insert(webhook_id, row.get("id")?);
            }
        }
    }
    tx.commit().await?;
    Ok(accepted)
}

/// Rows per multi-row insert on SQLite at most (`events::INSERT_ARGS` parameters each).
const SQLITE_CHUNK: usize = 64;

/// The largest power of two no greater than `rows` and [`SQLITE_CHUNK`].
fn chunk_size(rows: usize) -> usize {
    let capped = rows.clamp(1, SQLITE_CHUNK);
    1 << capped.ilog2()
}

/// The isolation above reads the database's own refusal; the seam's error carries it.
fn into_sqlx(error: StoreError) -> sqlx::Error {
    match error {
        StoreError::Database(error) => error,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Postgres: one statement for the whole batch: events (skipping known ids), their jobs, one
/// wake-up.
async fn insert_batch_postgres(
    pool: &PgPool,
    batch: &[Pending],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut timestamps = Vec::with_capacity(batch.len());
    let mut types = Vec::with_capacity(batch.len());
    let mut resources = Vec::with_capacity(batch.len());
    let mut statuses = Vec::with_capacity(batch.len());
    let mut schemes = Vec::with_capacity(batch.len());
    let mut headers = Vec::with_capacity(batch.len());
    let mut bodies = Vec::with_capacity(batch.len());
    let mut altered = Vec::with_capacity(batch.len());
    // All NULL unless traces are exported: an array of NULLs costs the statement little.
    let mut trace_contexts = Vec::with_capacity(batch.len());
    for Pending { event, .. } in batch {
        ids.push(event.webhook_id.as_str());
        timestamps.push(event.webhook_timestamp);
        types.push(event.fields.event_type.as_deref());
        resources.push(event.fields.resource_id.as_deref());
        altered.push(event.fields.altered.as_deref());
        statuses.push(event.status);
        schemes.push(event.scheme);
        headers.push(event.headers.as_str());
        bodies.push(event.body.as_ref());
        trace_contexts.push(event.trace_context.as_deref());
    }
    // Rows are inserted in `webhook_id` order, the same order in every batch of every
    // receiver: two batches that share ids (Gemini retrying a slow answer against another
    // replica) then wait for each other's locks in one direction only and cannot deadlock. The
    // ordinality breaks ties, so within a batch the first copy of a duplicated id is stored.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        r#"
        WITH input AS (
            SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::bytea[], $10::text[], $11::text[])
                WITH ORDINALITY AS t(webhook_id, webhook_timestamp, event_type, resource_id,
                                     status, scheme, headers, body, altered, trace_context, n)
        ), new_events AS (
            INSERT INTO events
                (webhook_id, webhook_timestamp, event_type, resource_id, status, scheme, headers,
                 body, altered, trace_context)
            SELECT webhook_id, webhook_timestamp, event_type, resource_id, status, scheme,
                   headers::jsonb, body, altered, trace_context
            FROM input ORDER BY webhook_id, n
            ON CONFLICT (webhook_id) DO NOTHING
            RETURNING id, webhook_id
        ), new_jobs AS (
            INSERT INTO jobs (event_id) SELECT id FROM new_events RETURNING id, event_id
        )
        SELECT new_events.webhook_id, new_jobs.id, pg_notify($9, '')::text
        FROM new_events JOIN new_jobs ON new_jobs.event_id = new_events.id
        "#,
    )
    .bind(&ids)
    .bind(&timestamps)
    .bind(&types)
    .bind(&resources)
    .bind(&statuses)
    .bind(&schemes)
    .bind(&headers)
    .bind(&bodies)
    .bind(JOBS_CHANNEL)
    .bind(&altered)
    .bind(&trace_contexts)
    .fetch_all(pool)
    .await
    .map(|rows: Vec<(String, i64, String)>| {
        rows.into_iter().map(|(id, job, _)| (id, job)).collect()
    })?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_chunks_are_powers_of_two_that_cover_the_batch() {
        let sizes: Vec<usize> = [1, 2, 3, 37, 64, 65, 256].map(chunk_size).into();
        assert_eq!(sizes, [1, 2, 2, 32, 64, 64, 64]);
        let mut left = 37;
        let mut chunks = Vec::new();
        while left > 0 {
            let size = chunk_size(left);
            chunks.push(size);
            left -= size;
        }
        assert_eq!(chunks, [32, 4, 1]);
    }
}
