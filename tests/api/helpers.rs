//! The test harness: a fresh Postgres database per test, the real application on port 0, and
//! typed helpers to sign and post deliveries.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use figment::Figment;
use gemhook::config::Settings;
use gemhook::startup::{Application, Role};
use gemhook::verify::{WebhookSecret, sign_v1};
use gemhook::worker::Worker;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
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

/// The admin URL of the Postgres server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("GEMHOOK_TEST_DATABASE_URL").expect(
        "GEMHOOK_TEST_DATABASE_URL must name a Postgres server the tests may create databases on, \
         e.g. postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// A database created for one test and dropped when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
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
    pub client: reqwest::Client,
    pub settings: Settings,
    pub results_dir: std::path::PathBuf,
    pub pool: PgPool,
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
        .merge(("webhook_secrets", SECRET))
        .merge(("database_acquire_timeout_ms", 500))
        // Hermetic by default: no fetch of Google's JWKS. Dynamic tests turn it on against a
        // local stand-in.
        .merge(("dynamic_webhooks", false))
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
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&db.url)
        .unwrap();
    TestApp {
        address,
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
        sqlx::query("UPDATE jobs SET scheduled_at = now() WHERE state = 'retryable'")
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// (state, attempt, number of errors kept) of the job of an event.
    pub async fn job_of(&self, webhook_id: &str) -> (String, i32, i64) {
        sqlx::query_as(
            "SELECT j.state, j.attempt, jsonb_array_length(j.errors)::bigint
             FROM jobs j JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1",
        )
        .bind(webhook_id)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// The result row of an event's job as JSON, if any.
    pub async fn result_of(&self, webhook_id: &str) -> Option<serde_json::Value> {
        sqlx::query_scalar(
            "SELECT to_jsonb(r) FROM results r JOIN jobs j ON j.id = r.job_id
             JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1",
        )
        .bind(webhook_id)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
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
