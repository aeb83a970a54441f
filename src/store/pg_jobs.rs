//! The Postgres job queue: claim, heartbeat, finish-if-running, rescue, re-queue.
//!
//! Every finishing statement is guarded by `id`, `attempt` and `state = 'running'`: a job whose
//! lease expired and that another worker claimed again (a new attempt) cannot be finished twice
//! by the worker that lost it. No statement is held open across a download: a claim commits at
//! once and the job's lease, not a row lock, keeps other workers away.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::postgres::{JOBS_CHANNEL, PgStore};
use super::{
    ClaimedJob, Handoff, JobDetail, JobFilter, JobId, JobResult, JobSummary, QueueStats, Requeued,
    StoreError, StoredResult,
};

/// The error entry appended to `jobs.errors` for an attempt.
pub(super) const ERROR_ENTRY: &str = "jsonb_build_array(jsonb_build_object(\
    'attempt', attempt, 'at', now(), 'error', $3::text, 'retryable', $4::bool))";

impl PgStore {
    pub async fn claim_jobs(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        // SKIP LOCKED: concurrent claimers (threads or replicas) each take different rows
        // instead of queueing behind one another's row locks.
        let rows = sqlx::query(
            r#"
            WITH next AS (
                SELECT id FROM jobs
                WHERE state IN ('available', 'retryable') AND scheduled_at <= now()
                ORDER BY scheduled_at, id
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            )
            UPDATE jobs AS j
            SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
                locked_by = $1, locked_until = now() + make_interval(secs => $2)
            FROM next, events AS e
            WHERE j.id = next.id AND e.id = j.event_id
            RETURNING j.id, j.attempt, e.webhook_id, e.event_type, e.body
            "#,
        )
        .bind(worker_id)
        .bind(lease.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
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
        let done = sqlx::query(
            "UPDATE jobs SET locked_until = now() + make_interval(secs => $4)
             WHERE id = $1 AND attempt = $2 AND state = 'running' AND locked_by = $3",
        )
        .bind(job.id.0)
        .bind(job.attempt)
        .bind(worker_id)
        .bind(lease.as_secs_f64())
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'completed', finalized_at = now(), locked_by = NULL,
                 locked_until = NULL
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
        )
        .bind(job.id.0)
        .bind(job.attempt)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false); // dropped: rolled back
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
            "UPDATE jobs SET state = 'retryable', scheduled_at = now() + make_interval(secs => $5),
                 locked_by = NULL, locked_until = NULL, errors = errors || {ERROR_ENTRY}
             WHERE id = $1 AND attempt = $2 AND state = 'running'"
        ))
        .bind(job.id.0)
        .bind(job.attempt)
        .bind(error)
        .bind(true)
        .bind(delay.as_secs_f64())
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&format!(
            "UPDATE jobs SET state = 'discarded', finalized_at = now(), locked_by = NULL,
                 locked_until = NULL, errors = errors || {ERROR_ENTRY}
             WHERE id = $1 AND attempt = $2 AND state = 'running'"
        ))
        .bind(job.id.0)
        .bind(job.attempt)
        .bind(error)
        .bind(false)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
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

    /// In-process dispatchers start at once; others hear the NOTIFY sent in the transaction.
    fn wake_dispatchers(&self, handoff: Option<&Handoff>) {
        if handoff.is_some_and(|h| !h.sinks.is_empty()) {
            self.delivery_wakeups.notify_one();
        }
    }

    pub async fn release_if_running(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        // The NOTIFY lets a worker elsewhere take the job at once rather than at its next poll.
        let released: Vec<i64> = sqlx::query_scalar(
            "WITH released AS (
                 UPDATE jobs SET state = 'available', attempt = attempt - 1, scheduled_at = now(),
                     locked_by = NULL, locked_until = NULL
                 WHERE id = $1 AND attempt = $2 AND state = 'running'
                 RETURNING id
             )
             SELECT id, pg_notify($3, '') FROM released",
        )
        .bind(job.id.0)
        .bind(job.attempt)
        .bind(JOBS_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(released.len() == 1)
    }

    pub async fn rescue_expired_leases(&self, max_attempts: i32) -> Result<u64, StoreError> {
        self.rescue_expired("jobs", "worker", max_attempts).await
    }

    /// Running rows of a queue table (`jobs`, `deliveries`) whose lease expired become
    /// retryable, or discarded after their last attempt, with the lost attempt's error kept.
    /// `owner` names what held the lease in that error ("worker", "dispatcher").
    pub(super) async fn rescue_expired(
        &self,
        table: &'static str,
        owner: &'static str,
        max_attempts: i32,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE {table} SET
                 state = CASE WHEN attempt >= $1 THEN 'discarded' ELSE 'retryable' END,
                 finalized_at = CASE WHEN attempt >= $1 THEN now() END,
                 scheduled_at = now(),
                 errors = errors || jsonb_build_array(jsonb_build_object(
                     'attempt', attempt, 'at', now(),
                     'error', 'lease expired: {owner} ' || coalesce(locked_by, '?')
                              || ' stopped before finishing',
                     'retryable', attempt < $1)),
                 locked_by = NULL, locked_until = NULL
             WHERE state = 'running' AND locked_until < now()"
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
        let row = sqlx::query(
            "SELECT location, size_bytes, sha256, summary FROM results
             WHERE resource_kind = $1 AND resource_id = $2 AND outcome = 'stored'
               AND job_id <> $3
             ORDER BY created_at DESC LIMIT 1",
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
            "{JOB_SUMMARY_SELECT} WHERE ($1::text IS NULL OR j.state = $1)
               AND ($3::text IS NULL OR e.event_type = $3)
               AND ($4::timestamptz IS NULL OR j.created_at >= $4)
             ORDER BY j.id DESC LIMIT $2"
        ))
        .bind(filter.state.as_deref())
        .bind(limit)
        .bind(filter.event_type.as_deref())
        .bind(filter.since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_summary).collect()
    }

    pub async fn find_job(&self, id: JobId) -> Result<Option<JobDetail>, StoreError> {
        let row = sqlx::query(&format!("{JOB_SUMMARY_SELECT} WHERE j.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(JobDetail {
                summary: job_summary(&row)?,
                locked_by: row.try_get("locked_by")?,
                locked_until: row.try_get("locked_until")?,
                errors: row.try_get("errors")?,
                result: row.try_get("result")?,
            })
        })
        .transpose()
    }

    pub async fn requeue_job(&self, id: JobId) -> Result<Requeued, StoreError> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        match state.as_deref() {
            None => return Ok(Requeued::NotFound),
            Some("running") => return Ok(Requeued::Running),
            Some(_) => {}
        }
        let requeued: Vec<i64> = sqlx::query_scalar(&format!(
            "WITH requeued AS ({REQUEUE} WHERE id = $1 AND state <> 'running' RETURNING id)
             SELECT id, pg_notify($2, '') FROM requeued"
        ))
        .bind(id.0)
        .bind(JOBS_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        // Between the two statements a worker may have claimed it.
        Ok(match requeued.first() {
            Some(&id) => Requeued::Queued(JobId(id)),
            None => Requeued::Running,
        })
    }

    pub async fn requeue_discarded(&self) -> Result<u64, StoreError> {
        let requeued: Vec<i64> = sqlx::query_scalar(&format!(
            "WITH requeued AS ({REQUEUE} WHERE state = 'discarded' RETURNING id)
             SELECT id, pg_notify($1, '') FROM requeued"
        ))
        .bind(JOBS_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(requeued.len() as u64)
    }

    pub async fn replay_event(&self, webhook_id: &str) -> Result<Requeued, StoreError> {
        let job: Option<i64> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1",
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

impl PgStore {
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let by_state: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        // Uses the partial runnable index: cheap however many finished jobs there are.
        let backlog_age_secs: f64 = sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM now() - min(scheduled_at)), 0)::float8 FROM jobs
             WHERE state IN ('available', 'retryable') AND scheduled_at <= now()",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            by_state,
            backlog_age_secs: backlog_age_secs.max(0.0),
        })
    }

    pub async fn discard_reasons(&self, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT coalesce(errors -> -1 ->> 'error', 'unknown'), count(*) FROM jobs
             WHERE state = 'discarded' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Back to `available` with a fresh attempt count (the error history is kept).
const REQUEUE: &str = "UPDATE jobs SET state = 'available', attempt = 0, scheduled_at = now(),
    finalized_at = NULL, locked_by = NULL, locked_until = NULL";

const JOB_SUMMARY_SELECT: &str = "SELECT j.id, e.webhook_id, e.event_type, j.state, j.attempt,
        j.scheduled_at, j.attempted_at, j.finalized_at, j.created_at,
        j.errors -> -1 ->> 'error' AS last_error, j.locked_by, j.locked_until, j.errors,
        (SELECT to_jsonb(r) - 'id' - 'job_id' FROM results r WHERE r.job_id = j.id) AS result
    FROM jobs j JOIN events e ON e.id = j.event_id";

fn job_summary(row: &PgRow) -> Result<JobSummary, StoreError> {
    Ok(JobSummary {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_type: row.try_get("event_type")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        scheduled_at: row.try_get("scheduled_at")?,
        attempted_at: row.try_get("attempted_at")?,
        finalized_at: row.try_get("finalized_at")?,
        created_at: row.try_get("created_at")?,
        last_error: row.try_get("last_error")?,
    })
}

/// The outcome (a new revision when it is rewritten by a replay) and one delivery per sink,
/// each (re)queued from scratch, plus a wake-up for the dispatchers.
async fn queue_handoff(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job: JobId,
    handoff: &Handoff,
) -> Result<(), StoreError> {
    let outcome_id: i64 = sqlx::query_scalar(
        "INSERT INTO outcomes (event_id, body) SELECT event_id, $2 FROM jobs WHERE id = $1
         ON CONFLICT (event_id) DO UPDATE SET revision = outcomes.revision + 1,
             body = excluded.body, created_at = now()
         RETURNING id",
    )
    .bind(job.0)
    .bind(&handoff.outcome)
    .fetch_one(&mut **tx)
    .await?;
    if handoff.sinks.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO deliveries (outcome_id, sink) SELECT $1, unnest($2::text[])
         ON CONFLICT (outcome_id, sink) DO UPDATE SET {RESET_DELIVERY}"
    ))
    .bind(outcome_id)
    .bind(&handoff.sinks)
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(DELIVERIES_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Back to the start of its queue: a delivery re-queued by a replay or an operator.
pub(super) const RESET_DELIVERY: &str = "state = 'available', attempt = 0, scheduled_at = now(),
    finalized_at = NULL, locked_by = NULL, locked_until = NULL";

/// Dispatchers `LISTEN` here for new deliveries.
pub const DELIVERIES_CHANNEL: &str = "gemhook_deliveries";

async fn upsert_result(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job: JobId,
    result: &JobResult,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO results
             (job_id, resource_kind, resource_id, outcome, location, size_bytes, sha256, summary)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (job_id) DO UPDATE SET
             resource_kind = excluded.resource_kind, resource_id = excluded.resource_id,
             outcome = excluded.outcome, location = excluded.location,
             size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
             summary = excluded.summary, created_at = now()",
    )
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
