//! The embedded SQLite backend: the default when no database URL is given. One small function
//! per statement, the same behaviour as [`super::PgStore`].
//!
//! Where Postgres has a feature SQLite lacks, the simplest correct equivalent stands in:
//!
//! - Writers are serialised by SQLite itself (one writer at a time per file, across processes).
//!   Every multi-statement transaction starts with `BEGIN IMMEDIATE`, which takes the write lock
//!   up front and waits for it (`busy_timeout`); a deferred `BEGIN` would read first and could
//!   fail, without waiting, when upgrading to a write after another writer committed.
//! - `LISTEN/NOTIFY` becomes an in-process [`Notify`]: a worker in this process wakes at once;
//!   a worker in another process on the same file finds the job at its next poll.
//! - Timestamps are INTEGER milliseconds since the Unix epoch (UTC): ordering and
//!   `now + lease` are integer arithmetic, and reads turn them into `DateTime<Utc>`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::ConnectOptions as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, migrate::Migrator};
use tokio::sync::Notify;

use super::{
    ConnectOptions, EventFilter, EventRecord, EventSummary, JobId, NewEvent, PruneScope, Readiness,
    Recorded, StoreError,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The database's "now" in milliseconds since the epoch. SQLite keeps `'now'` fixed for the
/// whole of one statement, like Postgres' `now()` within a transaction. `julianday` (rather than
/// `unixepoch(..., 'subsec')`) keeps the schema readable by older `sqlite3` shells; SQLite's clock
/// has millisecond resolution, so the rounding is exact. The migrations' defaults repeat it.
pub(super) const NOW_MS: &str = "CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)";

/// The database's "now" as RFC 3339 text with milliseconds, for timestamps inside JSON.
pub(super) const NOW_TEXT: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Starts a transaction that holds the write lock from its first statement (see the module
/// documentation).
pub(super) const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// How long a statement waits for another connection's (or process's) write lock before it
/// fails. Write transactions here last milliseconds; this only bites when the file is wedged.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    /// Woken when this process enqueues or re-queues a job.
    pub(super) wakeups: Arc<Notify>,
    /// Woken when this process queues or re-queues hand-off deliveries.
    pub(super) delivery_wakeups: Arc<Notify>,
}

impl SqliteStore {
    /// Accepts `sqlite://path`, `sqlite:path` and `sqlite:///absolute/path`. Creates the parent
    /// folder now and the file on first connection; nothing else happens until the first
    /// statement.
    pub fn connect_lazy(url: &str, options: &ConnectOptions) -> Result<Self, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl);
        }
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::InvalidUrl)?
            .create_if_missing(true)
            // FULL, not NORMAL: in WAL mode NORMAL skips the fsync at commit, so a power loss
            // can roll back transactions that already committed, and the 2xx Gemini got for
            // them would be a lie (it will not send the delivery again). FULL syncs the WAL on
            // every commit, so "committed" means "on disk" before we answer.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .log_statements(tracing::log::LevelFilter::Trace);
        let file = connect.get_filename();
        if file.as_os_str().is_empty() {
            return Err(StoreError::InvalidUrl(sqlx::Error::Configuration(
                "the sqlite URL names no file".into(),
            )));
        }
        if !is_in_memory(url) {
            if let Some(folder) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(folder).map_err(|source| StoreError::SqliteFile {
                    path: folder.to_owned(),
                    source,
                })?;
            }
            // Opened here, not at the first statement, so that a read-only folder or file is
            // reported with its path (SQLite itself says only "unable to open database file").
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .map_err(|source| StoreError::SqliteFile {
                    path: file.to_owned(),
                    source,
                })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(|conn, _meta| Box::pin(use_wal(conn)))
            // SQLite rolls a transaction back by itself when a write fails with SQLITE_FULL or
            // SQLITE_IOERR; sqlx's own ROLLBACK then fails ("no transaction is active") and it
            // keeps counting the transaction as open, so every later `BEGIN IMMEDIATE` on that
            // connection fails: after a full disk the receiver answered 503 forever. A
            // connection given back still "in a transaction" is closed instead of reused.
            .after_release(|conn, _meta| {
                let reusable = !sqlx::Connection::is_in_transaction(conn);
                Box::pin(async move { Ok(reusable) })
            })
            .connect_lazy_with(connect);
        Ok(SqliteStore {
            pool,
            wakeups: Arc::new(Notify::new()),
            delivery_wakeups: Arc::new(Notify::new()),
        })
    }

    /// Ignored: SQLite has one writer at a time, and `record_delivery` is already one short
    /// transaction on it.
    pub fn with_group_commit(self, _writers: usize, _limits: super::BatchLimits) -> SqliteStore {
        self
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies the migrations inside one `BEGIN IMMEDIATE` transaction. SQLite has no advisory
    /// lock (sqlx's migration lock is a no-op here), so two processes starting together on one
    /// file would otherwise both apply the first migration; this way the second waits, then
    /// finds everything applied. sqlx runs each migration in a savepoint inside it.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
        // `run_direct`, not `run(&mut *tx)`: the latter's `Acquire` bound makes this future
        // fail the `Send` check ("implementation of `Acquire` is not general enough") as soon as
        // it is spawned; sqlx keeps `run_direct` public for exactly that.
        MIGRATOR.run_direct(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn readiness(&self) -> Readiness {
        let applied: Result<Vec<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await;
        match applied {
            Ok(applied) => Readiness {
                database: true,
                migrations_applied: MIGRATOR.iter().all(|m| applied.contains(&m.version)),
                writable: true,
            },
            // The table is missing before the first migration: the database answers, the
            // schema is not there.
            Err(sqlx::Error::Database(_)) => Readiness {
                database: true,
                migrations_applied: false,
                writable: true,
            },
            Err(_) => Readiness {
                database: false,
                migrations_applied: false,
                writable: false,
            },
        }
    }

    /// The event and its job in one `BEGIN IMMEDIATE` transaction: they commit together or not
    /// at all. Concurrent copies of one delivery queue for the write lock; the first inserts,
    /// the others then see its committed row, `ON CONFLICT DO NOTHING` returns no id, and they
    /// write nothing, so 20 simultaneous copies give one event and one job.
    pub async fn record_delivery(&self, event: &NewEvent<'_>) -> Result<Recorded, StoreError> {
        let fields = event.storable_fields();
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
        let event_id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO events
                 (webhook_id, webhook_timestamp, event_type, resource_id, status, scheme, headers, body, altered)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (webhook_id) DO NOTHING
             RETURNING id",
        )
        .bind(event.webhook_id)
        .bind(event.webhook_timestamp)
        .bind(fields.event_type.as_deref())
        .bind(fields.resource_id.as_deref())
        .bind(event.envelope.status.as_str())
        .bind(event.scheme.as_str())
        .bind(event.headers)
        .bind(event.body.as_ref())
        .bind(fields.altered.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(event_id) = event_id else {
            // Nothing was written; end the transaction now rather than on drop.
            tx.rollback().await?;
            return Ok(Recorded::Duplicate);
        };
        let job_id: i64 =
            sqlx::query_scalar("INSERT INTO jobs (event_id) VALUES (?1) RETURNING id")
                .bind(event_id)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        self.wakeups.notify_one();
        Ok(Recorded::Accepted {
            job_id: JobId(job_id),
        })
    }

    pub async fn list_events(
        &self,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.webhook_id, e.event_type, e.resource_id, e.status, e.scheme, e.received_at,
                    j.state AS job_state
             FROM events e LEFT JOIN jobs j ON j.event_id = e.id
             WHERE (?2 IS NULL OR e.event_type = ?2)
               AND (?3 IS NULL OR e.status = ?3)
               AND (?4 IS NULL OR e.received_at >= ?4)
             ORDER BY e.received_at DESC, e.id DESC
             LIMIT ?1",
        )
        // SQLite reads a negative LIMIT as "no limit".
        .bind(limit.max(0))
        .bind(filter.event_type.as_deref())
        .bind(filter.status.as_deref())
        .bind(filter.since.map(|since| since.timestamp_millis()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary_from_row).collect()
    }

    pub async fn find_event(&self, webhook_id: &str) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT e.webhook_id, e.event_type, e.resource_id, e.status, e.scheme, e.received_at,
                    j.state AS job_state, e.webhook_timestamp, e.headers, e.altered, e.body
             FROM events e LEFT JOIN jobs j ON j.event_id = e.id
             WHERE e.webhook_id = ?1",
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

    /// One `DELETE` of at most `batch` events; their jobs and results go with them
    /// (`ON DELETE CASCADE`, enforced because every connection turns `foreign_keys` on).
    pub async fn prune_batch(&self, scope: &PruneScope, batch: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "DELETE FROM events WHERE id IN (
                 SELECT e.id FROM events e LEFT JOIN jobs j ON j.event_id = e.id
                 WHERE {PRUNABLE} ORDER BY e.id LIMIT ?3)"
        ))
        .bind(scope.cutoff.timestamp_millis())
        .bind(scope.include_discarded)
        .bind(batch.max(0))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn count_prunable(&self, scope: &PruneScope) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM events e LEFT JOIN jobs j ON j.event_id = e.id WHERE {PRUNABLE}"
        ))
        .bind(scope.cutoff.timestamp_millis())
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

    /// A no-op: SQLite has no channel between processes. Jobs and deliveries queued by another
    /// process on the same file are found by the worker's and dispatcher's fallback poll.
    pub fn listen_for_jobs(&self) {}

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Old enough, and finished (or dead-lettered when asked): never a job still in flight.
const PRUNABLE: &str =
    "e.received_at < ?1 AND (j.id IS NULL OR j.state IN ('completed', 'cancelled')
    OR (?2 AND j.state = 'discarded'))";

/// WAL: readers (the CLI, list endpoints) never block the writer, nor it them; the mode is
/// stored in the file, so this only changes anything on a new file. Not set through
/// `SqliteConnectOptions::journal_mode`: switching a file to WAL needs it to itself and SQLite
/// answers `SQLITE_BUSY` at once, without the busy timeout, so two processes (or two pool
/// connections) opening a new file together would fail to connect. Retried here instead.
async fn use_wal(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let mode = sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await;
        match mode {
            // An in-memory database answers `memory`: WAL does not apply.
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(error)) if is_busy(&*error) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// `SQLITE_BUSY` and its extended codes (`SQLITE_BUSY_RECOVERY`, ...).
fn is_busy(error: &dyn sqlx::error::DatabaseError) -> bool {
    const SQLITE_BUSY: i32 = 5;
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

/// The file a `sqlite:` URL names, when it names one (not an in-memory database).
pub fn file_of(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") || is_in_memory(url) {
        return None;
    }
    SqliteConnectOptions::from_str(url)
        .ok()
        .map(|options| options.get_filename().to_owned())
        .filter(|path| !path.as_os_str().is_empty())
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Milliseconds for a bind parameter, capped at a century so `now + interval` cannot overflow
/// SQLite's integers (an overflow would silently turn the column into a REAL).
pub(super) fn millis(duration: Duration) -> i64 {
    const CENTURY_MS: i64 = 100 * 366 * 24 * 60 * 60 * 1000;
    i64::try_from(duration.as_millis()).map_or(CENTURY_MS, |ms| ms.min(CENTURY_MS))
}

/// Reads a timestamp column (epoch milliseconds).
pub(super) fn timestamp(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, StoreError> {
    let ms: i64 = row.try_get(column)?;
    from_millis(column, ms)
}

/// Reads a nullable timestamp column (epoch milliseconds).
pub(super) fn optional_timestamp(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let ms: Option<i64> = row.try_get(column)?;
    ms.map(|ms| from_millis(column, ms)).transpose()
}

fn from_millis(column: &str, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| {
        StoreError::Database(sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: format!("{ms} ms since the epoch is out of range").into(),
        })
    })
}

fn summary_from_row(row: &SqliteRow) -> Result<EventSummary, StoreError> {
    Ok(EventSummary {
        webhook_id: row.try_get("webhook_id")?,
        event_type: row.try_get("event_type")?,
        resource_id: row.try_get("resource_id")?,
        status: row.try_get("status")?,
        scheme: row.try_get("scheme")?,
        received_at: timestamp(row, "received_at")?,
        job_state: row.try_get("job_state")?,
    })
}

/// Helpers shared by the SQLite unit tests: a fresh database file per test.
#[cfg(test)]
pub(super) mod testing {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::SqliteStore;
    use crate::envelope::Envelope;
    use crate::store::{ConnectOptions, NewEvent, Recorded};
    use crate::verify::Scheme;

    /// A database file of its own, removed (with its WAL) when the test ends.
    pub struct TempDb {
        pub folder: PathBuf,
    }

    impl TempDb {
        pub fn new() -> TempDb {
            let folder =
                std::env::temp_dir().join(format!("gemhook-sqlite-{}", uuid::Uuid::new_v4()));
            TempDb { folder }
        }

        /// `sqlite://` URL of the file, inside a folder that does not exist yet.
        pub fn url(&self) -> String {
            format!(
                "sqlite://{}",
                self.folder.join("nested/gemhook.db").display()
            )
        }

        /// A new store (its own pool) on this file, migrated.
        pub async fn store(&self) -> SqliteStore {
            let options = ConnectOptions {
                max_connections: 8,
                acquire_timeout: Duration::from_secs(10),
                listen_url: None,
            };
            let store = SqliteStore::connect_lazy(&self.url(), &options).unwrap();
            store.migrate().await.unwrap();
            store
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.folder);
        }
    }

    /// Records a realistic `batch.succeeded` delivery with id `webhook_id`.
    pub async fn record(store: &SqliteStore, webhook_id: &str) -> Recorded {
        record_body(store, webhook_id, &batch_body(webhook_id)).await
    }

    pub async fn record_body(store: &SqliteStore, webhook_id: &str, body: &[u8]) -> Recorded {
        let envelope: Envelope = crate::envelope::parse(body);
        let headers = serde_json::json!({
            "webhook-id": webhook_id,
            "webhook-timestamp": "1795417535",
            "webhook-signature": "v1,c2lnbmF0dXJl",
        });
        store
            .record_delivery(&NewEvent {
                webhook_id,
                webhook_timestamp: 1_795_417_535,
                envelope: &envelope,
                scheme: Scheme::V1,
                headers: &headers,
                body: bytes::Bytes::copy_from_slice(body),
            })
            .await
            .unwrap()
    }

    pub fn batch_body(webhook_id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "batch.succeeded",
            "version": "v1",
            "timestamp": "2026-11-23T07:05:35Z",
            "data": {"id": format!("batches/{webhook_id}"), "output_uri": "files/out"},
        }))
        .unwrap()
    }

    pub fn accepted(recorded: Recorded) -> crate::store::JobId {
        match recorded {
            Recorded::Accepted { job_id } => job_id,
            Recorded::Duplicate => panic!("expected a new event, got a duplicate"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::testing::{TempDb, accepted, batch_body, record, record_body};
    use super::{MIGRATOR, SqliteStore};
    use crate::store::{ConnectOptions, EventFilter, JobFilter, PruneScope, Recorded, StoreError};

    #[tokio::test]
    async fn a_sqlite_url_creates_the_folder_and_the_file_and_migrates() {
        let db = TempDb::new();
        let store = db.store().await;

        assert!(store.readiness().await.is_ready());
        assert!(db.folder.join("nested/gemhook.db").is_file());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "FULL");
    }

    #[tokio::test]
    async fn a_store_that_is_not_migrated_answers_but_is_not_ready() {
        let db = TempDb::new();
        let options = ConnectOptions {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            listen_url: None,
        };
        let store = SqliteStore::connect_lazy(&db.url(), &options).unwrap();

        let readiness = store.readiness().await;

        assert!(readiness.database);
        assert!(!readiness.migrations_applied);
    }

    /// Several processes starting on a new file: each switches it to WAL and migrates; none
    /// fails with "database is locked", and the migrations are applied once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stores_opening_a_new_file_together_all_connect_and_migrate() {
        // The race is narrow (a few in a thousand openings here): try it many times.
        for _ in 0..20 {
            let db = TempDb::new();
            let options = ConnectOptions {
                max_connections: 4,
                acquire_timeout: Duration::from_secs(10),
                listen_url: None,
            };
            let starting: Vec<_> = (0..6)
                .map(|_| {
                    let store = SqliteStore::connect_lazy(&db.url(), &options).unwrap();
                    tokio::spawn(async move { store.migrate().await.map(|()| store) })
                })
                .collect();
            let mut stores = Vec::new();
            for store in starting {
                stores.push(store.await.unwrap().unwrap());
            }

            stores[0].migrate().await.unwrap();
            for store in &stores {
                assert!(store.readiness().await.is_ready());
            }
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
                .fetch_one(stores[1].pool())
                .await
                .unwrap();
            assert_eq!(applied, MIGRATOR.iter().count() as i64);
        }
    }

    #[test]
    fn urls_of_other_backends_are_refused() {
        let options = ConnectOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(1),
            listen_url: None,
        };
        let refused = SqliteStore::connect_lazy("postgres://localhost/gemhook", &options);
        assert!(matches!(refused, Err(StoreError::UnsupportedUrl)));
        let empty = SqliteStore::connect_lazy("sqlite://", &options);
        assert!(matches!(empty, Err(StoreError::InvalidUrl(_))));
    }

    #[tokio::test]
    async fn a_delivery_is_stored_byte_for_byte_with_its_job() {
        let db = TempDb::new();
        let store = db.store().await;
        let before = Utc::now() - chrono::Duration::seconds(1);

        let job = accepted(record(&store, "msg_1").await);

        let event = store.find_event("msg_1").await.unwrap().unwrap();
        assert_eq!(event.body, batch_body("msg_1"));
        assert_eq!(event.summary.event_type.as_deref(), Some("batch.succeeded"));
        assert_eq!(event.summary.resource_id.as_deref(), Some("batches/msg_1"));
        assert_eq!(event.summary.status, "accepted");
        assert_eq!(event.summary.scheme, "v1");
        assert_eq!(event.summary.job_state.as_deref(), Some("available"));
        assert_eq!(event.webhook_timestamp, 1_795_417_535);
        assert_eq!(event.headers["webhook-id"], "msg_1");
        let received = event.summary.received_at;
        assert!(received > before && received <= Utc::now(), "{received}");
        let detail = store.find_job(job).await.unwrap().unwrap();
        assert_eq!(detail.summary.webhook_id, "msg_1");
        assert_eq!(detail.summary.state, "available");
    }

    #[tokio::test]
    async fn an_empty_or_non_utf8_body_is_kept_as_is() {
        let db = TempDb::new();
        let store = db.store().await;

        accepted(record_body(&store, "empty", b"").await);
        accepted(record_body(&store, "binary", &[0xff, 0x00, 0xfe]).await);

        let empty = store.find_event("empty").await.unwrap().unwrap();
        assert_eq!(empty.body, b"");
        assert_eq!(empty.summary.status, "unparseable");
        let binary = store.find_event("binary").await.unwrap().unwrap();
        assert_eq!(binary.body, [0xff, 0x00, 0xfe]);
    }

    #[tokio::test]
    async fn a_duplicate_delivery_is_acknowledged_and_not_enqueued_again() {
        let db = TempDb::new();
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);

        let again = record(&store, "msg_1").await;

        assert_eq!(again, Recorded::Duplicate);
        assert_eq!(
            store
                .list_events(&EventFilter::default(), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .list_jobs(&JobFilter::default(), 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn twenty_concurrent_copies_give_one_event_and_one_job() {
        let db = TempDb::new();
        let store = db.store().await;

        let copies: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { record(&store, "msg_race").await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for copy in copies {
            outcomes.push(copy.await.unwrap());
        }

        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, Recorded::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "{outcomes:?}");
        assert_eq!(
            store
                .list_events(&EventFilter::default(), 100)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .list_jobs(&JobFilter::default(), 100)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn an_accepted_delivery_wakes_a_waiting_worker() {
        let db = TempDb::new();
        let store = db.store().await;
        let wakeups = store.job_wakeups();
        let woken = wakeups.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        accepted(record(&store, "msg_1").await);

        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("the worker is woken");
    }

    #[tokio::test]
    async fn events_are_listed_newest_first_with_their_job_state() {
        let db = TempDb::new();
        let store = db.store().await;
        for id in ["msg_1", "msg_2", "msg_3"] {
            accepted(record(&store, id).await);
        }

        let listed = store.list_events(&EventFilter::default(), 2).await.unwrap();

        let ids: Vec<_> = listed.iter().map(|e| e.webhook_id.as_str()).collect();
        assert_eq!(ids, ["msg_3", "msg_2"]);
        assert!(
            listed
                .iter()
                .all(|e| e.job_state.as_deref() == Some("available"))
        );
        assert!(listed[0].received_at >= listed[1].received_at);
        assert!(store.find_event("missing").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn events_are_filtered_by_type_status_and_time() {
        let db = TempDb::new();
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        accepted(record_body(&store, "msg_2", b"not json").await);

        let by_type = EventFilter {
            event_type: Some("batch.succeeded".into()),
            ..EventFilter::default()
        };
        let by_status = EventFilter {
            status: Some("unparseable".into()),
            ..EventFilter::default()
        };
        let future = EventFilter {
            since: Some(Utc::now() + chrono::Duration::minutes(5)),
            ..EventFilter::default()
        };
        let recent = EventFilter {
            since: Some(Utc::now() - chrono::Duration::minutes(5)),
            ..EventFilter::default()
        };

        let typed = store.list_events(&by_type, 10).await.unwrap();
        assert_eq!(typed.len(), 1);
        assert_eq!(typed[0].webhook_id, "msg_1");
        let unparseable = store.list_events(&by_status, 10).await.unwrap();
        assert_eq!(unparseable.len(), 1);
        assert_eq!(unparseable[0].webhook_id, "msg_2");
        assert!(store.list_events(&future, 10).await.unwrap().is_empty());
        assert_eq!(store.list_events(&recent, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn old_finished_events_are_pruned_with_their_jobs_and_results() {
        let db = TempDb::new();
        let store = db.store().await;
        for id in ["done_1", "done_2", "dead", "waiting"] {
            accepted(record(&store, id).await);
        }
        let jobs = store
            .claim_jobs("w1", Duration::from_secs(60), 3)
            .await
            .unwrap();
        let result = crate::store::JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/x".into()),
            outcome: "stored",
            location: Some("results/x".into()),
            size_bytes: Some(1),
            sha256: None,
            summary: serde_json::json!({}),
        };
        assert!(
            store
                .complete_if_running(&jobs[0], &result, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .complete_if_running(&jobs[1], &result, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[2], "gave up", None, None)
                .await
                .unwrap()
        );
        let scope = PruneScope {
            cutoff: Utc::now() + chrono::Duration::seconds(1),
            include_discarded: false,
        };
        assert_eq!(store.count_prunable(&scope).await.unwrap(), 2);

        assert_eq!(store.prune_batch(&scope, 1).await.unwrap(), 1);
        assert_eq!(store.prune_batch(&scope, 10).await.unwrap(), 1);
        assert_eq!(store.prune_batch(&scope, 10).await.unwrap(), 0);

        assert!(store.find_event("done_1").await.unwrap().is_none());
        assert!(store.find_job(jobs[0].id).await.unwrap().is_none());
        let results: i64 = sqlx::query_scalar("SELECT count(*) FROM results")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(results, 0, "results go with their jobs");
        assert!(store.find_event("dead").await.unwrap().is_some());
        assert!(store.find_event("waiting").await.unwrap().is_some());
        let with_dead_letters = PruneScope {
            include_discarded: true,
            ..scope
        };
        assert_eq!(store.count_prunable(&with_dead_letters).await.unwrap(), 1);
        assert_eq!(store.prune_batch(&with_dead_letters, 10).await.unwrap(), 1);
        assert!(store.find_event("waiting").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn recent_events_are_not_pruned() {
        let db = TempDb::new();
        let store = db.store().await;
        let job = accepted(record(&store, "msg_1").await);
        let claimed = store
            .claim_jobs("w1", Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert!(
            store
                .discard_if_running(&claimed[0], "x", None, None)
                .await
                .unwrap()
        );
        let scope = PruneScope {
            cutoff: Utc::now() - chrono::Duration::days(2),
            include_discarded: true,
        };

        assert_eq!(store.count_prunable(&scope).await.unwrap(), 0);
        assert_eq!(store.prune_batch(&scope, 10).await.unwrap(), 0);
        assert!(store.find_job(job).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn group_commit_settings_are_ignored() {
        let db = TempDb::new();
        let store = db.store().await.with_group_commit(
            4,
            crate::store::BatchLimits {
                max_rows: 64,
                max_bytes: 1 << 20,
                deadline: Duration::from_secs(5),
            },
        );

        accepted(record(&store, "msg_1").await);

        assert_eq!(record(&store, "msg_1").await, Recorded::Duplicate);
    }
}
