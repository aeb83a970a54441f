//! What only the embedded SQLite backend has: opening (and creating) the file, migrating under
//! its write lock, and the ack path's write. The default when no database URL is given. Every
//! other statement is in the shared modules, over the seam in `db`.
//!
//! Where Postgres has a feature SQLite lacks, the simplest correct equivalent stands in:
//!
//! - Writers are serialised by SQLite itself (one writer at a time per file, across processes).
//!   Every multi-statement transaction starts with `BEGIN IMMEDIATE`, which takes the write lock
//!   up front and waits for it (`busy_timeout`); a deferred `BEGIN` would read first and could
//!   fail, without waiting, when upgrading to a write after another writer committed. Within a
//!   process, writers queue at the store's write gate (`db::WriteGate`) first, in order.
//! - Deliveries go through one group-commit writer ([`Sqlite`]), finishing jobs through one
//!   shared transaction (`finish_group`): one fsync serves many.
//! - `LISTEN/NOTIFY` becomes an in-process [`Notify`]: a worker in this process wakes at once;
//!   a worker in another process on the same file wakes within [`COMMIT_WATCH_INTERVAL`] by
//!   [`watch_commits`].
//! - Timestamps are INTEGER milliseconds since the Unix epoch (UTC): ordering and
//!   `now + lease` are integer arithmetic, and reads turn them into `DateTime<Utc>`.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions as _;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Notify;

use super::db::{BEGIN_IMMEDIATE, Db, SQLITE_BUSY_TIMEOUT};
use super::group_commit::{BatchLimits, GroupWriter};
use super::{ConnectOptions, Readiness, StoreError};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Accepts `sqlite://path`, `sqlite:path` and `sqlite:///absolute/path`. Creates the parent
/// folder now and the file on first connection; nothing else happens until the first
/// statement.
pub(super) fn connect_lazy(url: &str, options: &ConnectOptions) -> Result<SqlitePool, StoreError> {
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
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
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
        check_file(file).map_err(|source| StoreError::SqliteFile {
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
    Ok(pool)
}

/// Creates the file when it is missing, and checks an existing one is writable, here rather than
/// at the first statement, so that a read-only folder or file is reported with its path (SQLite
/// itself says only "unable to open database file").
///
/// An existing file is never opened: closing any descriptor of a file drops every POSIX lock
/// this process holds on it, SQLite's included, so a second store opened in a process whose
/// first store was writing let another process write at the same time and corrupted the file
/// ("database disk image is malformed", seen with a CLI replay beside a running worker). A new
/// file has no locks to lose.
fn check_file(file: &std::path::Path) -> std::io::Result<()> {
    match std::fs::metadata(file) {
        Ok(metadata) if metadata.permissions().readonly() => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the file is read-only",
        )),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(file)
            {
                // Another process created it meanwhile: as good.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                created => created.map(drop),
            }
        }
        Err(error) => Err(error),
    }
}

/// Applies the migrations inside one `BEGIN IMMEDIATE` transaction. SQLite has no advisory
/// lock (sqlx's migration lock is a no-op here), so two processes starting together on one
/// file would otherwise both apply the first migration; this way the second waits, then
/// finds everything applied. sqlx runs each migration in a savepoint inside it.
pub(super) async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool.begin_with(BEGIN_IMMEDIATE).await?;
    // `run_direct`, not `run(&mut *tx)`: the latter's `Acquire` bound makes this future
    // fail the `Send` check ("implementation of `Acquire` is not general enough") as soon as
    // it is spawned; sqlx keeps `run_direct` public for exactly that.
    MIGRATOR.run_direct(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// The file is always writable once open (a full disk is an error per statement, not a
/// state).
pub(super) async fn readiness(pool: &SqlitePool) -> Readiness {
    let applied: Result<Vec<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await;
    super::readiness_from(&MIGRATOR, applied, true)
}

/// SQLite's ack path: every delivery goes through one group-commit writer (see
/// `group_commit`), started at the first delivery (a store opened by the CLI never starts
/// one). Concurrent deliveries share a `BEGIN IMMEDIATE` transaction and its fsync; copies of
/// one delivery give one event and one job, the others `ON CONFLICT DO NOTHING`.
#[derive(Debug, Clone, Default)]
pub(super) struct Sqlite {
    writer: Arc<OnceLock<GroupWriter>>,
    limits: BatchLimits,
}

impl Sqlite {
    pub(super) fn with_limits(limits: BatchLimits) -> Sqlite {
        Sqlite {
            writer: Arc::default(),
            limits,
        }
    }

    /// The writer, once the first delivery has started it.
    pub(super) fn started_writer(&self) -> Option<&GroupWriter> {
        self.writer.get()
    }

    pub(super) fn writer(&self, db: &Db, wakeups: &Arc<Notify>) -> &GroupWriter {
        self.writer
            .get_or_init(|| GroupWriter::start(db.clone(), wakeups.clone(), 1, self.limits))
    }
}

/// WAL: readers (the CLI, list endpoints) never block the writer, nor it them; the mode is
/// stored in the file, so this only changes anything on a new file. Not set through
/// `SqliteConnectOptions::journal_mode`: switching a file to WAL needs it to itself and SQLite
/// answers `SQLITE_BUSY` at once, without the busy timeout, so two processes (or two pool
/// connections) opening a new file together would fail to connect. Retried here instead.
async fn use_wal(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let deadline = Instant::now() + SQLITE_BUSY_TIMEOUT;
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

/// How often [`watch_commits`] looks for other connections' commits: the wake-up latency of a
/// worker for work another process queued on the same file.
pub(super) const COMMIT_WATCH_INTERVAL: Duration = Duration::from_millis(20);

/// SQLite's stand-in for `LISTEN`: `PRAGMA data_version` changes whenever another connection
/// (another process, or another of this pool's) has committed to the file. Read every
/// [`COMMIT_WATCH_INTERVAL`] on a connection of its own, from shared memory, without touching
/// the disk; a change wakes this process's claimers, which find the work or, for a commit that
/// queued nothing, claim nothing. Ends when the pool closes.
pub(super) fn watch_commits(pool: &SqlitePool, jobs: &Arc<Notify>, deliveries: &Arc<Notify>) {
    let (pool, jobs, deliveries) = (pool.clone(), jobs.clone(), deliveries.clone());
    tokio::spawn(async move {
        let mut seen: Option<i64> = None;
        let mut connection = None;
        while !pool.is_closed() {
            if connection.is_none() {
                connection = pool.connect_options().connect().await.ok();
            }
            if let Some(conn) = connection.as_mut() {
                match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                    .fetch_one(&mut *conn)
                    .await
                {
                    Ok(version) => {
                        if seen.is_some_and(|seen| seen != version) {
                            jobs.notify_one();
                            deliveries.notify_one();
                        }
                        seen = Some(version);
                    }
                    // A fresh connection has its own numbering: start over with it.
                    Err(_) => (connection, seen) = (None, None),
                }
            }
            tokio::time::sleep(COMMIT_WATCH_INTERVAL).await;
        }
    });
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use serde_json::json;

    use super::MIGRATOR;
    use crate::store::testing::{Backend, TestDb, accepted, record, stored};
    use crate::store::{ConnectOptions, JobId, Recorded, Store, StoreError};

    const LEASE: Duration = Duration::from_secs(60);

    async fn sqlite() -> TestDb {
        TestDb::new(Backend::Sqlite).await
    }

    #[tokio::test]
    async fn a_sqlite_url_creates_the_folder_and_the_file_and_migrates() {
        let db = sqlite().await;
        let store = db.store().await;

        assert!(store.readiness().await.is_ready());
        assert!(db.file().is_file());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.test_sqlite_pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(store.test_sqlite_pool())
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "FULL");
    }

    #[tokio::test]
    async fn a_store_that_is_not_migrated_answers_but_is_not_ready() {
        let db = sqlite().await;
        let options = ConnectOptions {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            listen_url: None,
        };
        let store = Store::connect_lazy(db.url(), &options).unwrap();

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
            let db = sqlite().await;
            let options = ConnectOptions {
                max_connections: 4,
                acquire_timeout: Duration::from_secs(10),
                listen_url: None,
            };
            let starting: Vec<_> = (0..6)
                .map(|_| {
                    let store = Store::connect_lazy(db.url(), &options).unwrap();
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
                .fetch_one(stores[1].test_sqlite_pool())
                .await
                .unwrap();
            assert_eq!(applied, MIGRATOR.iter().count() as i64);
        }
    }

    #[test]
    fn urls_of_unknown_backends_and_sqlite_urls_without_a_file_are_refused() {
        let options = ConnectOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(1),
            listen_url: None,
        };
        let refused = Store::connect_lazy("mysql://localhost/gemhook", &options);
        assert!(matches!(refused, Err(StoreError::UnsupportedUrl)));
        let empty = Store::connect_lazy("sqlite://", &options);
        assert!(matches!(empty, Err(StoreError::InvalidUrl(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_of_256_simultaneous_deliveries_shares_a_few_commits_on_one_writer() {
        let db = sqlite().await;
        // Four writers asked for: SQLite keeps one, since the file has one write lock.
        let store = db
            .store()
            .await
            .with_group_commit(4, crate::store::BatchLimits::default());
        let ids: Vec<String> = (0..256).map(|n| format!("msg_burst_{n}")).collect();

        let recorded = futures::future::join_all(ids.iter().map(|id| record(&store, id))).await;

        assert!(
            recorded
                .into_iter()
                .all(|r| matches!(r, Recorded::Accepted { .. }))
        );
        assert_eq!(
            store.test_count("SELECT count(*) AS n FROM jobs").await,
            256
        );
        let commits = store.group_commits().unwrap();
        assert!(
            (1..64).contains(&commits),
            "256 deliveries took {commits} commits: they should share transactions"
        );
        assert_eq!(record(&store, "msg_burst_7").await, Recorded::Duplicate);
    }

    const CLAIMER_URL: &str = "GEMHOOK_TEST_SQLITE_CLAIMER_URL";

    /// Claims one job at a time until none is left, completing each after a moment of "work";
    /// reports each claim on stdout.
    async fn claim_until_empty(store: &Store, worker: &str) -> Vec<(JobId, i32)> {
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
        let store = Store::connect_lazy(&url, &options).unwrap();
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

        let db = sqlite().await;
        let store = db.store().await;
        for n in 0..200 {
            accepted(record(&store, &format!("msg_{n}")).await);
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::sqlite::tests::claimer_process"])
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

    const WRITER_URL: &str = "GEMHOOK_TEST_SQLITE_WRITER_URL";

    /// Runs [`writer_process`] as a child process on the database at `url`; its output.
    async fn writer_process_on(url: &str) -> std::process::Output {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "store::sqlite::tests::writer_process"])
                .args(["--ignored", "--nocapture", "--test-threads=1"])
                .env(WRITER_URL, url)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// The other process of [`opening_a_second_store_keeps_the_first_ones_hold_on_the_file`]:
    /// records one delivery, closes its connections, and says whether it could.
    #[tokio::test]
    #[ignore = "a helper: run as a child process by opening_a_second_store_keeps_the_first_ones_hold_on_the_file"]
    async fn writer_process() {
        let Ok(url) = std::env::var(WRITER_URL) else {
            return;
        };
        let options = ConnectOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(30),
            listen_url: None,
        };
        let store = Store::connect_lazy(&url, &options).unwrap();
        let event = crate::store::testing::batch_body("from_child");
        let envelope = crate::envelope::parse(&event);
        let headers = json!({});
        let recorded = store
            .record_delivery(&crate::store::NewEvent {
                webhook_id: "from_child",
                webhook_timestamp: 0,
                envelope: &envelope,
                scheme: crate::verify::Scheme::V1,
                headers: &headers,
                body: bytes::Bytes::from(event.clone()),
                trace_context: None,
            })
            .await;
        store.close().await;
        println!("\n{}", if recorded.is_ok() { "wrote" } else { "refused" });
    }

    /// Another process's delivery wakes this process's worker through the commit watch, long
    /// before its poll (a second here) would have found it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_queued_by_another_process_wakes_this_ones_worker() {
        let db = sqlite().await;
        let store = db.store().await;
        let wakeups = store.job_wakeups();
        store.listen_for_jobs();
        tokio::time::sleep(super::COMMIT_WATCH_INTERVAL * 3).await; // the watch has its first reading
        // Any wake-up so far (the migration's commits) is not the one under test.
        let _ = tokio::time::timeout(Duration::from_millis(1), wakeups.notified()).await;

        let woken = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), wakeups.notified())
                .await
                .is_ok()
        });
        let child = writer_process_on(db.url()).await;
        assert!(String::from_utf8_lossy(&child.stdout).contains("wrote"));

        assert!(
            woken.await.unwrap(),
            "no wake-up for the other process's job"
        );
        let claimed = store.claim_jobs("w1", LEASE, 1).await.unwrap();
        assert_eq!(claimed[0].webhook_id, "from_child");
    }

    /// Closing any descriptor of a file drops every POSIX lock the process holds on it: a
    /// second store opened in this process used to open (and close) the file, dropping the
    /// shared lock that tells other processes this one still uses it. Another process closing
    /// its last connection then believed itself the last user, checkpointed and deleted the WAL
    /// under this one, and the file was corrupted ("database disk image is malformed").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opening_a_second_store_keeps_the_first_ones_hold_on_the_file() {
        let db = sqlite().await;
        let first = db.store().await;
        accepted(record(&first, "before").await);
        let second = db.unmigrated_store(1);

        let child = writer_process_on(db.url()).await;
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(stdout.lines().any(|line| line == "wrote"), "{stdout}");

        let wal = db.file().with_extension("db-wal");
        assert!(
            wal.exists(),
            "the WAL was deleted while this process still used it"
        );
        accepted(record(&first, "after").await);
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(first.test_sqlite_pool())
            .await
            .unwrap();
        assert_eq!(check, "ok");
        drop(second);
    }
}
