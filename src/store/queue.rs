//! The queue's state machine, written once for both queues and both databases.
//!
//! Jobs (a worker follows an event's pointers) and deliveries (a dispatcher hands an outcome to
//! one sink) are two instances of one River-shaped queue: the same columns, the same states,
//! the same rules. A `QueueKind` names what differs (the table, what its rows carry, who holds
//! a lease); every operation below is one function over it.
//!
//! Every finishing statement is guarded by `id`, `attempt` and `state = 'running'`: an entry
//! whose lease expired and that another claimer took again (a new attempt) cannot be finished
//! twice by the one that lost it. No statement is held open across the work itself: a claim
//! commits at once and the lease, not a row lock, keeps other claimers away.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::db::{Arg, Db, Dialect, Exec, ListOf, Row};

/// The life of a queue entry, in River's words. `discarded` is the dead letter.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// Waiting to be claimed.
    Available,
    /// Claimed; its lease says until when.
    Running,
    /// Failed, and scheduled for another attempt.
    Retryable,
    Completed,
    /// Dead-lettered: out of attempts, or failed for good. Kept until retried or pruned.
    Discarded,
    Cancelled,
}

impl QueueState {
    pub const ALL: [QueueState; 6] = [
        QueueState::Available,
        QueueState::Running,
        QueueState::Retryable,
        QueueState::Completed,
        QueueState::Discarded,
        QueueState::Cancelled,
    ];

    /// The word stored in the `state` column (and shown by the CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Available => "available",
            QueueState::Running => "running",
            QueueState::Retryable => "retryable",
            QueueState::Completed => "completed",
            QueueState::Discarded => "discarded",
            QueueState::Cancelled => "cancelled",
        }
    }

    /// Finished for good: nothing will run it again unless someone re-queues it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            QueueState::Completed | QueueState::Discarded | QueueState::Cancelled
        )
    }
}

impl fmt::Display for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for QueueState {
    fn eq(&self, word: &&str) -> bool {
        self.as_str() == *word
    }
}

/// A state word that is not one of [`QueueState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state {0:?}: expected available, running, retryable, completed, discarded or cancelled"
)]
pub struct UnknownState(pub String);

impl FromStr for QueueState {
    type Err = UnknownState;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        QueueState::ALL
            .into_iter()
            .find(|state| state.as_str() == word)
            .ok_or_else(|| UnknownState(word.to_owned()))
    }
}

/// Reads a `state` column.
pub(super) fn state(row: &Row, column: &str) -> Result<QueueState, StoreError> {
    let word: String = row.get(column)?;
    word.parse().map_err(|error: UnknownState| {
        StoreError::Database(sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: error.into(),
        })
    })
}

/// Reads a nullable `state` column (an event without a job).
pub(super) fn opt_state(row: &Row, column: &str) -> Result<Option<QueueState>, StoreError> {
    let word: Option<String> = row.get(column)?;
    word.map(|word| {
        word.parse().map_err(|error: UnknownState| {
            StoreError::Database(sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: error.into(),
            })
        })
    })
    .transpose()
}

/// What distinguishes one queue from the other.
#[derive(Debug)]
pub(super) struct QueueKind {
    pub table: &'static str,
    /// Who holds a lease, in the error a rescue records ("worker", "dispatcher").
    pub owner: &'static str,
    /// What a claim returns: columns of the entry (`q`) and of the rows joined by `joins`.
    pub claimed: &'static str,
    /// Joins from the entry `q` to what its claimer needs (the event, the outcome).
    pub joins: &'static str,
    /// The Postgres channel other processes' claimers `LISTEN` on.
    pub channel: &'static str,
}

pub(super) const JOBS: QueueKind = QueueKind {
    table: "jobs",
    owner: "worker",
    claimed: "q.id, q.attempt, e.webhook_id, e.event_type, e.body, e.trace_context",
    joins: "JOIN events e ON e.id = q.event_id",
    channel: "gemhook_jobs",
};

pub(super) const DELIVERIES: QueueKind = QueueKind {
    table: "deliveries",
    owner: "dispatcher",
    claimed: "q.id, q.attempt, q.sink, e.webhook_id, o.revision, o.body, e.trace_context",
    joins: "JOIN outcomes o ON o.id = q.outcome_id JOIN events e ON e.id = o.event_id",
    channel: "gemhook_deliveries",
};

/// Runnable entries: what a claim scans, through the partial index of that name.
const RUNNABLE: &str = "state IN ('available', 'retryable')";
/// The guard of every finishing statement: this entry, this attempt, still running.
const GUARD: &str = "WHERE id = $1 AND attempt = $2 AND state = 'running'";
const UNLOCK: &str = "locked_by = NULL, locked_until = NULL";

/// The entry appended to `errors` for an attempt: {"attempt", "at", "error", "retryable"}.
fn error_entry(d: Dialect, error: &str, retryable: &str) -> String {
    d.object(&format!(
        "'attempt', attempt, 'at', {}, 'error', {error}, 'retryable', {}",
        d.now_in_json(),
        d.json_bool(retryable)
    ))
}

/// Back to the start of its queue, attempts counted from zero again (the error history is
/// kept): a re-queue by an operator or a replay.
pub(super) fn reset(d: Dialect) -> String {
    format!(
        "state = 'available', attempt = 0, scheduled_at = {now}, finalized_at = NULL, {UNLOCK}",
        now = d.now()
    )
}

/// Claims up to `limit` runnable entries, oldest schedule first, for `owner`, leased for
/// `lease`. Returns the `claimed` columns of each.
pub(super) async fn claim(
    db: &Db,
    queue: &QueueKind,
    owner: &str,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Row>, StoreError> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let mut db = db;
    let d = db.dialect();
    let (table, claimed, joins) = (queue.table, queue.claimed, queue.joins);
    let update = format!(
        "UPDATE {table}
         SET state = 'running', attempt = attempt + 1, attempted_at = {now},
             locked_by = $1, locked_until = {until}
         WHERE id IN (
             SELECT id FROM {table} {runnable_index}
             WHERE {RUNNABLE} AND scheduled_at <= {now}
             ORDER BY scheduled_at, id LIMIT $3 {skip_locked})",
        runnable_index = d.runnable_index(table),
        now = d.now(),
        until = d.now_plus("$2"),
        skip_locked = d.skip_locked(),
    );
    let args = [Arg::Text(owner), Arg::Millis(lease), Arg::Int(limit)];
    match d {
        // One statement: the claimed rows, with what they join, straight from the update.
        Dialect::Postgres => {
            db.fetch_all(
                &format!(
                    "WITH q AS ({update} RETURNING *)
                     SELECT {claimed} FROM q {joins} ORDER BY q.scheduled_at, q.id"
                ),
                &args,
            )
            .await
        }
        // SQLite's RETURNING cannot join, and an UPDATE cannot sit in a WITH: the update, then
        // the read, in one `BEGIN IMMEDIATE` transaction. Claimers on one file (threads, pools,
        // processes) take turns on its write lock, so the second sees the first's claims.
        Dialect::Sqlite => {
            let mut tx = db.begin().await?;
            let ids = (&mut tx)
                .fetch_all(&format!("{update} RETURNING id"), &args)
                .await?
                .iter()
                .map(|row| row.get::<i64>("id"))
                .collect::<Result<Vec<_>, _>>()?;
            if ids.is_empty() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let rows = (&mut tx)
                .fetch_all(
                    &format!(
                        "SELECT {claimed} FROM {table} q {joins}
                         WHERE q.id IN (SELECT value FROM {ids})
                         ORDER BY q.scheduled_at, q.id",
                        ids = d.list_rows("$1", ListOf::Int)
                    ),
                    &[Arg::IntList(&ids)],
                )
                .await?;
            tx.commit().await?;
            Ok(rows)
        }
    }
}

/// Extends a running entry's lease; false when it is no longer this claimer's attempt.
pub(super) async fn heartbeat(
    mut db: &Db,
    queue: &QueueKind,
    (id, attempt): (i64, i32),
    owner: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let sql = format!(
        "UPDATE {table} SET locked_until = {until} {GUARD} AND locked_by = $3",
        table = queue.table,
        until = db.dialect().now_plus("$4"),
    );
    let args = [
        Arg::Int(id),
        Arg::Int32(attempt),
        Arg::Text(owner),
        Arg::Millis(lease),
    ];
    Ok(db.execute(&sql, &args).await? == 1)
}

/// How an attempt ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Finish<'a> {
    Completed,
    /// Another attempt after `delay`, the error kept.
    Retry {
        error: &'a str,
        delay: Duration,
    },
    /// Dead-lettered with its final error.
    Discard {
        error: &'a str,
    },
    /// Given back unfinished (shutdown): available at once, the attempt not counted.
    Release,
}

/// Ends the attempt `(id, attempt)` if it is still running; false when it is not (its lease
/// expired and it was rescued, or another claimer has it now): then nothing changed.
pub(super) async fn finish(
    mut on: impl Exec,
    queue: &QueueKind,
    (id, attempt): (i64, i32),
    how: Finish<'_>,
) -> Result<bool, StoreError> {
    let d = on.dialect();
    let now = d.now();
    let table = queue.table;
    let append_error = |retryable: &str| d.append("errors", &error_entry(d, "$3", retryable));
    let (set, extra) = match how {
        Finish::Completed => (format!("state = 'completed', finalized_at = {now}"), None),
        Finish::Retry { error, delay } => (
            format!(
                "state = 'retryable', scheduled_at = {at}, errors = {errors}",
                at = d.now_plus("$4"),
                errors = append_error("TRUE"),
            ),
            Some([Arg::Text(error), Arg::Millis(delay)].to_vec()),
        ),
        Finish::Discard { error } => (
            format!(
                "state = 'discarded', finalized_at = {now}, errors = {errors}",
                errors = append_error("FALSE")
            ),
            Some(vec![Arg::Text(error)]),
        ),
        Finish::Release => (
            format!("state = 'available', attempt = attempt - 1, scheduled_at = {now}"),
            None,
        ),
    };
    let mut args = vec![Arg::Int(id), Arg::Int32(attempt)];
    args.extend(extra.into_iter().flatten());
    let sql = format!("UPDATE {table} SET {set}, {UNLOCK} {GUARD}");
    Ok(on.execute(&sql, &args).await? == 1)
}

/// Running entries whose lease expired (their claimer died) become retryable, or discarded
/// when that was their last attempt, with the lost attempt's error kept. Every expression of
/// `SET` sees the row as it was before the update, in both databases.
pub(super) async fn rescue(
    mut db: &Db,
    queue: &QueueKind,
    max_attempts: i32,
) -> Result<u64, StoreError> {
    let d = db.dialect();
    let now = d.now();
    let lost = format!(
        "'lease expired: {owner} ' || coalesce(locked_by, '?') || ' stopped before finishing'",
        owner = queue.owner
    );
    let sql = format!(
        "UPDATE {table} SET
             state = CASE WHEN attempt >= $1 THEN 'discarded' ELSE 'retryable' END,
             finalized_at = CASE WHEN attempt >= $1 THEN {now} END,
             scheduled_at = {now},
             errors = {errors},
             {UNLOCK}
         WHERE state = 'running' AND locked_until < {now}",
        table = queue.table,
        errors = d.append("errors", &error_entry(d, &lost, "attempt < $1")),
    );
    db.execute(&sql, &[Arg::Int32(max_attempts)]).await
}

/// What a re-queue of one entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequeuedOne {
    Queued,
    /// A claimer has it right now; nothing changed.
    Running,
    NotFound,
}

/// Re-queues one entry that is not running.
pub(super) async fn requeue_one(
    mut db: &Db,
    queue: &QueueKind,
    id: i64,
) -> Result<RequeuedOne, StoreError> {
    let d = db.dialect();
    let table = queue.table;
    let sql = format!(
        "UPDATE {table} SET {reset} WHERE id = $1 AND state <> 'running'",
        reset = reset(d)
    );
    if db.execute(&sql, &[Arg::Int(id)]).await? == 1 {
        return Ok(RequeuedOne::Queued);
    }
    // Not updated: it is running, or there is no such entry.
    let found = db
        .fetch_optional(
            &format!("SELECT state FROM {table} WHERE id = $1"),
            &[Arg::Int(id)],
        )
        .await?;
    Ok(match found {
        Some(_) => RequeuedOne::Running,
        None => RequeuedOne::NotFound,
    })
}

/// Re-queues every dead letter; returns how many.
pub(super) async fn requeue_discarded(mut db: &Db, queue: &QueueKind) -> Result<u64, StoreError> {
    let sql = format!(
        "UPDATE {table} SET {reset} WHERE state = 'discarded'",
        table = queue.table,
        reset = reset(db.dialect())
    );
    db.execute(&sql, &[]).await
}

/// Wakes other processes' claimers of `queue` (Postgres `NOTIFY`; inside a transaction, at
/// its commit). A no-op where the database has no channels.
pub(super) async fn notify(mut on: impl Exec, queue: &QueueKind) -> Result<(), StoreError> {
    if let Some(sql) = on.dialect().notify("$1") {
        on.fetch_all(&sql, &[Arg::Text(queue.channel)]).await?;
    }
    Ok(())
}

/// Entries per state (states with none are absent), in state order.
pub(super) async fn counts(
    mut db: &Db,
    queue: &QueueKind,
) -> Result<Vec<(QueueState, i64)>, StoreError> {
    let sql = format!(
        "SELECT state, count(*) AS n FROM {table} GROUP BY state ORDER BY state",
        table = queue.table
    );
    db.fetch_all(&sql, &[])
        .await?
        .iter()
        .map(|row| Ok((state(row, "state")?, row.get("n")?)))
        .collect()
}

/// Seconds since the oldest runnable entry became due; 0 when none waits. Uses the partial
/// runnable index: cheap however many finished entries there are.
pub(super) async fn backlog_age_secs(mut db: &Db, queue: &QueueKind) -> Result<f64, StoreError> {
    let d = db.dialect();
    let sql = format!(
        "SELECT coalesce({age}, 0.0) AS age FROM {table} {runnable_index}
         WHERE {RUNNABLE} AND scheduled_at <= {now}",
        age = d.secs_since("min(scheduled_at)"),
        table = queue.table,
        runnable_index = d.runnable_index(queue.table),
        now = d.now(),
    );
    let row = db.fetch_optional(&sql, &[]).await?;
    let age: f64 = row.map(|row| row.get("age")).transpose()?.unwrap_or(0.0);
    Ok(age.max(0.0))
}

/// Dead letters grouped by their last error, most common first.
pub(super) async fn discard_reasons(
    mut db: &Db,
    queue: &QueueKind,
    limit: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    let sql = format!(
        "SELECT coalesce({last_error}, 'unknown') AS reason, count(*) AS n FROM {table}
         WHERE state = 'discarded' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $1",
        last_error = db.dialect().last_error("errors"),
        table = queue.table,
    );
    db.fetch_all(&sql, &[Arg::Int(limit.max(0))])
        .await?
        .iter()
        .map(|row| Ok((row.get("reason")?, row.get("n")?)))
        .collect()
}

/// The columns every entry's summary shows, selected from `q` (and the last error as
/// `last_error`), for the lists of both queues.
pub(super) fn summary_columns(d: Dialect) -> String {
    format!(
        "q.id, q.state, q.attempt, q.scheduled_at, q.attempted_at, q.finalized_at, q.created_at,
         q.locked_by, q.locked_until, q.errors, {last_error} AS last_error",
        last_error = d.last_error("q.errors")
    )
}
