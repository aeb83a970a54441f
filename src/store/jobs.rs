//! The jobs queue: an event's pointers to follow. The state machine is [`super::queue`]'s;
//! what is particular to jobs is here: what a claim returns, the result a finish records, and
//! the hand-off it queues in the same transaction.

use std::time::Duration;

use super::db::{Arg, Db, Dialect, Exec, Row, Tx};
use super::finish_group::{Ending, JobFinish, finish_alone};
use super::queue::{self, Finish, JOBS, RequeuedOne, state};
use super::{
    Cancelled, ClaimedJob, Handoff, JobDetail, JobFilter, JobId, JobResult, JobSummary, QueueStats,
    Requeued, Store, StoreError, StoredResult, storable, storable_handoff, storable_result,
};

impl Store {
    /// Claims up to `limit` runnable jobs for `worker_id`, leased for `lease`.
    pub async fn claim_jobs(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let rows = queue::claim(&self.db, &JOBS, worker_id, lease, limit).await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedJob {
                    id: JobId(row.get("id")?),
                    attempt: row.get("attempt")?,
                    webhook_id: row.get("webhook_id")?,
                    event_type: row.get("event_type")?,
                    body: row.get("body")?,
                    trace_context: row.get("trace_context")?,
                })
            })
            .collect()
    }

    /// Extends a running job's lease; false when the job is no longer ours.
    pub async fn heartbeat(
        &self,
        job: &ClaimedJob,
        worker_id: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        queue::heartbeat(&self.db, &JOBS, (job.id.0, job.attempt), worker_id, lease).await
    }

    /// Marks the job completed and records its result, if it is still this attempt's.
    pub async fn complete_if_running(
        &self,
        job: &ClaimedJob,
        result: &JobResult,
        handoff: Option<&Handoff>,
    ) -> Result<bool, StoreError> {
        self.finish_job(job, Ending::Completed, Some(result), handoff)
            .await
    }

    /// Schedules another attempt after `delay`, keeping the error.
    pub async fn retry_if_running(
        &self,
        job: &ClaimedJob,
        error: &str,
        delay: Duration,
    ) -> Result<bool, StoreError> {
        let error = storable::unindexed_text(error).into_owned();
        self.finish_job(job, Ending::Retry { error, delay }, None, None)
            .await
    }

    /// Dead-letters the job with its final error (and a result, when there is one to keep).
    pub async fn discard_if_running(
        &self,
        job: &ClaimedJob,
        error: &str,
        result: Option<&JobResult>,
        handoff: Option<&Handoff>,
    ) -> Result<bool, StoreError> {
        let error = storable::unindexed_text(error).into_owned();
        self.finish_job(job, Ending::Discard { error }, result, handoff)
            .await
    }

    /// Gives a running job back (shutdown): available at once, the attempt not counted.
    pub async fn release_if_running(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        let released =
            queue::finish(&self.db, &JOBS, (job.id.0, job.attempt), Finish::Release).await?;
        if released {
            // Another worker may take it at once.
            self.wake(&JOBS).await?;
        }
        Ok(released)
    }

    /// The guarded finish, the result and the hand-off in one transaction; on SQLite shared
    /// with other jobs finishing at the same moment (see `finish_group`).
    async fn finish_job(
        &self,
        job: &ClaimedJob,
        ending: Ending,
        result: Option<&JobResult>,
        handoff: Option<&Handoff>,
    ) -> Result<bool, StoreError> {
        let finish = JobFinish {
            job: (job.id, job.attempt),
            ending,
            result: result.map(|r| storable_result(r).into_owned()),
            handoff: handoff.map(|h| storable_handoff(h).into_owned()),
        };
        match &self.db {
            Db::Sqlite(..) => self.finisher().finish(finish).await,
            Db::Postgres(_) => finish_alone(&self.db, &finish, &self.wakeups.deliveries).await,
        }
    }

    /// Running jobs whose lease expired (their worker died) become retryable, or discarded when
    /// they had their last attempt. Returns how many were rescued.
    pub async fn rescue_expired_leases(&self, max_attempts: i32) -> Result<u64, StoreError> {
        queue::rescue(&self.db, &JOBS, max_attempts).await
    }

    /// A result another job already stored for this resource. `id DESC` breaks ties between
    /// results stored within the same millisecond.
    pub async fn find_stored_result(
        &self,
        resource_kind: &str,
        resource_id: &str,
        except_job: JobId,
    ) -> Result<Option<StoredResult>, StoreError> {
        let row = (&self.db)
            .fetch_optional(
                "SELECT location, size_bytes, sha256, summary FROM results
                 WHERE resource_kind = $1 AND resource_id = $2 AND outcome = 'stored'
                   AND job_id <> $3
                 ORDER BY created_at DESC, id DESC LIMIT 1",
                &[
                    Arg::Text(resource_kind),
                    Arg::Text(resource_id),
                    Arg::Int(except_job.0),
                ],
            )
            .await?;
        row.map(|row| {
            Ok(StoredResult {
                location: row.get("location")?,
                size_bytes: row.get("size_bytes")?,
                sha256: row.get("sha256")?,
                summary: row.get("summary")?,
            })
        })
        .transpose()
    }

    /// The newest jobs first, a page of `limit` from the filter's cursor.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: i64,
    ) -> Result<Vec<JobSummary>, StoreError> {
        let sql = format!(
            "{select} WHERE {filter} ORDER BY q.id DESC LIMIT $6",
            select = self.job_select(),
            filter = job_filter(self.dialect())
        );
        let mut args = job_filter_args(filter).to_vec();
        args.push(Arg::Int(limit.max(0)));
        let rows = (&self.db).fetch_all(&sql, &args).await?;
        rows.iter().map(job_summary).collect()
    }

    /// The dead letters a bulk retry with `filter` would re-queue (its state is ignored: only
    /// discarded jobs are counted).
    pub async fn count_discarded(&self, filter: &JobFilter) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT count(*) AS n FROM jobs q JOIN events e ON e.id = q.event_id
             WHERE q.state = 'discarded' AND {filter}",
            filter = job_filter(self.dialect())
        );
        let filter = JobFilter {
            state: None,
            ..filter.clone()
        };
        let row = (&self.db)
            .fetch_optional(&sql, &job_filter_args(&filter))
            .await?;
        let count: i64 = row.map(|row| row.get("n")).transpose()?.unwrap_or(0);
        Ok(count as u64)
    }

    /// Re-queues the dead letters matching `filter` (its state is ignored); returns how many.
    pub async fn requeue_discarded_matching(&self, filter: &JobFilter) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE jobs SET {reset} WHERE state = 'discarded' AND id IN (
                 SELECT q.id FROM jobs q JOIN events e ON e.id = q.event_id
                 WHERE q.state = 'discarded' AND {filter})",
            reset = queue::reset(self.dialect()),
            filter = job_filter(self.dialect())
        );
        let filter = JobFilter {
            state: None,
            ..filter.clone()
        };
        let requeued = (&self.db).execute(&sql, &job_filter_args(&filter)).await?;
        if requeued > 0 {
            self.wake(&JOBS).await?;
        }
        Ok(requeued)
    }

    /// Cancels a job that waits to run (available, or retryable after a failure): it will not
    /// run unless re-queued. A running job is not interrupted.
    pub async fn cancel_job(&self, id: JobId) -> Result<Cancelled, StoreError> {
        let sql = format!(
            "UPDATE jobs SET state = 'cancelled', finalized_at = {now}
             WHERE id = $1 AND state IN ('available', 'retryable')",
            now = self.dialect().now()
        );
        if (&self.db).execute(&sql, &[Arg::Int(id.0)]).await? == 1 {
            return Ok(Cancelled::Cancelled);
        }
        let row = (&self.db)
            .fetch_optional("SELECT state FROM jobs WHERE id = $1", &[Arg::Int(id.0)])
            .await?;
        Ok(match row {
            Some(row) => Cancelled::NotWaiting(state(&row, "state")?),
            None => Cancelled::NotFound,
        })
    }

    /// The job of the event with this `webhook-id`, with its attempts and result.
    pub async fn job_of_event(&self, webhook_id: &str) -> Result<Option<JobDetail>, StoreError> {
        let sql = format!("{} WHERE e.webhook_id = $1", self.job_select());
        let row = (&self.db)
            .fetch_optional(&sql, &[Arg::Text(webhook_id)])
            .await?;
        row.as_ref().map(job_detail).transpose()
    }

    /// Everything about one job: every attempt's error and the result.
    pub async fn find_job(&self, id: JobId) -> Result<Option<JobDetail>, StoreError> {
        let sql = format!("{} WHERE q.id = $1", self.job_select());
        let row = (&self.db).fetch_optional(&sql, &[Arg::Int(id.0)]).await?;
        row.as_ref().map(job_detail).transpose()
    }

    /// A job's columns, its event's id and type, and its result as one JSON object (the
    /// results row without `id` and `job_id`).
    fn job_select(&self) -> String {
        let d = self.dialect();
        let result = d.object(&format!(
            "'resource_kind', r.resource_kind, 'resource_id', r.resource_id,
             'outcome', r.outcome, 'location', r.location, 'size_bytes', r.size_bytes,
             'sha256', r.sha256, 'summary', {summary}, 'created_at', {created_at}",
            summary = d.json_value("r.summary"),
            created_at = d.time_in_json("r.created_at"),
        ));
        format!(
            "SELECT {columns}, e.webhook_id, e.event_type,
                 (SELECT {result} FROM results r WHERE r.job_id = q.id) AS result
             FROM jobs q JOIN events e ON e.id = q.event_id",
            columns = queue::summary_columns(d),
        )
    }

    /// Re-queues one job that is not running (attempts start again from zero).
    pub async fn requeue_job(&self, id: JobId) -> Result<Requeued, StoreError> {
        Ok(match queue::requeue_one(&self.db, &JOBS, id.0).await? {
            RequeuedOne::Queued => {
                self.wake(&JOBS).await?;
                Requeued::Queued(id)
            }
            RequeuedOne::Running => Requeued::Running,
            RequeuedOne::NotFound => Requeued::NotFound,
        })
    }

    /// Processes a stored event again: its job is re-queued.
    pub async fn replay_event(&self, webhook_id: &str) -> Result<Requeued, StoreError> {
        let job = (&self.db)
            .fetch_optional(
                "SELECT j.id FROM jobs j JOIN events e ON e.id = j.event_id
                 WHERE e.webhook_id = $1",
                &[Arg::Text(webhook_id)],
            )
            .await?;
        match job {
            Some(row) => self.requeue_job(JobId(row.get("id")?)).await,
            None => Ok(Requeued::NotFound),
        }
    }

    /// The queue at a glance: for metrics, readiness and `gemhook stats`.
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        Ok(QueueStats {
            by_state: queue::counts(&self.db, &JOBS).await?,
            backlog_age_secs: queue::backlog_age_secs(&self.db, &JOBS).await?,
        })
    }

    /// Dead letters grouped by their last error, most common first.
    pub async fn discard_reasons(&self, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        queue::discard_reasons(&self.db, &JOBS, limit).await
    }
}

/// What a list of jobs, a count or a bulk retry filter on, as `$1`..`$5` (the bindings of
/// [`job_filter_args`]), over `jobs q JOIN events e`.
fn job_filter(d: Dialect) -> String {
    format!(
        "($1 IS NULL OR q.state = $1)
         AND ($2 IS NULL OR e.event_type = $2)
         AND ($3 IS NULL OR q.created_at >= $3)
         AND ($4 IS NULL OR {last_error} = $4)
         AND ($5 IS NULL OR q.id < $5)",
        last_error = d.last_error("q.errors")
    )
}

fn job_filter_args(filter: &JobFilter) -> [Arg<'_>; 5] {
    [
        Arg::OptText(filter.state.map(|s| s.as_str())),
        Arg::OptText(filter.event_type.as_deref()),
        Arg::OptTime(filter.since),
        Arg::OptText(filter.last_error.as_deref()),
        Arg::OptInt(filter.before),
    ]
}

fn job_detail(row: &Row) -> Result<JobDetail, StoreError> {
    Ok(JobDetail {
        summary: job_summary(row)?,
        locked_by: row.get("locked_by")?,
        locked_until: row.opt_time("locked_until")?,
        errors: row.get("errors")?,
        result: row.get("result")?,
    })
}

fn job_summary(row: &Row) -> Result<JobSummary, StoreError> {
    Ok(JobSummary {
        id: row.get("id")?,
        webhook_id: row.get("webhook_id")?,
        event_type: row.get("event_type")?,
        state: state(row, "state")?,
        attempt: row.get("attempt")?,
        scheduled_at: row.time("scheduled_at")?,
        attempted_at: row.opt_time("attempted_at")?,
        finalized_at: row.opt_time("finalized_at")?,
        created_at: row.time("created_at")?,
        last_error: row.get("last_error")?,
    })
}

/// One result per job: a replay's new result replaces the old.
pub(super) async fn upsert_result(
    tx: &mut Tx,
    job: JobId,
    result: &JobResult,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO results
             (job_id, resource_kind, resource_id, outcome, location, size_bytes, sha256, summary)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (job_id) DO UPDATE SET
             resource_kind = excluded.resource_kind, resource_id = excluded.resource_id,
             outcome = excluded.outcome, location = excluded.location,
             size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
             summary = excluded.summary, created_at = {now}",
        now = tx.dialect().now()
    );
    let args = [
        Arg::Int(job.0),
        Arg::Text(result.resource_kind),
        Arg::OptText(result.resource_id.as_deref()),
        Arg::Text(result.outcome),
        Arg::OptText(result.location.as_deref()),
        Arg::OptInt(result.size_bytes),
        Arg::OptText(result.sha256.as_deref()),
        Arg::Json(&result.summary),
    ];
    let mut on = tx;
    on.execute(&sql, &args).await?;
    Ok(())
}
