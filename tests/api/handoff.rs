//! Hand-off: finished outcomes reach the application through signed HTTP, NATS JetStream and an
//! embedded handler, each (outcome, sink) a durable delivery with retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use figment::providers::{Format, Toml};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::process::Gemhook;
use crate::standin::{Answer, GeminiStandIn};

/// The application's own gemhook secret for signing what it receives.
const SINK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The user's application: verifies each POST with the independent `standardwebhooks` crate,
/// answers as scripted (`down` = 503), and keeps what it verified.
#[derive(Clone, Default)]
pub struct Application {
    received: Arc<Mutex<Vec<(String, Value)>>>,
    refused: Arc<Mutex<usize>>,
    down: Arc<Mutex<bool>>,
}

impl Application {
    pub async fn start(&self) -> String {
        let router = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }

    /// Answers 503 to every delivery while `down`.
    pub fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }

    pub fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(State(app): State<Application>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if *app.down.lock().unwrap() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let verifier = standardwebhooks::Webhook::new(SINK_SECRET).unwrap();
    if verifier.verify(&body, &headers).is_err() {
        *app.refused.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    app.received
        .lock()
        .unwrap()
        .push((id, serde_json::from_slice(&body).unwrap()));
    StatusCode::OK
}

pub fn http_sink(name: &str, url: &str, filter: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{url}\"\nsecret = \"{SINK_SECRET}\"\ntimeout_secs = 2\n{filter}\n"
    )
}

pub async fn app_with_sinks(gemini: &GeminiStandIn, sinks: String) -> TestApp {
    let url = gemini.url.clone();
    spawn_app_with(move |f| {
        f.merge(("gemini_base_url", url))
            .merge(Toml::string(&sinks))
    })
    .await
}

/// Receive → worker → dispatcher, as far as it goes now.
pub async fn process(app: &TestApp) {
    app.run_worker_until_idle().await;
    app.dispatcher().run_until_idle().await;
}

pub fn event(event_type: &str, data: Value) -> String {
    json!({"type": event_type, "version": "v1", "data": data}).to_string()
}

crate::on_both_backends! {
    async fn a_batch_outcome_reaches_the_application_signed_so_an_independent_library_verifies_it() {
        let gemini = GeminiStandIn::start().await;
        gemini.script(
            "h1",
            [Answer::Body(Bytes::from(
                "{\"key\":\"1\"}\n{\"key\":\"2\",\"error\":{}}\n",
            ))],
        );
        let application = Application::default();
        let url = application.start().await;
        let app = app_with_sinks(&gemini, http_sink("app", &url, "")).await;
        let id = unique_id();
        let body = event(
            "batch.succeeded",
            json!({"id": "batches/h1", "output_file_uri": "files/h1", "user_metadata": {"job_group": "nightly-eval"}}),
        );
        app.post_signed(&id, &body).await;

        process(&app).await;

        let received = application.received();
        assert_eq!(received.len(), 1);
        let (delivery_id, outcome) = &received[0];
        assert!(delivery_id.starts_with("gh_"));
        assert_eq!(outcome["webhook_id"], id.as_str());
        assert_eq!(outcome["type"], "batch.succeeded");
        assert_eq!(outcome["state"], "completed");
        assert_eq!(
            outcome["user_metadata"],
            json!({"job_group": "nightly-eval"})
        );
        assert_eq!(outcome["result"]["lines"], 2);
        assert_eq!(outcome["result"]["error_lines"], 1);
        assert!(outcome["result"]["sha256"].is_string());
        assert_eq!(*application.refused.lock().unwrap(), 0);
    }
}

crate::on_both_backends! {
    async fn sinks_receive_only_the_outcomes_their_type_and_metadata_filters_match() {
        let gemini = GeminiStandIn::start().await;
        let (nightly, agents) = (Application::default(), Application::default());
        let (nightly_url, agents_url) = (nightly.start().await, agents.start().await);
        let sinks = http_sink(
            "nightly",
            &nightly_url,
            "[sinks.filter]\nmetadata = { job_group = \"nightly-eval\" }",
        ) + &http_sink(
            "agents",
            &agents_url,
            "[sinks.filter]\ntypes = [\"interaction.*\"]",
        );
        let app = app_with_sinks(&gemini, sinks).await;
        let tagged = unique_id();
        app.post_signed(
            &tagged,
            &event("batch.failed", json!({"id": "batches/1", "error_code": 3, "user_metadata": {"job_group": "nightly-eval"}})),
        )
        .await;
        app.post_signed(
            &unique_id(),
            &event("batch.failed", json!({"id": "batches/2"})),
        )
        .await;
        let agent = unique_id();
        app.post_signed(
            &agent,
            &event(
                "interaction.failed",
                json!({"id": "v1_x", "error_message": "boom"}),
            ),
        )
        .await;

        process(&app).await;

        let nightly_ids: Vec<Value> = nightly
            .received()
            .iter()
            .map(|(_, o)| o["webhook_id"].clone())
            .collect();
        let agent_ids: Vec<Value> = agents
            .received()
            .iter()
            .map(|(_, o)| o["webhook_id"].clone())
            .collect();
        assert_eq!(nightly_ids, [json!(tagged)]);
        assert_eq!(agent_ids, [json!(agent)]);
        assert_eq!(agents.received()[0].1["error"]["message"], "boom");
    }
}

crate::on_both_backends! {
    async fn a_sink_that_is_down_gets_the_outcome_once_it_is_back_and_only_once() {
        let gemini = GeminiStandIn::start().await;
        let application = Application::default();
        let url = application.start().await;
        *application.down.lock().unwrap() = true;
        let app = app_with_sinks(&gemini, http_sink("app", &url, "")).await;
        let id = unique_id();
        app.post_signed(&id, &event("batch.expired", json!({"id": "batches/3"})))
            .await;

        process(&app).await;
        assert!(application.received().is_empty());
        let state: (String, i32) = sqlx::query_as("SELECT state, attempt FROM deliveries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(state, ("retryable".into(), 1));
        // Ingestion is not blocked meanwhile.
        assert_eq!(
            app.post_signed(&unique_id(), &batch_succeeded("x"))
                .await
                .status(),
            200
        );

        *application.down.lock().unwrap() = false;
        app.make_due("deliveries").await;
        app.dispatcher().run_until_idle().await;
        app.dispatcher().run_until_idle().await;

        let received = application.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].1["webhook_id"], id.as_str());
        let state: (String, i32) = sqlx::query_as(
            "SELECT d.state, d.attempt FROM deliveries d JOIN outcomes o ON o.id = d.outcome_id
             JOIN events e ON e.id = o.event_id WHERE e.webhook_id = $1",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(state, ("completed".into(), 2));

        // `deliveries show`: what was sent, under which id, and the answer of the failed attempt.
        let delivery_id: i64 = sqlx::query_scalar("SELECT id FROM deliveries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let shown = crate::process::gemhook_ok(
            &[("GEMHOOK_DATABASE_URL", &app.db.url)],
            &["deliveries", "show", &delivery_id.to_string(), "--json"],
        );
        let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown["state"], "completed");
        assert_eq!(shown["delivery_id"], received[0].0.as_str());
        assert_eq!(shown["outcome"]["webhook_id"], id.as_str());
        let failed = shown["errors"].as_array().unwrap();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0]["error"].as_str().unwrap().contains("503"),
            "{}",
            failed[0]
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn jetstream_holds_exactly_one_message_per_outcome_even_when_the_publish_is_retried() {
    crate::require_postgres!();
    let prefix = format!("gemhooktest{}", uuid::Uuid::new_v4().simple());
    let stream = prefix.to_uppercase();
    let gemini = GeminiStandIn::start().await;
    let sinks = format!(
        "[[sinks]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"{prefix}.{{type}}\"\nstream = \"{stream}\"\n"
    );
    let app = app_with_sinks(&gemini, sinks).await;
    let id = unique_id();
    app.post_signed(&id, &event("batch.expired", json!({"id": "batches/4"})))
        .await;
    let nats = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    // The stream the sink's start-up creates; made here too so the test does not race it.
    let _ = jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();

    process(&app).await;
    // gemhook retries the publish (as after a lost ack): the same delivery is sent again.
    let requeued = sqlx::query("UPDATE deliveries SET state = 'available', attempt = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(requeued.rows_affected(), 1);
    app.dispatcher().run_until_idle().await;

    let mut info = jetstream.get_stream(&stream).await.unwrap();
    let messages = info.info().await.unwrap().state.messages;
    let message = info
        .get_last_raw_message_by_subject(&format!("{prefix}.batch.expired"))
        .await
        .unwrap();
    jetstream.delete_stream(&stream).await.unwrap();
    assert_eq!(messages, 1);
    let outcome: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(outcome["webhook_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn the_embedded_library_example_runs_its_handler_for_each_outcome() {
    crate::require_postgres!();
    // No configuration file: the README's `cargo run --example embedded`, as it is written.
    let db = TestDatabase::create().await;
    let results = std::env::temp_dir().join(format!("gemhook-example-results-{}", db.name));
    let example = example_binary("embedded");
    let (mut running, address) = Gemhook::start_program(
        &example,
        &[],
        &[
            ("GEMHOOK_DATABASE_URL", &db.url),
            ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
            ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
            ("GEMHOOK_RESULTS_DIR", results.to_str().unwrap()),
        ],
    );
    let id = unique_id();
    let body = event("batch.cancelled", json!({"id": "batches/5"}));
    let url = format!("{address}/webhooks/gemini");
    let status = signed_request(&reqwest::Client::new(), &url, &id, body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let mut handled = None;
    for _ in 0..200 {
        handled = running
            .output()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["handled"] == id.as_str());
        if handled.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.terminate();
    assert!(running.wait_success());
    let _ = std::fs::remove_dir_all(&results);

    let handled = handled.expect("the example's handler saw the outcome");
    assert_eq!(handled["type"], "batch.cancelled");
    assert_eq!(handled["state"], "completed");
}

/// Examples are built by `cargo test` next to the test binaries' folder.
fn example_binary(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile = deps.parent().unwrap().parent().unwrap();
    let path = profile.join("examples").join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}
