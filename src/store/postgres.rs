//! The Postgres backend: one small function per statement.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Row, migrate::Migrator};

use super::group_commit::{BatchLimits, GroupWriter};
use super::pg_jobs::DELIVERIES_CHANNEL;
use super::pg_read_only::{READ_ONLY_QUERY, ReadOnlyWatch};
use super::{
    ConnectOptions, EventFilter, EventRecord, EventSummary, JobId, NewEvent, PruneScope, Readiness,
    Recorded, StoreError,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel the receiver notifies when it enqueues jobs; workers `LISTEN` on it.
pub const JOBS_CHANNEL: &str = "gemhook_jobs";

#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    /// Woken when this process enqueues a job, and by `LISTEN` for other processes' jobs.
    pub(super) wakeups: Arc<Notify>,
    /// Woken when a finished job queued hand-off deliveries (here or, by `LISTEN`, elsewhere).
    pub(super) delivery_wakeups: Arc<Notify>,
    /// When set, deliveries are recorded in shared transactions (see `group_commit`).
    writer: Option<Arc<GroupWriter>>,
    /// Where `LISTEN` connects when not through the pool's URL: a transaction-mode pooler
    /// hands each transaction to any server connection, so a subscription made on one would
    /// be lost, or worse, left on a connection another client then uses.
    listen: Option<PgPool>,
    read_only: Arc<ReadOnlyWatch>,
}

impl PgStore {
    pub fn connect_lazy(url: &str, options: &ConnectOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(StoreError::InvalidUrl)?
            // Statements carry bodies as bind parameters, never in the SQL text; still, keep
            // per-statement logs at trace so a debug log is not flooded on the ack path.
            .log_statements(tracing::log::LevelFilter::Trace)
            .application_name("gemhook");
        let listen = options
            .listen_url
            .as_deref()
            .map(|url| {
                let connect = PgConnectOptions::from_str(url)
                    .map_err(StoreError::InvalidUrl)?
                    .application_name("gemhook-listen");
                // One connection, held for as long as the listener runs.
                Ok::<_, StoreError>(
                    PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(options.acquire_timeout)
                        .idle_timeout(None)
                        .max_lifetime(None)
                        .connect_lazy_with(connect),
                )
            })
            .transpose()?;
        let read_only = ReadOnlyWatch::new();
        let watch = read_only.clone();
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .before_acquire(move |connection, meta| Box::pin(watch.clone().keep(connection, meta)))
            .connect_lazy_with(connect);
        Ok(PgStore {
            pool,
            wakeups: Arc::new(Notify::new()),
            delivery_wakeups: Arc::new(Notify::new()),
            writer: None,
            listen,
            read_only,
        })
    }

    pub fn with_group_commit(mut self, writers: usize, limits: BatchLimits) -> PgStore {
        self.writer = (writers > 0).then(|| {
            Arc::new(GroupWriter::start(
                self.pool.clone(),
                self.wakeups.clone(),
                writers,
                limits,
            ))
        });
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub async fn readiness(&self) -> Readiness {
        let applied: Result<Vec<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await;
        let read_only: Result<bool, sqlx::Error> = sqlx::query_scalar(READ_ONLY_QUERY)
            .fetch_one(&self.pool)
            .await;
        // Arms the pool's check of stale read-only connections for as long as probes see it.
        if matches!(read_only, Ok(true)) {
            self.read_only.seen();
        }
        let writable = matches!(read_only, Ok(false));
        match applied {
            Ok(applied) => Readiness {
                database: true,
                migrations_applied: MIGRATOR.iter().all(|m| applied.contains(&m.version)),
                writable,
            },
            // The table is missing before the first migration: the database answers, the
            // schema is not there.
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

    /// One statement, hence one transaction: the event, its job and the worker's wake-up commit
    /// together or not at all. `ON CONFLICT DO NOTHING` makes a concurrent duplicate wait for the
    /// first insert's commit and then insert nothing, so 20 simultaneous copies give one row each.
    pub async fn record_delivery(&self, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
        let recorded = self.record_delivery_once(event).await;
        if let Err(error) = &recorded {
            self.read_only.note(error);
        }
        recorded
    }

    async fn record_delivery_once(&self, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
        if let Some(writer) = &self.writer {
            return writer.record(event).await;
        }
        let fields = event.storable_fields();
        let job_id: Option<i64> = sqlx::query_scalar(
            r#"
            WITH new_event AS (
                INSERT INTO events
                    (webhook_id, webhook_timestamp, event_type, resource_id, status, scheme, headers, body, altered)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10)
                ON CONFLICT (webhook_id) DO NOTHING
                RETURNING id
            ), new_job AS (
                INSERT INTO jobs (event_id)
                SELECT id FROM new_event
                RETURNING id
            )
            SELECT id, pg_notify($9, '') FROM new_job
            "#,
        )
        .bind(event.webhook_id)
        .bind(event.webhook_timestamp)
        .bind(fields.event_type.as_deref())
        .bind(fields.resource_id.as_deref())
        .bind(event.envelope.status.as_str())
        .bind(event.scheme.as_str())
        .bind(event.headers)
        .bind(event.body.as_ref())
        .bind(JOBS_CHANNEL)
        .bind(fields.altered.as_deref())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match job_id {
            Some(id) => {
                // A worker in this process starts at once, without the NOTIFY round trip.
                self.wakeups.notify_one();
                Recorded::Accepted { job_id: JobId(id) }
            }
            None => Recorded::Duplicate,
        })
    }

    pub async fn list_events(
        &self,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let rows = sqlx::query(
            r#"
            SELECT e.webhook_id, e.event_type, e.resource_id, e.status, e.scheme, e.received_at,
                   j.state AS job_state
            FROM events e LEFT JOIN jobs j ON j.event_id = e.id
            WHERE ($2::text IS NULL OR e.event_type = $2)
              AND ($3::text IS NULL OR e.status = $3)
              AND ($4::timestamptz IS NULL OR e.received_at >= $4)
            ORDER BY e.received_at DESC, e.id DESC
            LIMIT $1
            "#,
        )
        .bind(limit)
        .bind(filter.event_type.as_deref())
        .bind(filter.status.as_deref())
        .bind(filter.since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary_from_row).collect()
    }

    pub async fn find_event(&self, webhook_id: &str) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(
            r#"
            SELECT e.webhook_id, e.event_type, e.resource_id, e.status, e.scheme, e.received_at,
                   j.state AS job_state, e.webhook_timestamp, e.headers, e.altered, e.body
            FROM events e LEFT JOIN jobs j ON j.event_id = e.id
            WHERE e.webhook_id = $1
            "#,
        )
        .bind(webhook_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(EventRecord {
                summary: summary_from_row(&row)?,
                webhook_timestamp: row.try_get("webhook_timestamp")?,
                headers: row.try_get("headers")?,
                altered: row.try_get("altered")?,
                body: row.try_get("body")?,
            })
        })
        .transpose()
    }

    pub async fn prune_batch(&self, scope: &PruneScope, batch: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "DELETE FROM events WHERE id IN (
                 SELECT e.id FROM events e LEFT JOIN jobs j ON j.event_id = e.id
                 WHERE {PRUNABLE} ORDER BY e.id LIMIT $3)"
        ))
        .bind(scope.cutoff)
        .bind(scope.include_discarded)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn count_prunable(&self, scope: &PruneScope) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM events e LEFT JOIN jobs j ON j.event_id = e.id WHERE {PRUNABLE}"
        ))
        .bind(scope.cutoff)
        .bind(scope.include_discarded)
        .fetch_one(&self.pool)
        .await?;
        Ok(count as u64)
    }

    pub fn job_wakeups(&self) -> Arc<Notify> {
        self.wakeups.clone()
    }

    pub fn delivery_wakeups(&self) -> Arc<Notify> {
        self.delivery_wakeups.clone()
    }

    /// Forwards `NOTIFY gemhook_jobs` from any process to [`Self::job_wakeups`], reconnecting
    /// after errors. Missing a notification costs at most one poll interval, never a job.
    pub fn listen_for_jobs(&self) {
        let pool = self.pool.clone();
        let wakeups = self.wakeups.clone();
        let delivery_wakeups = self.delivery_wakeups.clone();
        let listen_pool = self.listen.clone().unwrap_or_else(|| pool.clone());
        tokio::spawn(async move {
            loop {
                match PgListener::connect_with(&listen_pool).await {
                    Ok(mut listener) => {
                        let channels = [JOBS_CHANNEL, DELIVERIES_CHANNEL];
                        if let Err(error) = listener.listen_all(channels).await {
                            tracing::warn!(error = %crate::telemetry::error_chain(&error), "LISTEN failed");
                        } else {
                            // A (re)connection may have missed notifications: look once.
                            wakeups.notify_one();
                            delivery_wakeups.notify_one();
                            while let Ok(notification) = listener.recv().await {
                                if notification.channel() == DELIVERIES_CHANNEL {
                                    delivery_wakeups.notify_one();
                                } else {
                                    wakeups.notify_one();
                                }
                            }
                        }
                    }
                    Err(error) if pool.is_closed() || listen_pool.is_closed() => {
                        tracing::debug!(error = %error, "job listener stopped: pool closed");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(error = %crate::telemetry::error_chain(&error), "job listener cannot connect");
                    }
                }
                if pool.is_closed() || listen_pool.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    pub async fn close(&self) {
        if let Some(listen) = &self.listen {
            listen.close().await;
        }
        self.pool.close().await;
    }
}

/// Old enough, and finished (or dead-lettered when asked): never a job still in flight.
const PRUNABLE: &str =
    "e.received_at < $1 AND (j.id IS NULL OR j.state IN ('completed', 'cancelled')
    OR ($2 AND j.state = 'discarded'))";

fn summary_from_row(row: &sqlx::postgres::PgRow) -> Result<EventSummary, StoreError> {
    Ok(EventSummary {
        webhook_id: row.try_get("webhook_id")?,
        event_type: row.try_get("event_type")?,
        resource_id: row.try_get("resource_id")?,
        status: row.try_get("status")?,
        scheme: row.try_get("scheme")?,
        received_at: row.try_get("received_at")?,
        job_state: row.try_get("job_state")?,
    })
}
