//! The Postgres delivery queue: (outcome, sink) pairs, with the same claim, lease, guard and
//! rescue rules as jobs (see `pg_jobs`).

use std::time::Duration;

use sqlx::Row;

use super::pg_jobs::{DELIVERIES_CHANNEL, ERROR_ENTRY, RESET_DELIVERY};
use super::postgres::PgStore;
use super::{ClaimedDelivery, DeliverySummary, StoreError};

impl PgStore {
    pub async fn claim_deliveries(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let rows = sqlx::query(
            r#"
            WITH next AS (
                SELECT id FROM deliveries
                WHERE state IN ('available', 'retryable') AND scheduled_at <= now()
                ORDER BY scheduled_at, id
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            )
            UPDATE deliveries AS d
            SET state = 'running', attempt = d.attempt + 1, attempted_at = now(),
                locked_by = $1, locked_until = now() + make_interval(secs => $2)
            FROM next, outcomes AS o, events AS e
            WHERE d.id = next.id AND o.id = d.outcome_id AND e.id = o.event_id
            RETURNING d.id, d.attempt, d.sink, e.webhook_id, o.revision, o.body
            "#,
        )
        .bind(worker_id)
        .bind(lease.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    id: row.try_get("id")?,
                    attempt: row.try_get("attempt")?,
                    sink: row.try_get("sink")?,
                    webhook_id: row.try_get("webhook_id")?,
                    revision: row.try_get("revision")?,
                    outcome: row.try_get("body")?,
                })
            })
            .collect()
    }

    pub async fn finish_delivery(
        &self,
        delivery: &ClaimedDelivery,
        outcome: Result<(), (&str, Option<Duration>)>,
    ) -> Result<bool, StoreError> {
        const GUARD: &str = "WHERE id = $1 AND attempt = $2 AND state = 'running'";
        let sql = match outcome {
            Ok(()) => format!(
                "UPDATE deliveries SET state = 'completed', finalized_at = now(),
                     locked_by = NULL, locked_until = NULL {GUARD} RETURNING id"
            ),
            Err((_, Some(_))) => format!(
                "UPDATE deliveries SET state = 'retryable',
                     scheduled_at = now() + make_interval(secs => $5),
                     locked_by = NULL, locked_until = NULL, errors = errors || {ERROR_ENTRY}
                 {GUARD} RETURNING id"
            ),
            Err((_, None)) => format!(
                "UPDATE deliveries SET state = 'discarded', finalized_at = now(),
                     locked_by = NULL, locked_until = NULL, errors = errors || {ERROR_ENTRY}
                 {GUARD} RETURNING id"
            ),
        };
        let mut query = sqlx::query_scalar::<_, i64>(&sql)
            .bind(delivery.id)
            .bind(delivery.attempt);
        if let Err((error, delay)) = outcome {
            query = query.bind(error).bind(delay.is_some());
            if let Some(delay) = delay {
                query = query.bind(delay.as_secs_f64());
            }
        }
        Ok(query.fetch_optional(&self.pool).await?.is_some())
    }

    pub async fn rescue_expired_deliveries(&self, max_attempts: i32) -> Result<u64, StoreError> {
        self.rescue_expired("deliveries", "dispatcher", max_attempts)
            .await
    }

    pub async fn list_deliveries(
        &self,
        state: Option<&str>,
        id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, e.webhook_id, d.sink, d.state, d.attempt, d.scheduled_at,
                    d.finalized_at, d.errors -> -1 ->> 'error' AS last_error
             FROM deliveries d JOIN outcomes o ON o.id = d.outcome_id
             JOIN events e ON e.id = o.event_id
             WHERE ($1::text IS NULL OR d.state = $1) AND ($3::int8 IS NULL OR d.id = $3)
             ORDER BY d.id DESC LIMIT $2",
        )
        .bind(state)
        .bind(limit)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeliverySummary {
                    id: row.try_get("id")?,
                    webhook_id: row.try_get("webhook_id")?,
                    sink: row.try_get("sink")?,
                    state: row.try_get("state")?,
                    attempt: row.try_get("attempt")?,
                    scheduled_at: row.try_get("scheduled_at")?,
                    finalized_at: row.try_get("finalized_at")?,
                    last_error: row.try_get("last_error")?,
                })
            })
            .collect()
    }

    /// Every attempt's error, the outcome as sent, and its revision.
    pub async fn delivery_detail(
        &self,
        id: i64,
    ) -> Result<Option<(serde_json::Value, serde_json::Value, i32)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.errors, o.body, o.revision FROM deliveries d
             JOIN outcomes o ON o.id = d.outcome_id WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn requeue_deliveries(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let requeued: Vec<i64> = sqlx::query_scalar(&format!(
            "WITH requeued AS (
                 UPDATE deliveries SET {RESET_DELIVERY}
                 WHERE state <> 'running'
                   AND (($1::int8 IS NULL AND state = 'discarded') OR id = $1)
                 RETURNING id
             )
             SELECT id, pg_notify($2, '') FROM requeued"
        ))
        .bind(id)
        .bind(DELIVERIES_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(requeued.len() as u64)
    }
}
