//! The SQLite job queue: claim, heartbeat, finish-if-running, rescue, re-queue; the twin of
//! `pg_jobs.rs`, statement for statement.
//!
//! Every finishing statement is guarded by `id`, `attempt` and `state = 'running'`: a job whose
//! lease expired and that another worker claimed again (a new attempt) cannot be finished twice
//! by the worker that lost it. SQLite has no `SKIP LOCKED`; it needs none, because it has one
//! writer at a time: a claim is one `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING` inside
//! a `BEGIN IMMEDIATE` transaction, so two claimers (threads, pools or processes on one file) run
//! one after the other and the second sees the first one's jobs as `running`. The transaction
//! commits at once; the lease, not a lock, keeps other workers away during the download.

use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::sqlite::{
    BEGIN_IMMEDIATE, NOW_MS, NOW_TEXT, SqliteStore, millis, optional_timestamp, timestamp,
};
use super::sqlite_deliveries::queue_handoff;
use super::{
    ClaimedJob, Handoff, JobDetail, JobFilter, JobId, JobResult, JobSummary, QueueStats, Requeued,
    StoreError, StoredResult,
};

/// The error entry appended to `errors` (of a job or a delivery) for an attempt: `?3` the
/// error, `?4` whether it will be retried. The same shape as Postgres'; `at` is RFC 3339 text
/// with milliseconds, in UTC.
pub(super) fn error_entry() -> String {
    format!(
        "json_object('attempt', attempt, 'at', {NOW_TEXT}, 'error', ?3,
             'retryable', json(CASE WHEN ?4 THEN 'true' ELSE 'false' END))"
    )
}

impl SqliteStore {
    pub async fn claim_jobs(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        // SQLite reads a negative LIMIT as "no limit".
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
        let claimed: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE jobs
             SET state = 'running', attempt = attempt + 1, attempted_at = {NOW_MS},
                 locked_by = ?1, locked_until = {NOW_MS} + ?2
             WHERE id IN (
                 SELECT id FROM jobs
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
        // RETURNING cannot join; read the events in the same transaction.
        let rows = sqlx::query(
            "SELECT j.id, j.attempt, e.webhook_id, e.event_type, e.body
             FROM jobs j JOIN events e ON e.id = j.event_id
             WHERE j.id IN (SELECT value FROM json_each(?1))
             ORDER BY j.scheduled_at, j.id",
        )
        .bind(serde_json::Value::from(claimed).to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedJob {
                    id: JobId(row.try_get("id")?),
                    attempt: row.try_get("attempt")?,
                    webhook_id: row.try_get("webhook_id")?,
                    event_type: row.try_get("event_type")?,
                    body: row.try_get("body")?,
                })
            })
            .collect()
    }

    pub async fn heartbeat(
        &self,
        job: &ClaimedJob,
        worker_id: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET locked_until = {NOW_MS} + ?4
             WHERE id = ?1 AND attempt = ?2 AND state = 'running' AND locked_by = ?3"
        ))
        .bind(job.id.0)
        .bind(job.attempt)
        .bind(worker_id)
        .bind(millis(lease))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn complete_if_running(
        &self,
        job: &ClaimedJob,
        result: &JobResult,
        handoff: Option<&Handoff>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
        let done = sqlx::query(&format!(
            "UPDATE jobs SET state = 'completed', finalized_at = {NOW_MS}, locked_by = NULL,
                 locked_until = NULL
             WHERE id = ?1 AND attempt = ?2 AND state = 'running'"
        ))
        .bind(job.id.0)
        .bind(job.attempt)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        upsert_result(&mut tx, job.id, result).await?;
        if let Some(handoff) = handoff {
            queue_handoff(&mut tx, job.id, handoff).await?;
        }
        tx.commit().await?;
        self.wake_dispatchers(handoff);
        Ok(true)
    }

    pub async fn retry_if_running(
        &self,
        job: &ClaimedJob,
        error: &str,
        delay: Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET state = 'retryable', scheduled_at = {NOW_MS} + ?5,
                 locked_by = NULL, locked_until = NULL,
                 errors = json_insert(errors, '$[#]', {entry})
             WHERE id = ?1 AND attempt = ?2 AND state = 'running'",
            entry = error_entry()
        ))
        .bind(job.id.0)
        .bind(job.attempt)
        .bind(error)
        .bind(true)
        .bind(millis(delay))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn discard_if_running(
        &self,
        job: &ClaimedJob,
        error: &str,
        result: Option<&JobResult>,
        handoff: Option<&Handoff>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
        let done = sqlx::query(&format!(
            "UPDATE jobs SET state = 'discarded', finalized_at = {NOW_MS}, locked_by = NULL,
                 locked_until = NULL, errors = json_insert(errors, '$[#]', {entry})
             WHERE id = ?1 AND attempt = ?2 AND state = 'running'",
            entry = error_entry()
        ))
        .bind(job.id.0)
        .bind(job.attempt)
        .bind(error)
        .bind(false)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(result) = result {
            upsert_result(&mut tx, job.id, result).await?;
        }
        if let Some(handoff) = handoff {
            queue_handoff(&mut tx, job.id, handoff).await?;
        }
        tx.commit().await?;
        self.wake_dispatchers(handoff);
        Ok(true)
    }

    /// In-process dispatchers start at once (only after the commit: before it they would find
    /// nothing); other processes' dispatchers find the deliveries at their next poll.
    fn wake_dispatchers(&self, handoff: Option<&Handoff>) {
        if handoff.is_some_and(|h| !h.sinks.is_empty()) {
            self.delivery_wakeups.notify_one();
        }
    }

    pub async fn release_if_running(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET state = 'available', attempt = attempt - 1, scheduled_at = {NOW_MS},
                 locked_by = NULL, locked_until = NULL
             WHERE id = ?1 AND attempt = ?2 AND state = 'running'"
        ))
        .bind(job.id.0)
        .bind(job.attempt)
        .execute(&self.pool)
        .await?;
        let released = done.rows_affected() == 1;
        if released {
            // Another worker of this process may take it at once (Postgres: the NOTIFY).
            self.wakeups.notify_one();
        }
        Ok(released)
    }

    pub async fn rescue_expired_leases(&self, max_attempts: i32) -> Result<u64, StoreError> {
        // As in Postgres, every expression of SET sees the row as it was before the update.
        let done = sqlx::query(&format!(
            "UPDATE jobs SET
                 state = CASE WHEN attempt >= ?1 THEN 'discarded' ELSE 'retryable' END,
                 finalized_at = CASE WHEN attempt >= ?1 THEN {NOW_MS} END,
                 scheduled_at = {NOW_MS},
                 errors = json_insert(errors, '$[#]', json_object(
                     'attempt', attempt, 'at', {NOW_TEXT},
                     'error', 'lease expired: worker ' || coalesce(locked_by, '?')
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

    pub async fn find_stored_result(
        &self,
        resource_kind: &str,
        resource_id: &str,
        except_job: JobId,
    ) -> Result<Option<StoredResult>, StoreError> {
        // `id DESC` breaks ties between results stored within the same millisecond.
        let row = sqlx::query(
            "SELECT location, size_bytes, sha256, summary FROM results
             WHERE resource_kind = ?1 AND resource_id = ?2 AND outcome = 'stored'
               AND job_id <> ?3
             ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(resource_kind)
        .bind(resource_id)
        .bind(except_job.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(StoredResult {
                location: row.try_get("location")?,
                size_bytes: row.try_get("size_bytes")?,
                sha256: row.try_get("sha256")?,
                summary: row.try_get("summary")?,
            })
        })
        .transpose()
    }

    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: i64,
    ) -> Result<Vec<JobSummary>, StoreError> {
        let rows = sqlx::query(&format!(
            "{JOB_SUMMARY_SELECT} WHERE (?1 IS NULL OR j.state = ?1)
               AND (?3 IS NULL OR e.event_type = ?3)
               AND (?4 IS NULL OR j.created_at >= ?4)
             ORDER BY j.id DESC LIMIT ?2"
        ))
        .bind(filter.state.as_deref())
        // SQLite reads a negative LIMIT as "no limit".
        .bind(limit.max(0))
        .bind(filter.event_type.as_deref())
        .bind(filter.since.map(|since| since.timestamp_millis()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_summary).collect()
    }

    pub async fn find_job(&self, id: JobId) -> Result<Option<JobDetail>, StoreError> {
        let row = sqlx::query(&format!("{JOB_SUMMARY_SELECT} WHERE j.id = ?1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(JobDetail {
                summary: job_summary(&row)?,
                locked_by: row.try_get("locked_by")?,
                locked_until: optional_timestamp(&row, "locked_until")?,
                errors: row.try_get("errors")?,
                result: row.try_get("result")?,
            })
        })
        .transpose()
    }

    /// The state check and the update share one `BEGIN IMMEDIATE` transaction, so no worker can
    /// claim the job between them (Postgres reports that race as `Running`).
    pub async fn requeue_job(&self, id: JobId) -> Result<Requeued, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
        match state.as_deref() {
            None => {
                tx.rollback().await?;
                return Ok(Requeued::NotFound);
            }
            Some("running") => {
                tx.rollback().await?;
                return Ok(Requeued::Running);
            }
            Some(_) => {}
        }
        sqlx::query(&format!(
            "{} WHERE id = ?1 AND state <> 'running'",
            requeue()
        ))
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wakeups.notify_one();
        Ok(Requeued::Queued(id))
    }

    pub async fn requeue_discarded(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!("{} WHERE state = 'discarded'", requeue()))
            .execute(&self.pool)
            .await?;
        if done.rows_affected() > 0 {
            self.wakeups.notify_one();
        }
        Ok(done.rows_affected())
    }

    pub async fn replay_event(&self, webhook_id: &str) -> Result<Requeued, StoreError> {
        let job: Option<i64> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j JOIN events e ON e.id = j.event_id WHERE e.webhook_id = ?1",
        )
        .bind(webhook_id)
        .fetch_optional(&self.pool)
        .await?;
        match job {
            Some(id) => self.requeue_job(JobId(id)).await,
            None => Ok(Requeued::NotFound),
        }
    }
}

impl SqliteStore {
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let by_state: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        let backlog_age_secs: f64 = sqlx::query_scalar(&format!(
            "SELECT coalesce(({NOW_MS} - min(scheduled_at)) / 1000.0, 0.0) FROM jobs
             WHERE state IN ('available', 'retryable') AND scheduled_at <= {NOW_MS}"
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            by_state,
            backlog_age_secs: backlog_age_secs.max(0.0),
        })
    }

    pub async fn discard_reasons(&self, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT coalesce(json_extract(errors, '$[#-1].error'), 'unknown'), count(*) FROM jobs
             WHERE state = 'discarded' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?1",
        )
        // SQLite reads a negative LIMIT as "no limit".
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Back to `available` with a fresh attempt count (the error history is kept).
fn requeue() -> String {
    format!(
        "UPDATE jobs SET state = 'available', attempt = 0, scheduled_at = {NOW_MS},
             finalized_at = NULL, locked_by = NULL, locked_until = NULL"
    )
}

/// `result` is the results row as a JSON object without `id` and `job_id`, like Postgres'
/// `to_jsonb(r) - 'id' - 'job_id'` (`created_at` as RFC 3339 text, `summary` as JSON).
const JOB_SUMMARY_SELECT: &str = "SELECT j.id, e.webhook_id, e.event_type, j.state, j.attempt,
        j.scheduled_at, j.attempted_at, j.finalized_at, j.created_at,
        json_extract(j.errors, '$[#-1].error') AS last_error, j.locked_by, j.locked_until,
        j.errors,
        (SELECT json_object(
                 'resource_kind', r.resource_kind, 'resource_id', r.resource_id,
                 'outcome', r.outcome, 'location', r.location, 'size_bytes', r.size_bytes,
                 'sha256', r.sha256, 'summary', json(r.summary),
                 'created_at', strftime('%Y-%m-%dT%H:%M:%fZ', r.created_at / 1000.0, 'unixepoch'))
         FROM results r WHERE r.job_id = j.id) AS result
    FROM jobs j JOIN events e ON e.id = j.event_id";

fn job_summary(row: &SqliteRow) -> Result<JobSummary, StoreError> {
    Ok(JobSummary {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_type: row.try_get("event_type")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        scheduled_at: timestamp(row, "scheduled_at")?,
        attempted_at: optional_timestamp(row, "attempted_at")?,
        finalized_at: optional_timestamp(row, "finalized_at")?,
        created_at: timestamp(row, "created_at")?,
        last_error: row.try_get("last_error")?,
    })
}

async fn upsert_result(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: JobId,
    result: &JobResult,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO results
             (job_id, resource_kind, resource_id, outcome, location, size_bytes, sha256, summary)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (job_id) DO UPDATE SET
             resource_kind = excluded.resource_kind, resource_id = excluded.resource_id,
             outcome = excluded.outcome, location = excluded.location,
             size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
             summary = excluded.summary, created_at = {NOW_MS}"
    ))
    .bind(job.0)
    .bind(result.resource_kind)
    .bind(result.resource_id.as_deref())
    .bind(result.outcome)
    .bind(result.location.as_deref())
    .bind(result.size_bytes)
    .bind(result.sha256.as_deref())
    .bind(&result.summary)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::super::sqlite::testing::{TempDb, accepted, batch_body, record, record_body};
    use crate::store::{ClaimedJob, JobFilter, JobId, JobResult, Requeued, SqliteStore};

    const LEASE: Duration = Duration::from_secs(60);

    fn state(state: &str) -> JobFilter {
        JobFilter {
            state: Some(state.to_owned()),
            ..JobFilter::default()
        }
    }

    fn stored(resource_id: &str) -> JobResult {
        JobResult {
            resource_kind: "batch",
            resource_id: Some(resource_id.to_owned()),
            outcome: "stored",
            location: Some(format!("results/{resource_id}.jsonl")),
            size_bytes: Some(1234),
            sha256: Some("ab".repeat(32)),
            summary: json!({"lines": 10, "error_lines": 0}),
        }
    }

    async fn claim_one(store: &SqliteStore, worker: &str, lease: Duration) -> ClaimedJob {
        let mut jobs = store.claim_jobs(worker, lease, 1).await.unwrap();
        assert_eq!(jobs.len(), 1, "exactly one job was runnable");
        jobs.remove(0)
    }

    /// Waits until a lease of `LEASE_MS` has certainly expired (the clock has millisecond
    /// resolution).
    async fn let_short_lease_expire() {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    const SHORT_LEASE: Duration = Duration::from_millis(1);

    fn close_to(actual: DateTime<Utc>, expected: DateTime<Utc>) -> bool {
        (actual - expected).num_milliseconds().abs() < 2_000
    }

    #[tokio::test]
    async fn a_claim_takes_runnable_jobs_in_order_with_their_event() {
        let db = TempDb::new();
        let store = db.store().await;
        let first = accepted(record(&store, "msg_1").await);
        let second = accepted(record(&store, "msg_2").await);
        accepted(record(&store, "msg_3").await);

        let jobs = store.claim_jobs("w1", LEASE, 2).await.unwrap();

        let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, [first, second]);
        assert_eq!(jobs[0].attempt, 1);
        assert_eq!(jobs[0].webhook_id, "msg_1");
        assert_eq!(jobs[0].event_type.as_deref(), Some("batch.succeeded"));
        assert_eq!(jobs[0].body, batch_body("msg_1"));
        let detail = store.find_job(first).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "running");
        assert_eq!(detail.locked_by.as_deref(), Some("w1"));
        let locked_until = detail.locked_until.unwrap();
        assert!(close_to(
            locked_until,
            Utc::now() + chrono::Duration::seconds(60)
        ));
        assert!(close_to(detail.summary.attempted_at.unwrap(), Utc::now()));
        assert_eq!(store.claim_jobs("w2", LEASE, 10).await.unwrap().len(), 1);
        assert!(store.claim_jobs("w2", LEASE, 10).await.unwrap().is_empty());
        assert!(store.claim_jobs("w2", LEASE, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_completed_job_keeps_its_result_and_cannot_be_completed_twice() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "completed");
        assert!(close_to(detail.summary.finalized_at.unwrap(), Utc::now()));
        assert_eq!(detail.locked_by, None);
        assert_eq!(detail.locked_until, None);
        assert_eq!(detail.errors, json!([]));
        assert_eq!(detail.summary.last_error, None);
        let result = detail.result.unwrap();
        let keys: HashSet<_> = result.as_object().unwrap().keys().cloned().collect();
        let expected: HashSet<String> = [
            "resource_kind",
            "resource_id",
            "outcome",
            "location",
            "size_bytes",
            "sha256",
            "summary",
            "created_at",
        ]
        .map(String::from)
        .into();
        assert_eq!(keys, expected, "the results row without id and job_id");
        assert_eq!(result["outcome"], "stored");
        assert_eq!(result["size_bytes"], 1234);
        assert_eq!(result["summary"], json!({"lines": 10, "error_lines": 0}));
        let created_at: DateTime<Utc> = result["created_at"].as_str().unwrap().parse().unwrap();
        assert!(close_to(created_at, Utc::now()));
        let event = store.find_event("msg_1").await.unwrap().unwrap();
        assert_eq!(event.summary.job_state.as_deref(), Some("completed"));
    }

    #[tokio::test]
    async fn a_retry_keeps_the_error_and_waits_for_its_delay() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        let retried = store
            .retry_if_running(&job, "download: 503 Service Unavailable", LEASE)
            .await
            .unwrap();

        assert!(retried);
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "retryable");
        assert_eq!(detail.summary.attempt, 1);
        assert_eq!(detail.locked_by, None);
        assert!(close_to(
            detail.summary.scheduled_at,
            Utc::now() + chrono::Duration::seconds(60)
        ));
        assert_eq!(
            detail.summary.last_error.as_deref(),
            Some("download: 503 Service Unavailable")
        );
        let entry = &detail.errors[0];
        assert_eq!(entry["attempt"], 1);
        assert_eq!(entry["error"], "download: 503 Service Unavailable");
        assert_eq!(entry["retryable"], true);
        let at: DateTime<Utc> = entry["at"].as_str().unwrap().parse().unwrap();
        assert!(close_to(at, Utc::now()));
        assert!(store.claim_jobs("w1", LEASE, 10).await.unwrap().is_empty());
        assert!(!store.retry_if_running(&job, "again", LEASE).await.unwrap());
    }

    #[tokio::test]
    async fn a_retry_without_delay_is_claimed_again_as_the_next_attempt() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let first = claim_one(&store, "w1", LEASE).await;
        assert!(
            store
                .retry_if_running(&first, "first failure", Duration::ZERO)
                .await
                .unwrap()
        );

        let second = claim_one(&store, "w2", LEASE).await;
        assert!(
            store
                .retry_if_running(&second, "second failure", Duration::ZERO)
                .await
                .unwrap()
        );

        assert_eq!(second.id, id);
        assert_eq!(second.attempt, 2);
        let detail = store.find_job(id).await.unwrap().unwrap();
        let errors: Vec<_> = detail.errors.as_array().unwrap().iter().collect();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["attempt"], 1);
        assert_eq!(errors[1]["attempt"], 2);
        assert_eq!(detail.summary.last_error.as_deref(), Some("second failure"));
    }

    #[tokio::test]
    async fn a_discarded_job_is_dead_lettered_with_its_final_error_and_result() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;
        let not_followable = JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/msg_1".into()),
            outcome: "not_followable",
            location: None,
            size_bytes: None,
            sha256: None,
            summary: json!({"error_message": "host not allowed"}),
        };

        let discarded = store
            .discard_if_running(&job, "host not allowed", Some(&not_followable), None)
            .await
            .unwrap();

        assert!(discarded);
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "discarded");
        assert!(detail.summary.finalized_at.is_some());
        assert_eq!(detail.errors[0]["retryable"], false);
        assert_eq!(detail.errors[0]["error"], "host not allowed");
        assert_eq!(detail.result.unwrap()["outcome"], "not_followable");
        assert!(store.claim_jobs("w1", LEASE, 10).await.unwrap().is_empty());
        assert!(
            !store
                .discard_if_running(&job, "again", None, None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_discard_without_a_result_leaves_none() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert!(
            store
                .discard_if_running(&job, "gave up", None, None)
                .await
                .unwrap()
        );

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.result, None);
        assert_eq!(detail.summary.last_error.as_deref(), Some("gave up"));
    }

    #[tokio::test]
    async fn a_heartbeat_extends_only_the_current_attempts_lease() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", Duration::from_secs(10)).await;

        assert!(!store.heartbeat(&job, "w2", LEASE).await.unwrap());
        let stale = ClaimedJob {
            attempt: job.attempt - 1,
            ..job.clone()
        };
        assert!(!store.heartbeat(&stale, "w1", LEASE).await.unwrap());
        assert!(store.heartbeat(&job, "w1", LEASE).await.unwrap());

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert!(close_to(
            detail.locked_until.unwrap(),
            Utc::now() + chrono::Duration::seconds(60)
        ));
        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
        assert!(!store.heartbeat(&job, "w1", LEASE).await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_lease_is_rescued_and_the_lost_attempt_cannot_finish() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let lost = claim_one(&store, "w1", SHORT_LEASE).await;
        let_short_lease_expire().await;

        let rescued = store.rescue_expired_leases(5).await.unwrap();

        assert_eq!(rescued, 1);
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "retryable");
        assert_eq!(detail.locked_by, None);
        assert_eq!(detail.summary.finalized_at, None);
        assert_eq!(
            detail.summary.last_error.as_deref(),
            Some("lease expired: worker w1 stopped before finishing")
        );
        assert_eq!(detail.errors[0]["retryable"], true);
        assert_eq!(detail.errors[0]["attempt"], 1);
        let current = claim_one(&store, "w2", LEASE).await;
        assert_eq!(current.attempt, 2);
        assert!(!store.heartbeat(&lost, "w1", LEASE).await.unwrap());
        assert!(
            !store
                .complete_if_running(&lost, &stored("b1"), None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .retry_if_running(&lost, "late", Duration::ZERO)
                .await
                .unwrap()
        );
        assert!(!store.release_if_running(&lost).await.unwrap());
        assert!(
            store
                .complete_if_running(&current, &stored("b1"), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_live_lease_is_not_rescued() {
        let db = TempDb::new();
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert_eq!(store.rescue_expired_leases(5).await.unwrap(), 0);
        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn an_expired_lease_on_the_last_attempt_is_dead_lettered() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        claim_one(&store, "w1", SHORT_LEASE).await;
        let_short_lease_expire().await;

        assert_eq!(store.rescue_expired_leases(1).await.unwrap(), 1);

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "discarded");
        assert!(detail.summary.finalized_at.is_some());
        assert_eq!(detail.errors[0]["retryable"], false);
        assert!(store.claim_jobs("w2", LEASE, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_released_job_is_available_at_once_and_its_attempt_is_not_counted() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;
        let wakeups = store.job_wakeups();
        let woken = wakeups.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        assert!(store.release_if_running(&job).await.unwrap());
        assert!(!store.release_if_running(&job).await.unwrap());

        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("a worker is woken");
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "available");
        assert_eq!(detail.summary.attempt, 0);
        assert_eq!(detail.locked_by, None);
        assert_eq!(claim_one(&store, "w2", LEASE).await.attempt, 1);
    }

    #[tokio::test]
    async fn a_job_is_requeued_unless_it_is_running() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert_eq!(store.requeue_job(id).await.unwrap(), Requeued::Running);
        assert_eq!(
            store.requeue_job(JobId(999)).await.unwrap(),
            Requeued::NotFound
        );
        assert!(
            store
                .discard_if_running(&job, "gave up", None, None)
                .await
                .unwrap()
        );
        assert_eq!(store.requeue_job(id).await.unwrap(), Requeued::Queued(id));

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "available");
        assert_eq!(detail.summary.attempt, 0);
        assert_eq!(detail.summary.finalized_at, None);
        assert_eq!(
            detail.summary.last_error.as_deref(),
            Some("gave up"),
            "history kept"
        );
        assert_eq!(claim_one(&store, "w1", LEASE).await.attempt, 1);
    }

    #[tokio::test]
    async fn every_discarded_job_is_requeued_at_once() {
        let db = TempDb::new();
        let store = db.store().await;
        for id in ["msg_1", "msg_2", "msg_3"] {
            accepted(record(&store, id).await);
        }
        let jobs = store.claim_jobs("w1", LEASE, 3).await.unwrap();
        assert!(
            store
                .discard_if_running(&jobs[0], "x", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[1], "x", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .complete_if_running(&jobs[2], &stored("b3"), None)
                .await
                .unwrap()
        );

        let requeued = store.requeue_discarded().await.unwrap();

        assert_eq!(requeued, 2);
        assert_eq!(
            store
                .list_jobs(&state("available"), 10)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            store
                .list_jobs(&state("completed"), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(store.requeue_discarded().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_replayed_event_runs_again_and_its_new_result_replaces_the_old() {
        let db = TempDb::new();
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let first = claim_one(&store, "w1", LEASE).await;
        assert_eq!(
            store.replay_event("msg_1").await.unwrap(),
            Requeued::Running
        );
        assert!(
            store
                .complete_if_running(&first, &stored("b1"), None)
                .await
                .unwrap()
        );

        assert_eq!(
            store.replay_event("msg_1").await.unwrap(),
            Requeued::Queued(id)
        );
        assert_eq!(
            store.replay_event("missing").await.unwrap(),
            Requeued::NotFound
        );

        let again = claim_one(&store, "w1", LEASE).await;
        let mut newer = stored("b1");
        newer.size_bytes = Some(99);
        assert!(
            store
                .complete_if_running(&again, &newer, None)
                .await
                .unwrap()
        );
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.result.unwrap()["size_bytes"], 99);
        let results: i64 = sqlx::query_scalar("SELECT count(*) FROM results")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(results, 1);
    }

    #[tokio::test]
    async fn a_stored_result_is_found_for_another_job_of_the_same_resource() {
        let db = TempDb::new();
        let store = db.store().await;
        let first = accepted(record(&store, "msg_1").await);
        let second = accepted(record(&store, "msg_2").await);
        let job = claim_one(&store, "w1", LEASE).await;
        assert!(
            store
                .complete_if_running(&job, &stored("batches/x"), None)
                .await
                .unwrap()
        );

        let found = store
            .find_stored_result("batch", "batches/x", second)
            .await
            .unwrap()
            .unwrap();

        assert_eq!(found.location.as_deref(), Some("results/batches/x.jsonl"));
        assert_eq!(found.size_bytes, Some(1234));
        assert_eq!(found.sha256, Some("ab".repeat(32)));
        assert_eq!(found.summary, json!({"lines": 10, "error_lines": 0}));
        let own = store.find_stored_result("batch", "batches/x", first).await;
        assert_eq!(own.unwrap(), None, "a job's own result is not reused");
        let other = store.find_stored_result("batch", "batches/y", second).await;
        assert_eq!(other.unwrap(), None);
        let kind = store
            .find_stored_result("interaction", "batches/x", second)
            .await;
        assert_eq!(kind.unwrap(), None);
    }

    #[tokio::test]
    async fn a_result_that_was_only_recorded_is_not_reused() {
        let db = TempDb::new();
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        let second = accepted(record(&store, "msg_2").await);
        let job = claim_one(&store, "w1", LEASE).await;
        let mut recorded = stored("batches/x");
        recorded.outcome = "recorded";
        recorded.location = None;
        assert!(
            store
                .complete_if_running(&job, &recorded, None)
                .await
                .unwrap()
        );

        let found = store.find_stored_result("batch", "batches/x", second).await;

        assert_eq!(found.unwrap(), None);
    }

    #[tokio::test]
    async fn jobs_are_listed_newest_first_and_filtered_by_state() {
        let db = TempDb::new();
        let store = db.store().await;
        let ids: Vec<_> = {
            let mut ids = Vec::new();
            for id in ["msg_1", "msg_2", "msg_3"] {
                ids.push(accepted(record(&store, id).await));
            }
            ids
        };
        let job = claim_one(&store, "w1", LEASE).await;
        assert!(store.retry_if_running(&job, "boom", LEASE).await.unwrap());

        let all = store.list_jobs(&JobFilter::default(), 10).await.unwrap();
        let retryable = store.list_jobs(&state("retryable"), 10).await.unwrap();
        let limited = store.list_jobs(&JobFilter::default(), 1).await.unwrap();

        let listed: Vec<_> = all.iter().map(|j| JobId(j.id)).collect();
        assert_eq!(listed, [ids[2], ids[1], ids[0]]);
        assert_eq!(retryable.len(), 1);
        assert_eq!(retryable[0].webhook_id, "msg_1");
        assert_eq!(retryable[0].event_type.as_deref(), Some("batch.succeeded"));
        assert_eq!(retryable[0].last_error.as_deref(), Some("boom"));
        assert!(close_to(retryable[0].created_at, Utc::now()));
        assert_eq!(limited.len(), 1);
        assert!(
            store
                .list_jobs(&state("cancelled"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.find_job(JobId(999)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn two_stores_on_one_file_never_claim_one_job_twice() {
        let db = TempDb::new();
        let a = db.store().await;
        let b = db.store().await;
        for n in 0..100 {
            accepted(record(&a, &format!("msg_{n}")).await);
        }

        // Eight claimers per store, each taking up to three jobs at a time until none is left.
        let claimers: Vec<_> = (0..16)
            .map(|n| {
                let store = if n % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let worker = format!("w{n}");
                    let mut claimed = Vec::new();
                    loop {
                        let jobs = store.claim_jobs(&worker, LEASE, 3).await.unwrap();
                        if jobs.is_empty() {
                            return claimed;
                        }
                        for job in jobs {
                            assert!(
                                store
                                    .complete_if_running(&job, &stored("b"), None)
                                    .await
                                    .unwrap()
                            );
                            claimed.push((job.id, job.attempt));
                        }
                    }
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.unwrap());
        }

        let unique: HashSet<_> = claimed.iter().map(|(id, _)| *id).collect();
        assert_eq!(claimed.len(), 100, "every job claimed exactly once");
        assert_eq!(unique.len(), 100);
        assert!(claimed.iter().all(|(_, attempt)| *attempt == 1));
        assert_eq!(
            b.list_jobs(&state("completed"), 1000).await.unwrap().len(),
            100
        );
    }

    #[tokio::test]
    async fn jobs_are_filtered_by_event_type_and_creation_time() {
        let db = TempDb::new();
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        let interaction = serde_json::to_vec(&json!({
            "type": "interaction.completed",
            "data": {"id": "interactions/1"},
        }))
        .unwrap();
        let other = accepted(record_body(&store, "msg_2", &interaction).await);

        let by_type = JobFilter {
            event_type: Some("interaction.completed".into()),
            ..JobFilter::default()
        };
        let typed = store.list_jobs(&by_type, 10).await.unwrap();
        let recent = JobFilter {
            since: Some(Utc::now() - chrono::Duration::minutes(5)),
            ..JobFilter::default()
        };
        let future = JobFilter {
            since: Some(Utc::now() + chrono::Duration::minutes(5)),
            ..JobFilter::default()
        };

        assert_eq!(typed.len(), 1);
        assert_eq!(JobId(typed[0].id), other);
        assert_eq!(store.list_jobs(&recent, 10).await.unwrap().len(), 2);
        assert!(store.list_jobs(&future, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn queue_stats_count_jobs_by_state_and_age_the_backlog() {
        let db = TempDb::new();
        let store = db.store().await;
        let empty = store.queue_stats().await.unwrap();
        assert!(empty.by_state.is_empty());
        assert_eq!(empty.backlog_age_secs, 0.0);
        for id in ["msg_1", "msg_2", "msg_3"] {
            accepted(record(&store, id).await);
        }
        let job = claim_one(&store, "w1", LEASE).await;
        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;

        let stats = store.queue_stats().await.unwrap();

        assert_eq!(
            stats.by_state,
            [("available".to_owned(), 2), ("completed".to_owned(), 1)]
        );
        assert!(
            (0.04..60.0).contains(&stats.backlog_age_secs),
            "{}",
            stats.backlog_age_secs
        );
    }

    #[tokio::test]
    async fn discard_reasons_group_dead_letters_by_their_last_error() {
        let db = TempDb::new();
        let store = db.store().await;
        for id in ["msg_1", "msg_2", "msg_3", "msg_4"] {
            accepted(record(&store, id).await);
        }
        let jobs = store.claim_jobs("w1", LEASE, 4).await.unwrap();
        assert!(
            store
                .discard_if_running(&jobs[0], "host not allowed", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[1], "host not allowed", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[2], "404 Not Found", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .retry_if_running(&jobs[3], "timeout", LEASE)
                .await
                .unwrap()
        );

        let reasons = store.discard_reasons(10).await.unwrap();

        assert_eq!(
            reasons,
            [
                ("host not allowed".to_owned(), 2),
                ("404 Not Found".to_owned(), 1)
            ]
        );
        assert_eq!(store.discard_reasons(1).await.unwrap().len(), 1);
    }

    /// Set for the child process of [`two_processes_on_one_file_never_claim_one_job_twice`].
    const CLAIMER_URL: &str = "GEMHOOK_TEST_SQLITE_CLAIMER_URL";

    /// Claims one job at a time until none is left, completing each after a moment of "work";
    /// reports each claim on stdout.
    async fn claim_until_empty(store: &SqliteStore, worker: &str) -> Vec<(JobId, i32)> {
        let mut claimed = Vec::new();
        loop {
            let jobs = store.claim_jobs(worker, LEASE, 1).await.unwrap();
            let Some(job) = jobs.into_iter().next() else {
                return claimed;
            };
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert!(
                store
                    .complete_if_running(&job, &stored("b"), None)
                    .await
                    .unwrap()
            );
            claimed.push((job.id, job.attempt));
        }
    }

    /// The other process of [`two_processes_on_one_file_never_claim_one_job_twice`]; does
    /// nothing when run on its own.
    #[tokio::test]
    #[ignore = "a helper: run as a child process by two_processes_on_one_file_never_claim_one_job_twice"]
    async fn claimer_process() {
        let Ok(url) = std::env::var(CLAIMER_URL) else {
            return;
        };
        let options = crate::store::ConnectOptions {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
            listen_url: None,
        };
        let store = SqliteStore::connect_lazy(&url, &options).unwrap();
        store.migrate().await.unwrap();
        // On a line of its own: the test harness has just printed "test ... " without one.
        println!("\nready");
        for (id, attempt) in claim_until_empty(&store, "child").await {
            println!("claimed {} {attempt}", id.0);
        }
    }

    /// SQLite's locks between processes (not only between pools of one process) keep two
    /// claimers apart: this test runs its own binary as a second process on the same file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_on_one_file_never_claim_one_job_twice() {
        use std::io::BufRead;

        let db = TempDb::new();
        let store = db.store().await;
        for n in 0..200 {
            accepted(record(&store, &format!("msg_{n}")).await);
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::sqlite_jobs::tests::claimer_process"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CLAIMER_URL, db.url())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Start claiming only once the other process is ready to, so the two overlap.
        let lines = tokio::task::spawn_blocking(move || {
            lines
                .by_ref()
                .map(Result::unwrap)
                .find(|line| line == "ready");
            lines
        })
        .await
        .unwrap();

        let ours = claim_until_empty(&store, "parent").await;
        let theirs: Vec<(JobId, i32)> = tokio::task::spawn_blocking(move || {
            lines
                .map(Result::unwrap)
                .filter_map(|line| {
                    let mut words = line.strip_prefix("claimed ")?.split(' ');
                    let id = words.next()?.parse().ok()?;
                    let attempt = words.next()?.parse().ok()?;
                    Some((JobId(id), attempt))
                })
                .collect()
        })
        .await
        .unwrap();
        assert!(child.wait().unwrap().success(), "the other process failed");

        assert!(
            !ours.is_empty() && !theirs.is_empty(),
            "both processes claimed: {} and {}",
            ours.len(),
            theirs.len()
        );
        let all: Vec<_> = ours.iter().chain(&theirs).collect();
        let unique: HashSet<_> = all.iter().map(|(id, _)| *id).collect();
        assert_eq!(all.len(), 200, "every job claimed exactly once");
        assert_eq!(unique.len(), 200);
        assert!(all.iter().all(|(_, attempt)| *attempt == 1));
    }
}
