//! The SQLite hand-off queue: (outcome, sink) pairs, with the same claim, lease, guard and
//! rescue rules as jobs (see `sqlite_jobs`); the twin of `pg_deliveries.rs`.

use std::time::Duration;

use sqlx::Row;

use super::sqlite::{
    BEGIN_IMMEDIATE, NOW_MS, NOW_TEXT, SqliteStore, millis, optional_timestamp, timestamp,
};
use super::sqlite_jobs::error_entry;
use super::{ClaimedDelivery, DeliverySummary, Handoff, JobId, StoreError};

impl SqliteStore {
    pub async fn claim_deliveries(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // SQLite reads a negative LIMIT as "no limit".
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // As for jobs: one UPDATE in a BEGIN IMMEDIATE transaction; claimers take turns.
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
        let claimed: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE deliveries
             SET state = 'running', attempt = attempt + 1, attempted_at = {NOW_MS},
                 locked_by = ?1, locked_until = {NOW_MS} + ?2
             WHERE id IN (
                 SELECT id FROM deliveries
                 WHERE state IN ('available', 'retryable') AND scheduled_at <= {NOW_MS}
                 ORDER BY scheduled_at, id
                 LIMIT ?3
             )
             RETURNING id"
        ))
        .bind(worker_id)
        .bind(millis(lease))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT d.id, d.attempt, d.sink, e.webhook_id, o.revision, o.body
             FROM deliveries d JOIN outcomes o ON o.id = d.outcome_id
             JOIN events e ON e.id = o.event_id
             WHERE d.id IN (SELECT value FROM json_each(?1))
             ORDER BY d.scheduled_at, d.id",
        )
        .bind(serde_json::Value::from(claimed).to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
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
        const GUARD: &str = "WHERE id = ?1 AND attempt = ?2 AND state = 'running'";
        let sql = match outcome {
            Ok(()) => format!(
                "UPDATE deliveries SET state = 'completed', finalized_at = {NOW_MS},
                     locked_by = NULL, locked_until = NULL {GUARD}"
            ),
            Err((_, Some(_))) => format!(
                "UPDATE deliveries SET state = 'retryable', scheduled_at = {NOW_MS} + ?5,
                     locked_by = NULL, locked_until = NULL,
                     errors = json_insert(errors, '$[#]', {entry})
                 {GUARD}",
                entry = error_entry()
            ),
            Err((_, None)) => format!(
                "UPDATE deliveries SET state = 'discarded', finalized_at = {NOW_MS},
                     locked_by = NULL, locked_until = NULL,
                     errors = json_insert(errors, '$[#]', {entry})
                 {GUARD}",
                entry = error_entry()
            ),
        };
        let mut query = sqlx::query(&sql).bind(delivery.id).bind(delivery.attempt);
        if let Err((error, delay)) = outcome {
            query = query.bind(error).bind(delay.is_some());
            if let Some(delay) = delay {
                query = query.bind(millis(delay));
            }
        }
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }

    pub async fn rescue_expired_deliveries(&self, max_attempts: i32) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE deliveries SET
                 state = CASE WHEN attempt >= ?1 THEN 'discarded' ELSE 'retryable' END,
                 finalized_at = CASE WHEN attempt >= ?1 THEN {NOW_MS} END,
                 scheduled_at = {NOW_MS},
                 errors = json_insert(errors, '$[#]', json_object(
                     'attempt', attempt, 'at', {NOW_TEXT},
                     'error', 'lease expired: dispatcher ' || coalesce(locked_by, '?')
                              || ' stopped before finishing',
                     'retryable', json(CASE WHEN attempt < ?1 THEN 'true' ELSE 'false' END))),
                 locked_by = NULL, locked_until = NULL
             WHERE state = 'running' AND locked_until < {NOW_MS}"
        ))
        .bind(max_attempts)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn list_deliveries(
        &self,
        state: Option<&str>,
        id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, e.webhook_id, d.sink, d.state, d.attempt, d.scheduled_at,
                    d.finalized_at, json_extract(d.errors, '$[#-1].error') AS last_error
             FROM deliveries d JOIN outcomes o ON o.id = d.outcome_id
             JOIN events e ON e.id = o.event_id
             WHERE (?1 IS NULL OR d.state = ?1) AND (?3 IS NULL OR d.id = ?3)
             ORDER BY d.id DESC LIMIT ?2",
        )
        .bind(state)
        // SQLite reads a negative LIMIT as "no limit".
        .bind(limit.max(0))
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
                    scheduled_at: timestamp(row, "scheduled_at")?,
                    finalized_at: optional_timestamp(row, "finalized_at")?,
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
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT d.errors, o.body, o.revision FROM deliveries d
             JOIN outcomes o ON o.id = d.outcome_id WHERE d.id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(errors, outcome, revision)| {
            let json = |text: &str| {
                serde_json::from_str(text)
                    .map_err(|e| StoreError::Database(sqlx::Error::Decode(e.into())))
            };
            Ok((json(&errors)?, json(&outcome)?, revision as i32))
        })
        .transpose()
    }

    pub async fn requeue_deliveries(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE deliveries SET {reset}
             WHERE state <> 'running' AND ((?1 IS NULL AND state = 'discarded') OR id = ?1)",
            reset = reset_delivery()
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            self.delivery_wakeups.notify_one();
        }
        Ok(done.rows_affected())
    }
}

/// Back to the start of its queue: a delivery re-queued by a replay or an operator.
fn reset_delivery() -> String {
    format!(
        "state = 'available', attempt = 0, scheduled_at = {NOW_MS},
         finalized_at = NULL, locked_by = NULL, locked_until = NULL"
    )
}

/// The outcome (a new revision when a replay rewrites it) and one delivery per sink, each
/// (re)queued from scratch; part of the transaction that finishes the job. The caller wakes
/// the dispatchers after the commit.
pub(super) async fn queue_handoff(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: JobId,
    handoff: &Handoff,
) -> Result<(), StoreError> {
    // `WHERE` before `ON CONFLICT` is required: without it SQLite would read `ON` as a join
    // constraint of the SELECT.
    let outcome_id: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO outcomes (event_id, body) SELECT event_id, ?2 FROM jobs WHERE id = ?1
         ON CONFLICT (event_id) DO UPDATE SET revision = outcomes.revision + 1,
             body = excluded.body, created_at = {NOW_MS}
         RETURNING id"
    ))
    .bind(job.0)
    .bind(&handoff.outcome)
    .fetch_one(&mut **tx)
    .await?;
    if handoff.sinks.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO deliveries (outcome_id, sink) SELECT ?1, value FROM json_each(?2) WHERE true
         ON CONFLICT (outcome_id, sink) DO UPDATE SET {reset}",
        reset = reset_delivery()
    ))
    .bind(outcome_id)
    .bind(serde_json::Value::from(handoff.sinks.clone()).to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::super::sqlite::testing::{TempDb, accepted, record};
    use crate::store::{ClaimedDelivery, ClaimedJob, Handoff, JobResult, Requeued, SqliteStore};

    const LEASE: Duration = Duration::from_secs(60);

    fn recorded() -> JobResult {
        JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/b1".into()),
            outcome: "recorded",
            location: None,
            size_bytes: None,
            sha256: None,
            summary: json!({"status": "succeeded"}),
        }
    }

    fn handoff(sinks: &[&str]) -> Handoff {
        Handoff {
            outcome: json!({"type": "batch.succeeded", "resource": "batches/b1", "lines": 10}),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
        }
    }

    async fn claimed_job(store: &SqliteStore, webhook_id: &str) -> ClaimedJob {
        accepted(record(store, webhook_id).await);
        let mut jobs = store.claim_jobs("w1", LEASE, 1).await.unwrap();
        jobs.remove(0)
    }

    /// A finished job whose outcome went to `sinks`; returns the claimed deliveries.
    async fn handed_off(store: &SqliteStore, sinks: &[&str]) -> Vec<ClaimedDelivery> {
        let job = claimed_job(store, "msg_1").await;
        let done = store
            .complete_if_running(&job, &recorded(), Some(&handoff(sinks)))
            .await
            .unwrap();
        assert!(done);
        store.claim_deliveries("d1", LEASE, 10).await.unwrap()
    }

    async fn count(store: &SqliteStore, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_finished_job_queues_its_outcome_once_per_sink_and_wakes_the_dispatchers() {
        let db = TempDb::new();
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        let wakeups = store.delivery_wakeups();
        let woken = wakeups.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        let done = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app", "nats"])))
            .await
            .unwrap();

        assert!(done);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("a dispatcher is woken");
        let deliveries = store.claim_deliveries("d1", LEASE, 10).await.unwrap();
        let sinks: Vec<_> = deliveries.iter().map(|d| d.sink.as_str()).collect();
        assert_eq!(sinks, ["app", "nats"]);
        assert!(deliveries.iter().all(|d| d.attempt == 1
            && d.revision == 1
            && d.webhook_id == "msg_1"
            && d.outcome == handoff(&[]).outcome));
        assert!(
            store
                .claim_deliveries("d2", LEASE, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_discarded_job_hands_off_its_outcome_too() {
        let db = TempDb::new();
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;

        let done = store
            .discard_if_running(&job, "not followable", None, Some(&handoff(&["app"])))
            .await
            .unwrap();

        assert!(done);
        assert_eq!(
            store.claim_deliveries("d1", LEASE, 10).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn an_outcome_without_sinks_is_kept_and_nothing_is_delivered() {
        let db = TempDb::new();
        let store = db.store().await;

        let deliveries = handed_off(&store, &[]).await;

        assert!(deliveries.is_empty());
        assert_eq!(count(&store, "outcomes").await, 1);
    }

    #[tokio::test]
    async fn a_job_that_is_no_longer_this_attempts_hands_off_nothing() {
        let db = TempDb::new();
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        assert!(
            store
                .complete_if_running(&job, &recorded(), None)
                .await
                .unwrap()
        );

        let again = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app"])))
            .await
            .unwrap();

        assert!(!again);
        assert_eq!(count(&store, "outcomes").await, 0);
        assert_eq!(count(&store, "deliveries").await, 0);
    }

    #[tokio::test]
    async fn a_replay_rewrites_the_outcome_and_requeues_every_sink() {
        let db = TempDb::new();
        let store = db.store().await;
        for delivery in handed_off(&store, &["app", "nats"]).await {
            assert!(store.finish_delivery(&delivery, Ok(())).await.unwrap());
        }
        assert!(matches!(
            store.replay_event("msg_1").await.unwrap(),
            Requeued::Queued(_)
        ));
        let job = store.claim_jobs("w1", LEASE, 1).await.unwrap().remove(0);

        let mut newer = handoff(&["app", "nats"]);
        newer.outcome["lines"] = json!(11);
        assert!(
            store
                .complete_if_running(&job, &recorded(), Some(&newer))
                .await
                .unwrap()
        );

        let deliveries = store.claim_deliveries("d1", LEASE, 10).await.unwrap();
        assert_eq!(deliveries.len(), 2);
        assert!(deliveries.iter().all(|d| d.revision == 2 && d.attempt == 1));
        assert_eq!(deliveries[0].outcome["lines"], 11);
        assert_eq!(count(&store, "outcomes").await, 1);
        assert_eq!(count(&store, "deliveries").await, 2);
    }

    #[tokio::test]
    async fn a_delivery_is_finished_only_once_per_attempt() {
        let db = TempDb::new();
        let store = db.store().await;
        let delivery = handed_off(&store, &["app"]).await.remove(0);

        assert!(store.finish_delivery(&delivery, Ok(())).await.unwrap());
        assert!(!store.finish_delivery(&delivery, Ok(())).await.unwrap());
        assert!(
            !store
                .finish_delivery(&delivery, Err(("late", None)))
                .await
                .unwrap()
        );

        let listed = store.list_deliveries(None, None, 10).await.unwrap();
        assert_eq!(listed[0].state, "completed");
        assert!(listed[0].finalized_at.is_some());
        assert_eq!(listed[0].last_error, None);
    }

    #[tokio::test]
    async fn a_failed_delivery_is_retried_after_its_delay_keeping_the_error() {
        let db = TempDb::new();
        let store = db.store().await;
        let delivery = handed_off(&store, &["app"]).await.remove(0);

        let retried = store
            .finish_delivery(&delivery, Err(("app answered 502", Some(LEASE))))
            .await
            .unwrap();

        assert!(retried);
        let listed = store
            .list_deliveries(Some("retryable"), None, 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_error.as_deref(), Some("app answered 502"));
        let due = listed[0].scheduled_at - Utc::now();
        assert!((50..=61).contains(&due.num_seconds()), "{due}");
        assert!(
            store
                .claim_deliveries("d1", LEASE, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let errors: String = sqlx::query_scalar("SELECT errors FROM deliveries")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let errors: serde_json::Value = serde_json::from_str(&errors).unwrap();
        assert_eq!(errors[0]["retryable"], true);
        assert_eq!(errors[0]["attempt"], 1);
        let at: DateTime<Utc> = errors[0]["at"].as_str().unwrap().parse().unwrap();
        assert!((Utc::now() - at).num_seconds().abs() < 5);
    }

    #[tokio::test]
    async fn a_dead_lettered_delivery_is_requeued_on_request() {
        let db = TempDb::new();
        let store = db.store().await;
        let deliveries = handed_off(&store, &["app", "nats"]).await;
        assert!(
            store
                .finish_delivery(&deliveries[0], Err(("app answered 410", None)))
                .await
                .unwrap()
        );

        let dead = store
            .list_deliveries(Some("discarded"), None, 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].last_error.as_deref(), Some("app answered 410"));
        assert_eq!(
            store
                .requeue_deliveries(Some(deliveries[1].id))
                .await
                .unwrap(),
            0,
            "a running delivery is left alone"
        );
        assert_eq!(store.requeue_deliveries(None).await.unwrap(), 1);

        let again = store.claim_deliveries("d2", LEASE, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, deliveries[0].id);
        assert_eq!(again[0].attempt, 1);
        assert!(store.finish_delivery(&again[0], Ok(())).await.unwrap());
        assert_eq!(
            store.requeue_deliveries(Some(again[0].id)).await.unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn an_expired_delivery_lease_is_rescued() {
        let db = TempDb::new();
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        let finished = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app"])))
            .await
            .unwrap();
        assert!(finished);
        let lost = store
            .claim_deliveries("d1", Duration::from_millis(1), 1)
            .await
            .unwrap()
            .remove(0);
        tokio::time::sleep(Duration::from_millis(30)).await;

        assert_eq!(store.rescue_expired_deliveries(5).await.unwrap(), 1);

        let listed = store.list_deliveries(None, None, 10).await.unwrap();
        assert_eq!(listed[0].state, "retryable");
        assert_eq!(
            listed[0].last_error.as_deref(),
            Some("lease expired: dispatcher d1 stopped before finishing")
        );
        let current = store
            .claim_deliveries("d2", LEASE, 1)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(current.attempt, 2);
        assert!(!store.finish_delivery(&lost, Ok(())).await.unwrap());
        assert!(store.finish_delivery(&current, Ok(())).await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_delivery_lease_on_the_last_attempt_is_dead_lettered() {
        let db = TempDb::new();
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        let finished = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app"])))
            .await
            .unwrap();
        assert!(finished);
        store
            .claim_deliveries("d1", Duration::from_millis(1), 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;

        assert_eq!(store.rescue_expired_deliveries(1).await.unwrap(), 1);

        let listed = store.list_deliveries(None, None, 10).await.unwrap();
        assert_eq!(listed[0].state, "discarded");
        assert!(listed[0].finalized_at.is_some());
    }

    #[tokio::test]
    async fn pruning_an_event_removes_its_outcome_and_deliveries() {
        let db = TempDb::new();
        let store = db.store().await;
        for delivery in handed_off(&store, &["app"]).await {
            assert!(store.finish_delivery(&delivery, Ok(())).await.unwrap());
        }
        let scope = crate::store::PruneScope {
            cutoff: Utc::now() + chrono::Duration::seconds(1),
            include_discarded: false,
        };

        assert_eq!(store.prune_batch(&scope, 10).await.unwrap(), 1);

        assert_eq!(count(&store, "outcomes").await, 0);
        assert_eq!(count(&store, "deliveries").await, 0);
    }
}
