//! What only the Postgres backend has: group commit on the ack path, `LISTEN/NOTIFY` across
//! processes, a direct connection for `LISTEN` behind a transaction-mode pooler, and the watch
//! for a database that turned read-only. Every other statement is in the shared modules.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;

use super::db::{Arg, Db, Dialect, Exec as _};
use super::events::{self, EventRow};
use super::group_commit::{BatchLimits, GroupWriter};
use super::pg_read_only::{READ_ONLY_QUERY, ReadOnlyWatch};
use super::queue::{DELIVERIES, JOBS};
use super::{ConnectOptions, JobId, NewEvent, Readiness, Recorded, StoreError};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel the receiver notifies when it enqueues jobs; workers `LISTEN` on it.
pub(super) const JOBS_CHANNEL: &str = JOBS.channel;

#[derive(Debug, Clone)]
pub(super) struct Postgres {
    /// When set, deliveries are recorded in shared transactions (see `group_commit`).
    writer: Option<Arc<GroupWriter>>,
    /// Where `LISTEN` connects when not through the pool's URL: a transaction-mode pooler
    /// hands each transaction to any server connection, so a subscription made on one would
    /// be lost, or worse, left on a connection another client then uses.
    listen: Option<PgPool>,
    read_only: Arc<ReadOnlyWatch>,
}

pub(super) fn connect_lazy(
    url: &str,
    options: &ConnectOptions,
) -> Result<(PgPool, Postgres), StoreError> {
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
    let parts = Postgres {
        writer: None,
        listen,
        read_only,
    };
    Ok((pool, parts))
}

/// Connects once, directly, with the pool's options, to say why it cannot (refused, unknown
/// host, authentication) where the pool says only "timed out".
pub(super) async fn check_connection(pool: &PgPool) -> Result<(), StoreError> {
    let options = pool.connect_options();
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    );
    let connection = options
        .connect()
        .await
        .map_err(|source| StoreError::Connect { target, source })?;
    let _ = connection.close().await;
    Ok(())
}

/// sqlx takes an advisory lock, so replicas starting together migrate one at a time.
pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

impl Postgres {
    pub(super) fn start_group_commit(
        &mut self,
        db: &Db,
        wakeups: &Arc<Notify>,
        writers: usize,
        limits: BatchLimits,
    ) {
        self.writer = (writers > 0).then(|| {
            Arc::new(GroupWriter::start(
                db.clone(),
                wakeups.clone(),
                writers,
                limits,
            ))
        });
    }

    pub(super) fn writer(&self) -> Option<&GroupWriter> {
        self.writer.as_deref()
    }

    pub(super) async fn readiness(&self, pool: &PgPool) -> Readiness {
        let applied: Result<Vec<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(pool)
                .await;
        let read_only: Result<bool, sqlx::Error> =
            sqlx::query_scalar(READ_ONLY_QUERY).fetch_one(pool).await;
        // Arms the pool's check of stale read-only connections for as long as probes see it.
        if matches!(read_only, Ok(true)) {
            self.read_only.seen();
        }
        let writable = matches!(read_only, Ok(false));
        super::readiness_from(&MIGRATOR, applied, writable)
    }

    /// One statement, hence one transaction: the event, its job and the workers' wake-up
    /// commit together or not at all (or, with group commit, one such statement for a batch).
    /// `ON CONFLICT DO NOTHING` makes a concurrent duplicate wait for the first insert's commit
    /// and then insert nothing, so 20 simultaneous copies give one row each.
    pub(super) async fn record_delivery(
        &self,
        db: &Db,
        event: &NewEvent<'_>,
    ) -> Result<Recorded, StoreError> {
        let recorded = match &self.writer {
            Some(writer) => writer.record(event).await,
            None => record_one(db, event).await,
        };
        if let Err(error) = &recorded {
            self.read_only.note(error);
        }
        recorded
    }

    /// Forwards `NOTIFY` from any process to the in-process wake-ups, reconnecting after
    /// errors. Missing a notification costs at most one poll interval, never a job.
    pub(super) fn listen(&self, pool: &PgPool, jobs: &Arc<Notify>, deliveries: &Arc<Notify>) {
        let pool = pool.clone();
        let (jobs, deliveries) = (jobs.clone(), deliveries.clone());
        let listen_pool = self.listen.clone().unwrap_or_else(|| pool.clone());
        tokio::spawn(async move {
            loop {
                match PgListener::connect_with(&listen_pool).await {
                    Ok(mut listener) => {
                        let channels = [JOBS.channel, DELIVERIES.channel];
                        if let Err(error) = listener.listen_all(channels).await {
                            tracing::warn!(error = %crate::telemetry::error_chain(&error), "LISTEN failed");
                        } else {
                            // A (re)connection may have missed notifications: look once.
                            jobs.notify_one();
                            deliveries.notify_one();
                            while let Ok(notification) = listener.recv().await {
                                if notification.channel() == DELIVERIES.channel {
                                    deliveries.notify_one();
                                } else {
                                    jobs.notify_one();
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

    pub(super) async fn close(&self) {
        if let Some(listen) = &self.listen {
            listen.close().await;
        }
    }
}

/// One delivery, one statement: the event, its job and the `NOTIFY`.
async fn record_one(mut db: &Db, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
    let row = EventRow::from(event);
    let sql = format!(
        "WITH new_event AS ({insert}), new_job AS (
             INSERT INTO jobs (event_id) SELECT id FROM new_event RETURNING id
         )
         SELECT id, pg_notify(${channel}, '') FROM new_job",
        insert = events::insert_many(Dialect::Postgres, 1),
        channel = events::INSERT_ARGS + 1,
    );
    let mut args = row.insert_args().to_vec();
    args.push(Arg::Text(JOBS_CHANNEL));
    Ok(match db.fetch_optional(&sql, &args).await? {
        Some(row) => Recorded::Accepted {
            job_id: JobId(row.get("id")?),
        },
        None => Recorded::Duplicate,
    })
}
