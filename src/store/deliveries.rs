//! The deliveries queue: one entry per (outcome, sink), queued in the transaction that
//! finishes the job. The state machine is [`super::queue`]'s, as for jobs.

use std::time::Duration;

use super::db::{Arg, Exec, ListOf, Row, Tx};
use super::queue::{self, DELIVERIES, Finish, JOBS, RequeuedOne, state};
use super::{
    ClaimedDelivery, DeliveryFilter, DeliveryRecord, DeliverySummary, Handoff, JobId,
    OutcomeRecord, QueueState, Store, StoreError, storable,
};

impl Store {
    pub async fn claim_deliveries(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let rows = queue::claim(&self.db, &DELIVERIES, worker_id, lease, limit).await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    id: row.get("id")?,
                    attempt: row.get("attempt")?,
                    sink: row.get("sink")?,
                    webhook_id: row.get("webhook_id")?,
                    revision: row.get("revision")?,
                    outcome: row.get("body")?,
                    trace_context: row.get("trace_context")?,
                })
            })
            .collect()
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
        let how = match &error {
            None => Finish::Completed,
            Some((error, Some(delay))) => Finish::Retry {
                error,
                delay: *delay,
            },
            Some((error, None)) => Finish::Discard { error },
        };
        queue::finish(&self.db, &DELIVERIES, (delivery.id, delivery.attempt), how).await
    }

    /// Running deliveries whose lease expired become retryable, or discarded after their last
    /// attempt.
    pub async fn rescue_expired_deliveries(&self, max_attempts: i32) -> Result<u64, StoreError> {
        queue::rescue(&self.db, &DELIVERIES, max_attempts).await
    }

    /// The newest deliveries first, a page of `limit` from the filter's cursor.
    pub async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: i64,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        let sql = format!(
            "{select} WHERE ($1 IS NULL OR q.state = $1) AND ($3 IS NULL OR q.sink = $3)
                AND ($4 IS NULL OR e.webhook_id = $4) AND ($5 IS NULL OR q.id < $5)
             ORDER BY q.id DESC LIMIT $2",
            select = self.delivery_select("")
        );
        let args = [
            Arg::OptText(filter.state.map(QueueState::as_str)),
            Arg::Int(limit.max(0)),
            Arg::OptText(filter.sink.as_deref()),
            Arg::OptText(filter.webhook_id.as_deref()),
            Arg::OptInt(filter.before),
        ];
        let rows = (&self.db).fetch_all(&sql, &args).await?;
        rows.iter().map(delivery_summary).collect()
    }

    /// Deliveries per state (states with none are absent).
    pub async fn delivery_counts(&self) -> Result<Vec<(QueueState, i64)>, StoreError> {
        queue::counts(&self.db, &DELIVERIES).await
    }

    /// The outcome handed off for the event with this `webhook-id`, if its job has finished.
    pub async fn outcome_of_event(
        &self,
        webhook_id: &str,
    ) -> Result<Option<OutcomeRecord>, StoreError> {
        let row = (&self.db)
            .fetch_optional(
                "SELECT o.revision, o.body, o.created_at FROM outcomes o
                 JOIN events e ON e.id = o.event_id WHERE e.webhook_id = $1",
                &[Arg::Text(webhook_id)],
            )
            .await?;
        row.map(|row| {
            Ok(OutcomeRecord {
                revision: row.get("revision")?,
                body: row.get("body")?,
                created_at: row.time("created_at")?,
            })
        })
        .transpose()
    }

    /// One delivery with every attempt's error and the outcome it sends.
    pub async fn find_delivery(&self, id: i64) -> Result<Option<DeliveryRecord>, StoreError> {
        let sql = format!(
            "{} WHERE q.id = $1",
            self.delivery_select(", o.revision, o.body")
        );
        let row = (&self.db).fetch_optional(&sql, &[Arg::Int(id)]).await?;
        row.map(|row| {
            Ok(DeliveryRecord {
                summary: delivery_summary(&row)?,
                revision: row.get("revision")?,
                errors: row.get("errors")?,
                outcome: row.get("body")?,
            })
        })
        .transpose()
    }

    /// A delivery's columns, its event's id, and `more` (the outcome, for one delivery).
    fn delivery_select(&self, more: &str) -> String {
        format!(
            "SELECT {columns}, e.webhook_id, q.sink{more}
             FROM deliveries q JOIN outcomes o ON o.id = q.outcome_id
             JOIN events e ON e.id = o.event_id",
            columns = queue::summary_columns(self.dialect())
        )
    }

    /// Re-queues one delivery (`Some(id)`, unless it is running) or every discarded one
    /// (`None`); returns how many.
    pub async fn requeue_deliveries(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let requeued = match id {
            Some(id) => match queue::requeue_one(&self.db, &DELIVERIES, id).await? {
                RequeuedOne::Queued => 1,
                RequeuedOne::Running | RequeuedOne::NotFound => 0,
            },
            None => queue::requeue_discarded(&self.db, &DELIVERIES).await?,
        };
        if requeued > 0 {
            self.wake(&DELIVERIES).await?;
        }
        Ok(requeued)
    }
}

fn delivery_summary(row: &Row) -> Result<DeliverySummary, StoreError> {
    Ok(DeliverySummary {
        id: row.get("id")?,
        webhook_id: row.get("webhook_id")?,
        sink: row.get("sink")?,
        state: state(row, "state")?,
        attempt: row.get("attempt")?,
        scheduled_at: row.time("scheduled_at")?,
        finalized_at: row.opt_time("finalized_at")?,
        last_error: row.get("last_error")?,
    })
}

/// The outcome (a new revision when a replay rewrites it) and one delivery per sink, each
/// (re)queued from scratch; part of the transaction that finishes the job. Returns whether
/// any delivery was queued: the caller wakes this process's dispatchers after the commit
/// (other processes' are woken by the `NOTIFY`, delivered at the commit).
pub(super) async fn queue_handoff(
    tx: &mut Tx,
    job: JobId,
    handoff: &Handoff,
) -> Result<bool, StoreError> {
    let d = tx.dialect();
    // `WHERE` before `ON CONFLICT` is required: without it SQLite would read `ON` as a join
    // constraint of the SELECT.
    let outcome = (&mut *tx)
        .fetch_optional(
            &format!(
                "INSERT INTO outcomes (event_id, body) SELECT event_id, $2 FROM {jobs} WHERE id = $1
                 ON CONFLICT (event_id) DO UPDATE SET revision = outcomes.revision + 1,
                     body = excluded.body, created_at = {now}
                 RETURNING id",
                jobs = JOBS.table,
                now = d.now()
            ),
            &[Arg::Int(job.0), Arg::Json(&handoff.outcome)],
        )
        .await?;
    let Some(outcome) = outcome else {
        return Ok(false);
    };
    let outcome_id: i64 = outcome.get("id")?;
    if handoff.sinks.is_empty() {
        return Ok(false);
    }
    (&mut *tx)
        .execute(
            &format!(
                "INSERT INTO deliveries (outcome_id, sink) SELECT $1, value FROM {sinks} WHERE true
                 ON CONFLICT (outcome_id, sink) DO UPDATE SET {reset}",
                sinks = d.list_rows("$2", ListOf::Text),
                reset = queue::reset(d)
            ),
            &[Arg::Int(outcome_id), Arg::TextList(&handoff.sinks)],
        )
        .await?;
    queue::notify(&mut *tx, &DELIVERIES).await?;
    Ok(true)
}
