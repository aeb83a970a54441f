//! Test databases for the store's own tests: a fresh SQLite file, or a fresh Postgres
//! database on the server `GEMHOOK_TEST_DATABASE_URL` names, dropped when the test ends.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};

use super::{BatchLimits, ConnectOptions, JobId, JobResult, NewEvent, Recorded, Store};
use crate::envelope::Envelope;
use crate::verify::Scheme;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database of one test's own.
pub struct TestDb {
    pub backend: Backend,
    url: String,
    /// SQLite: the folder holding the file. Postgres: unused.
    folder: PathBuf,
    /// Postgres: the database's name, dropped at the end.
    name: String,
    admin_url: String,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let name = format!("gemhook_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let folder = std::env::temp_dir().join(format!("gemhook-sqlite-{name}"));
                TestDb {
                    backend,
                    // A folder that does not exist yet: the store creates it.
                    url: format!("sqlite://{}", folder.join("nested/gemhook.db").display()),
                    folder,
                    name,
                    admin_url: String::new(),
                }
            }
            Backend::Postgres => {
                let admin_url = std::env::var("GEMHOOK_TEST_DATABASE_URL").expect(
                    "GEMHOOK_TEST_DATABASE_URL must name a Postgres server the tests may create \
                     databases on, e.g. postgres://postgres@127.0.0.1:5432/postgres",
                );
                let mut admin = PgConnectOptions::from_str(&admin_url)
                    .unwrap()
                    .connect()
                    .await
                    .expect("the test Postgres server answers");
                admin
                    .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
                    .await
                    .unwrap();
                let _ = admin.close().await;
                let url = database_url_for(&admin_url, &name);
                TestDb {
                    backend,
                    url,
                    folder: PathBuf::new(),
                    name,
                    admin_url,
                }
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new store (its own pool) on this database, migrated, with group commit as `serve`
    /// runs it.
    pub async fn store(&self) -> Store {
        let store = self.unmigrated_store(8).with_group_commit(
            2,
            BatchLimits {
                max_rows: 64,
                max_bytes: 4 << 20,
                deadline: Duration::from_secs(5),
            },
        );
        store.migrate().await.unwrap();
        store
    }

    /// A store on this database that has not been migrated.
    pub fn unmigrated_store(&self, max_connections: u32) -> Store {
        let options = ConnectOptions {
            max_connections,
            acquire_timeout: Duration::from_secs(10),
            listen_url: None,
        };
        Store::connect_lazy(&self.url, &options).unwrap()
    }

    /// The SQLite file (SQLite only).
    pub fn file(&self) -> PathBuf {
        self.folder.join("nested/gemhook.db")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend == Backend::Sqlite {
            let _ = std::fs::remove_dir_all(&self.folder);
            return;
        }
        // Drop runs inside the test's runtime, which cannot block on itself: a thread with its
        // own runtime. FORCE ends the store's pooled connections still open.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnectOptions::from_str(&admin_url)
                    .unwrap()
                    .connect()
                    .await
                {
                    let drop = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    let _ = admin.execute(drop.as_str()).await;
                }
            });
        })
        .join();
    }
}

/// The admin URL with its database replaced by `name` (credentials and options kept).
fn database_url_for(admin_url: &str, name: &str) -> String {
    let (without_query, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let (server, _) = without_query
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://"))
        .unwrap_or((without_query, ""));
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// One scenario, one test per backend: `<module>::on_sqlite::<name>` and
/// `<module>::on_postgres::<name>`, the latter reported as ignored (never as passed) without
/// `GEMHOOK_TEST_DATABASE_URL` (see build.rs). Each scenario is `async fn name(db: TestDb)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::store::testing::TestDb::new(
                        $crate::store::testing::Backend::Sqlite,
                    )
                    .await;
                    super::$name(db).await;
                }
            )*
        }

        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(gemhook_postgres_tests),
                    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
                )]
                async fn $name() {
                    let db = $crate::store::testing::TestDb::new(
                        $crate::store::testing::Backend::Postgres,
                    )
                    .await;
                    super::$name(db).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// Records a realistic `batch.succeeded` delivery with id `webhook_id`.
pub async fn record(store: &Store, webhook_id: &str) -> Recorded {
    record_body(store, webhook_id, &batch_body(webhook_id)).await
}

pub async fn record_body(store: &Store, webhook_id: &str, body: &[u8]) -> Recorded {
    record_traced(store, webhook_id, body, None).await
}

/// [`record_body`] with the delivery span's `traceparent`, as the receiver stores it when
/// traces are exported.
pub async fn record_traced(
    store: &Store,
    webhook_id: &str,
    body: &[u8],
    trace_context: Option<&str>,
) -> Recorded {
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
            trace_context,
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

/// A stored batch result for `resource_id`.
pub fn stored(resource_id: &str) -> JobResult {
    JobResult {
        resource_kind: "batch",
        resource_id: Some(resource_id.to_owned()),
        outcome: "stored",
        location: Some(format!("results/{resource_id}.jsonl")),
        size_bytes: Some(1234),
        sha256: Some("ab".repeat(32)),
        summary: serde_json::json!({"lines": 10, "error_lines": 0}),
    }
}

pub fn accepted(recorded: Recorded) -> JobId {
    match recorded {
        Recorded::Accepted { job_id } => job_id,
        Recorded::Duplicate => panic!("expected a new event, got a duplicate"),
    }
}

impl Store {
    /// The SQLite pool, for PRAGMAs and the migrations table.
    pub fn test_sqlite_pool(&self) -> &sqlx::SqlitePool {
        match &self.db {
            super::db::Db::Sqlite(pool, _) => pool,
            super::db::Db::Postgres(_) => panic!("not a SQLite store"),
        }
    }

    /// Backdates an event, for retention's tests.
    pub async fn test_set_received_at(&self, webhook_id: &str, received_at: DateTime<Utc>) {
        use super::db::{Arg, Exec as _};
        let sql = "UPDATE events SET received_at = $1 WHERE webhook_id = $2";
        let args = [Arg::OptTime(Some(received_at)), Arg::Text(webhook_id)];
        assert_eq!((&self.db).execute(sql, &args).await.unwrap(), 1);
    }

    /// A count from a statement written for both databases, as column `n`.
    pub async fn test_count(&self, sql: &str) -> i64 {
        use super::db::Exec as _;
        let row = (&self.db).fetch_optional(sql, &[]).await.unwrap().unwrap();
        row.get::<i64>("n").unwrap()
    }
}
