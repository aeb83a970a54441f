//! The test harness: a fresh Postgres database per test, the real application on port 0, and
//! typed helpers to sign and post deliveries.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use figment::Figment;
use gemhook::config::Settings;
use gemhook::startup::{Application, Role};
use gemhook::verify::{WebhookSecret, sign_v1};
use gemhook::worker::Worker;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

/// The project secret every test app is configured with (a Standard Webhooks test secret).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second secret, for rotation tests.
pub const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The API key the test apps' workers use; the Gemini stand-in checks it.
pub const GEMINI_API_KEY: &str = "test-gemini-key-3f9a";

/// A batch.succeeded body like the one Gemini's docs publish.
pub fn batch_succeeded(batch_id: &str) -> String {
    format!(
        r#"{{"type":"batch.succeeded","version":"v1","timestamp":"2026-01-22T12:00:00Z","data":{{"id":"{batch_id}","output_file_uri":"files/out-{batch_id}"}}}}"#
    )
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn unique_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// `v1,<sig>` for the content, with the given secret.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    sign_v1(&WebhookSecret::parse(secret).unwrap(), id, timestamp, body)
}

/// A delivery signed now with [`SECRET`], as Gemini sends it, posted to any receiver's
/// webhook URL (an app in this process, or a `gemhook` binary): the request, not yet sent.
pub fn signed_request(
    client: &reqwest::Client,
    webhook_url: &str,
    id: &str,
    body: String,
) -> reqwest::RequestBuilder {
    let timestamp = unix_now();
    client
        .post(webhook_url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(SECRET, id, timestamp, body.as_bytes()),
        )
        .body(body)
}

/// The database backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

tokio::task_local! {
    /// Set by [`on_both_backends!`] for the test's own task; tests outside it run on Postgres.
    pub static BACKEND: Backend;
}

pub fn current_backend() -> Backend {
    BACKEND
        .try_with(|backend| *backend)
        .unwrap_or(Backend::Postgres)
}

/// Whether Postgres-backed tests can run. Without `GEMHOOK_TEST_DATABASE_URL` they are skipped
/// with a notice, except under `CI=true`, where a missing database must fail the run.
pub fn postgres_available() -> bool {
    if std::env::var_os("GEMHOOK_TEST_DATABASE_URL").is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but GEMHOOK_TEST_DATABASE_URL is not set: the Postgres tests cannot run");
    }
    eprintln!(
        "notice: GEMHOOK_TEST_DATABASE_URL is not set; skipping a Postgres-backed test \
         (e.g. GEMHOOK_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres)"
    );
    false
}

/// Skips the rest of a Postgres-only test when no Postgres is configured (see
/// [`postgres_available`]).
#[macro_export]
macro_rules! require_postgres {
    () => {
        if !$crate::helpers::postgres_available() {
            return;
        }
    };
}

/// One scenario, two tests: `<name>::postgres` and `<name>::sqlite`. The body runs with the
/// backend set for [`spawn_app`] and [`TestDatabase::create`].
#[macro_export]
macro_rules! on_both_backends {
    ($( $(#[doc = $doc:expr])* async fn $name:ident() $body:block )*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[doc = $doc])*
            async fn scenario() $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(gemhook_postgres_tests), ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL")]
            async fn postgres() {
                if $crate::helpers::postgres_available() {
                    $crate::helpers::BACKEND
                        .scope($crate::helpers::Backend::Postgres, scenario())
                        .await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $crate::helpers::BACKEND
                    .scope($crate::helpers::Backend::Sqlite, scenario())
                    .await;
            }
        }
    )*};
}

/// The admin URL of the Postgres server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("GEMHOOK_TEST_DATABASE_URL").expect(
        "GEMHOOK_TEST_DATABASE_URL must name a Postgres server the tests may create databases on, \
         e.g. postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// A database created for one test and dropped when the test ends: a fresh Postgres database,
/// or a fresh SQLite file.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub backend: Backend,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = format!("gemhook_test_{}", uuid::Uuid::new_v4().simple());
        if current_backend() == Backend::Sqlite {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            return TestDatabase {
                url: format!("sqlite://{}", path.display()),
                name,
                backend: Backend::Sqlite,
                admin_url: String::new(),
            };
        }
        let admin_url = admin_url();
        let name = format!("gemhook_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnectOptions::from_str(&admin_url)
            .unwrap()
            .connect()
            .await
            .expect("the test Postgres server answers");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        let url = database_url_for(&admin_url, &name);
        TestDatabase {
            name,
            url,
            backend: Backend::Postgres,
            admin_url,
        }
    }

    /// Runs a statement on the server's admin connection (e.g. to refuse connections).
    pub async fn admin(&self, sql: &str) {
        let mut admin = PgConnectOptions::from_str(&self.admin_url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        admin.execute(sql).await.unwrap();
        admin.close().await.unwrap();
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.backend == Backend::Sqlite {
            let path = self.url.trim_start_matches("sqlite://").to_owned();
            if std::thread::panicking() {
                // Kept for a post-mortem (`sqlite3 FILE 'PRAGMA integrity_check'`).
                eprintln!("the failed test's database is kept at {path}");
                return;
            }
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            return;
        }
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread with
        // its own runtime. FORCE ends the app's pooled connections still open.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
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
                    let _ = admin
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

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

/// The application under test, serving on a random port. Its worker is not running: tests
/// drive it step by step with [`TestApp::run_worker_until_idle`].
pub struct TestApp {
    pub address: String,
    /// The console and admin API (and `/metrics`), when `admin_listen` is not turned off.
    pub admin_address: Option<String>,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub results_dir: std::path::PathBuf,
    /// For assertions: plain SQL that both backends understand, or per-backend SQL in the
    /// helpers below.
    pub pool: AnyPool,
    // Last: dropped after the pool and the server's connections are done with.
    pub db: TestDatabase,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.results_dir);
    }
}

/// The settings of a test app: built-in defaults, the test database, port 0, our secret.
pub fn test_settings(db: &TestDatabase, results_dir: &std::path::Path) -> Figment {
    Settings::defaults()
        .merge(("results_dir", results_dir.to_string_lossy().into_owned()))
        .merge(("gemini_api_key", GEMINI_API_KEY))
        .merge(("gemini_read_timeout_secs", 2))
        .merge(("database_url", db.url.as_str()))
        .merge(("listen", "127.0.0.1:0"))
        .merge(("admin_listen", "127.0.0.1:0"))
        .merge(("webhook_secrets", SECRET))
        // Hermetic by default: no fetch of Google's JWKS. Dynamic tests turn it on against a
        // local stand-in.
        .merge(("dynamic_webhooks", false))
        // Nor of the project's webhooks from Google's WebhookService (with the test key): the
        // watcher's tests turn it on against a local stand-in.
        .merge(("webhook_watch_interval_secs", 0))
}

/// Spawns the app on `backend`, whatever the test's own scope says: for tests that check what
/// does not depend on the database (signatures, keys, logs) and so need no Postgres to run.
pub async fn spawn_app_on(backend: Backend, customise: impl FnOnce(Figment) -> Figment) -> TestApp {
    BACKEND.scope(backend, spawn_app_with(customise)).await
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|figment| figment).await
}

/// Spawns the app with settings adjusted by `customise`.
pub async fn spawn_app_with(customise: impl FnOnce(Figment) -> Figment) -> TestApp {
    let db = TestDatabase::create().await;
    let results_dir = std::env::temp_dir().join(format!("gemhook-results-{}", db.name));
    let settings = Settings::from_figment(customise(test_settings(&db, &results_dir))).unwrap();
    let app = Application::build(&settings, Role::Receiver).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = app.admin_addr().map(|addr| format!("http://{addr}"));
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&db.url)
        .unwrap();
    TestApp {
        address,
        admin_address,
        client: reqwest::Client::new(),
        settings,
        results_dir,
        pool,
        db,
    }
}

impl TestApp {
    /// A worker on the app's database, with the app's settings.
    pub fn worker(&self) -> Worker {
        let store = gemhook::startup::connect(&self.settings).unwrap();
        let sinks = gemhook::startup::build_sinks(&self.settings, Default::default()).unwrap();
        gemhook::startup::build_worker(&self.settings, store, sinks).unwrap()
    }

    /// A hand-off dispatcher on the app's database and sinks.
    pub fn dispatcher(&self) -> gemhook::deliver::Dispatcher {
        let store = gemhook::startup::connect(&self.settings).unwrap();
        let sinks = gemhook::startup::build_sinks(&self.settings, Default::default()).unwrap();
        gemhook::deliver::Dispatcher::new(store, sinks, self.settings.worker())
    }

    /// Runs a worker until no job is runnable; returns how many attempts ran.
    pub async fn run_worker_until_idle(&self) -> usize {
        self.worker().run_until_idle().await
    }

    /// Moves every retryable job's schedule to now: the test's stand-in for waiting out the
    /// backoff (whose length the tests check separately).
    pub async fn make_retries_due(&self) {
        self.make_due("jobs").await;
    }

    /// Moves every retryable row of `table` (jobs, deliveries) to now.
    pub async fn make_due(&self, table: &str) {
        let now = match self.db.backend {
            Backend::Postgres => "now()",
            Backend::Sqlite => "CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)",
        };
        sqlx::query(&format!(
            "UPDATE {table} SET scheduled_at = {now} WHERE state = 'retryable'"
        ))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Ends every running lease of `table` (jobs, deliveries) a second ago: the test's stand-in
    /// for waiting out a lease, on the database's clock, which is the one the store reads.
    pub async fn expire_leases(&self, table: &str) {
        let past = match self.db.backend {
            Backend::Postgres => "now() - interval '1 second'",
            Backend::Sqlite => {
                "CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER) - 1000"
            }
        };
        sqlx::query(&format!(
            "UPDATE {table} SET locked_until = {past} WHERE state = 'running'"
        ))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// (state, attempt, number of errors kept) of the job of an event.
    pub async fn job_of(&self, webhook_id: &str) -> (String, i32, i64) {
        let errors = match self.db.backend {
            Backend::Postgres => "jsonb_array_length(j.errors)::bigint",
            Backend::Sqlite => "json_array_length(j.errors)",
        };
        let (state, attempt, errors): (String, i64, i64) = sqlx::query_as(&format!(
            "SELECT j.state, CAST(j.attempt AS BIGINT), {errors}
             FROM jobs j JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1"
        ))
        .bind(webhook_id)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        (state, attempt as i32, errors)
    }

    /// The result row of an event's job as JSON, if any.
    pub async fn result_of(&self, webhook_id: &str) -> Option<serde_json::Value> {
        let row = match self.db.backend {
            Backend::Postgres => "to_jsonb(r)::text",
            Backend::Sqlite => {
                "json_object('outcome', r.outcome, 'resource_kind', r.resource_kind,
                    'resource_id', r.resource_id, 'location', r.location,
                    'size_bytes', r.size_bytes, 'sha256', r.sha256, 'summary', json(r.summary))"
            }
        };
        let text: Option<String> = sqlx::query_scalar(&format!(
            "SELECT {row} FROM results r JOIN jobs j ON j.id = r.job_id
             JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1"
        ))
        .bind(webhook_id)
        .fetch_optional(&self.pool)
        .await
        .unwrap();
        text.map(|text: String| serde_json::from_str(&text).unwrap())
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/gemini", self.address)
    }

    /// Posts a body signed now with [`SECRET`].
    pub async fn post_signed(&self, id: &str, body: &str) -> reqwest::Response {
        self.post_signed_at(id, unix_now(), SECRET, body.as_bytes())
            .await
    }

    /// Posts a body signed with `secret` at `timestamp`.
    pub async fn post_signed_at(
        &self,
        id: &str,
        timestamp: i64,
        secret: &str,
        body: &[u8],
    ) -> reqwest::Response {
        let signature = signature(secret, id, timestamp, body);
        self.post_with_headers(
            &[
                ("webhook-id", id),
                ("webhook-timestamp", &timestamp.to_string()),
                ("webhook-signature", &signature),
            ],
            body.to_vec(),
        )
        .await
    }

    pub async fn post_with_headers(
        &self,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.webhook_url())
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(body).send().await.expect("the app answers")
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// (status, event_type, body) of the stored event.
    pub async fn stored_event(&self, id: &str) -> (String, Option<String>, Vec<u8>) {
        sqlx::query_as("SELECT status, event_type, body FROM events WHERE webhook_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// The JSON body of a response, with its status.
pub async fn status_and_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}
