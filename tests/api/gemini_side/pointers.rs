//! Every documented pointer followed, end to end through the worker: `gs://` through a local
//! stand-in of Cloud Storage (credentials as Google users set them, in the worker's
//! environment), and a `batch.succeeded` without a pointer through the batch lookup.

use std::collections::HashMap;

use gemhook::config::Redacted;
use gemhook::tools::gemini_dev::{GeminiStandIn as RealisticGemini, StandInSettings};

use super::*;
use crate::process::Gemhook;
use crate::standin::{Answer, GeminiStandIn};

const RESULTS: &str = concat!(
    r#"{"key":"1","response":{"candidates":[{"content":{"parts":[{"text":"a"}]}}]}}"#,
    "\n",
    r#"{"key":"2","error":{"code":3,"message":"bad","status":"INVALID_ARGUMENT"}}"#,
    "\n",
);

/// A request Cloud Storage's stand-in received: decoded path, and the headers that matter.
#[derive(Debug, Clone)]
struct GcsHit {
    path: String,
    api_key: Option<String>,
}

#[derive(Clone, Default)]
struct GcsState {
    objects: Arc<Mutex<HashMap<String, Bytes>>>,
    hits: Arc<Mutex<Vec<GcsHit>>>,
}

/// Cloud Storage's download path, `GET {base}/{bucket}/{object}` (what object_store's GCS
/// client requests), with the headers it requires (ETag, Last-Modified).
struct GcsStandIn {
    url: String,
    state: GcsState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GcsStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GcsStandIn {
    async fn start() -> GcsStandIn {
        async fn object(State(state): State<GcsState>, uri: Uri, headers: HeaderMap) -> Response {
            let path = percent_decode(uri.path());
            state.hits.lock().unwrap().push(GcsHit {
                path: path.clone(),
                api_key: headers
                    .get("x-goog-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            });
            match state.objects.lock().unwrap().get(&path) {
                Some(bytes) => (
                    [
                        (header::ETAG, "\"etag-1\""),
                        (header::LAST_MODIFIED, "Tue, 01 Dec 2026 10:00:00 GMT"),
                        (header::CONTENT_TYPE, "application/jsonl"),
                    ],
                    bytes.clone(),
                )
                    .into_response(),
                None => (
                    StatusCode::NOT_FOUND,
                    "<Error><Code>NoSuchKey</Code></Error>",
                )
                    .into_response(),
            }
        }
        let state = GcsState::default();
        let router = axum::Router::new()
            .fallback(object)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        GcsStandIn { url, state, task }
    }

    fn put(&self, path: &str, body: &str) {
        self.state
            .objects
            .lock()
            .unwrap()
            .insert(path.to_owned(), Bytes::from(body.to_owned()));
    }

    fn hits(&self) -> Vec<GcsHit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// A service account key file whose `gcs_base_url` points here, with `disable_oauth` (as
    /// object_store's own tests do), so no token is fetched from Google.
    fn service_account_file(&self, dir: &std::path::Path) -> String {
        let path = dir.join("service-account.json");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &path,
            json!({
                "private_key": "unused",
                "private_key_id": "unused",
                "client_email": "gemhook-test@example.iam.gserviceaccount.com",
                "gcs_base_url": self.url,
                "disable_oauth": true
            })
            .to_string(),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The documented `batch.succeeded` example, as published.
const DOCUMENTED_EXAMPLE: &str = r#"{"type": "batch.succeeded", "version": "v1", "timestamp": "2026-01-22T12:00:00Z",
 "data": {"id": "batch_123456", "output_file_uri": "gs://my-bucket/results.jsonl"}}"#;

/// Starts `gemhook serve --role worker` on the app's database and results directory, with
/// `extra` in its environment (Cloud Storage credentials, or none).
fn start_worker(app: &TestApp, gemini: &str, extra: &[(&str, &str)]) -> Gemhook {
    let results = app.results_dir.to_string_lossy().into_owned();
    let mut env = vec![
        ("GEMHOOK_DATABASE_URL", app.db.url.as_str()),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_GEMINI_BASE_URL", gemini),
        ("GEMHOOK_RESULTS_DIR", results.as_str()),
        ("GEMHOOK_POLL_INTERVAL_MS", "50"),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
        ("GEMHOOK_WEBHOOK_WATCH_INTERVAL_SECS", "0"),
    ];
    env.extend_from_slice(extra);
    // `env` borrows `results`, which lives until the call returns.
    Gemhook::start(&["serve", "--role", "worker"], &env).0
}

/// Waits until the event's job leaves the runnable states (20 s at most).
async fn settled_job(app: &TestApp, id: &str) -> (String, i32, i64) {
    for _ in 0..200 {
        let job = app.job_of(id).await;
        if matches!(job.0.as_str(), "completed" | "discarded" | "retryable") {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job of {id} did not settle");
}

fn read_location(result: &Value) -> Vec<u8> {
    let location = result["location"].as_str().unwrap();
    std::fs::read(location.trim_start_matches("file://")).unwrap()
}

crate::on_both_backends! {
async fn gemini_side_the_documented_gs_example_is_read_with_cloud_storage_credentials() {
    let gemini = GeminiStandIn::start().await;
    let gcs = GcsStandIn::start().await;
    gcs.put("/my-bucket/results.jsonl", RESULTS);
    let app = spawn_app().await;
    let key_file = gcs.service_account_file(&app.results_dir.join("creds"));
    let mut worker = start_worker(&app, &gemini.url, &[("GOOGLE_SERVICE_ACCOUNT", &key_file)]);
    let id = unique_id();
    assert_eq!(app.post_signed(&id, DOCUMENTED_EXAMPLE).await.status(), 200);

    let job = settled_job(&app, &id).await;

    worker.terminate();
    assert!(worker.wait_success());
    assert_eq!(job, ("completed".into(), 1, 0), "{}", worker.output());
    let result = app.result_of(&id).await.unwrap();
    assert_eq!(result["outcome"], "stored");
    assert_eq!(result["resource_kind"], "batch");
    assert_eq!(result["summary"]["lines"], 2);
    assert_eq!(result["summary"]["error_lines"], 1);
    assert_eq!(read_location(&result), RESULTS.as_bytes());
    let hits = gcs.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].path, "/my-bucket/results.jsonl");
    assert_eq!(hits[0].api_key, None, "the Gemini key never goes to Cloud Storage");
    assert!(gemini.hits().is_empty());
}

async fn gemini_side_a_gs_object_that_does_not_exist_is_retried_as_not_found() {
    let gemini = GeminiStandIn::start().await;
    let gcs = GcsStandIn::start().await;
    let app = spawn_app().await;
    let key_file = gcs.service_account_file(&app.results_dir.join("creds"));
    let mut worker = start_worker(&app, &gemini.url, &[("GOOGLE_SERVICE_ACCOUNT", &key_file)]);
    let id = unique_id();
    assert_eq!(app.post_signed(&id, DOCUMENTED_EXAMPLE).await.status(), 200);

    let job = settled_job(&app, &id).await;

    worker.terminate();
    assert!(worker.wait_success());
    assert_eq!(job.0, "retryable", "a resource can lag behind its webhook");
    let errors: String = sqlx::query_scalar(
        "SELECT CAST(j.errors AS TEXT) FROM jobs j JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(errors.contains("gs://my-bucket/results.jsonl was not found"), "{errors}");
}

async fn gemini_side_without_cloud_storage_credentials_a_gs_pointer_is_dead_lettered_with_that_reason() {
    let gemini = GeminiStandIn::start().await;
    let app = spawn_app().await;
    let mut worker = start_worker(&app, &gemini.url, &[]);
    let id = unique_id();
    assert_eq!(app.post_signed(&id, DOCUMENTED_EXAMPLE).await.status(), 200);

    let job = settled_job(&app, &id).await;

    worker.terminate();
    assert!(worker.wait_success());
    assert_eq!(job.0, "discarded");
    let result = app.result_of(&id).await.unwrap();
    assert_eq!(result["outcome"], "not_followable");
    assert!(
        result["summary"]["reason"]
            .as_str()
            .unwrap()
            .contains("needs Google Cloud Storage access, which is not configured"),
        "{result}"
    );
}

async fn gemini_side_a_batch_without_a_pointer_is_looked_up_and_its_results_file_downloaded() {
    let gemini = RealisticGemini::bind(
        "127.0.0.1:0".parse().unwrap(),
        StandInSettings {
            api_key: Redacted::new(GEMINI_API_KEY),
            batch_lines: None,
        },
    )
    .await
    .unwrap();
    let url = gemini.url().to_owned();
    tokio::spawn(gemini.run_until_stopped(std::future::pending()));
    let app = spawn_app_with(move |f| f.merge(("gemini_base_url", url))).await;
    let id = unique_id();
    let body = json!({"type": "batch.succeeded", "version": "v1",
        "data": {"id": "batches/lookup1"}})
    .to_string();
    assert_eq!(app.post_signed(&id, &body).await.status(), 200);

    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await, ("completed".into(), 1, 0));
    let result = app.result_of(&id).await.unwrap();
    assert_eq!(result["outcome"], "stored");
    assert_eq!(read_location(&result), bodies::batch_results("lookup1"));
    assert_eq!(result["summary"]["lines"], bodies::BATCH_RESULT_LINES);
    assert_eq!(result["summary"]["error_lines"], bodies::BATCH_RESULT_ERROR_LINES);
}

async fn gemini_side_inline_batch_responses_are_stored_as_jsonl_one_response_per_line() {
    let gemini = GeminiStandIn::start().await;
    let responses = json!([
        {"response": {"candidates": [{"content": {"parts": [{"text": "first"}]}}]}, "metadata": {"key": "a"}},
        {"error": {"code": 3, "message": "bad request"}, "metadata": {"key": "b"}},
        {"response": {"candidates": [{"content": {"parts": [{"text": "line\nbreak"}]}}]}}
    ]);
    // camelCase, under metadata.output, as the Python SDK reads it.
    gemini.script(
        "batch:inline1",
        [Answer::Body(Bytes::from(
            json!({"name": "batches/inline1", "done": true,
                   "metadata": {"state": "BATCH_STATE_SUCCEEDED",
                                "output": {"inlinedResponses": {"inlinedResponses": responses}}}})
            .to_string(),
        ))],
    );
    let url = gemini.url.clone();
    let app = spawn_app_with(move |f| f.merge(("gemini_base_url", url))).await;
    let id = unique_id();
    let body = json!({"type": "batch.succeeded", "data": {"id": "batches/inline1"}}).to_string();
    assert_eq!(app.post_signed(&id, &body).await.status(), 200);

    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await, ("completed".into(), 1, 0));
    let result = app.result_of(&id).await.unwrap();
    assert_eq!(result["summary"]["lines"], 3);
    assert_eq!(result["summary"]["error_lines"], 1);
    assert_eq!(result["summary"]["inline"], true);
    let stored = String::from_utf8(read_location(&result)).unwrap();
    let lines: Vec<Value> = stored.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(Value::Array(lines), responses);
    let hits = gemini.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].path, "/v1beta/batches/inline1");
    assert_eq!(hits[0].api_key.as_deref(), Some(GEMINI_API_KEY));
}

async fn gemini_side_a_batch_whose_results_file_is_on_a_foreign_host_is_not_followed() {
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "batch:away",
        [Answer::Body(Bytes::from(
            json!({"response": {"responsesFile": "https://collector.example/steal?k=1"}})
                .to_string(),
        ))],
    );
    let url = gemini.url.clone();
    let app = spawn_app_with(move |f| f.merge(("gemini_base_url", url))).await;
    let id = unique_id();
    let body = json!({"type": "batch.succeeded", "data": {"id": "away"}}).to_string();
    assert_eq!(app.post_signed(&id, &body).await.status(), 200);

    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await.0, "discarded");
    let result = app.result_of(&id).await.unwrap();
    assert_eq!(result["outcome"], "not_followable");
    let reason = result["summary"]["reason"].as_str().unwrap();
    assert!(reason.contains("https://collector.example"), "{reason}");
    assert!(!reason.contains("steal"), "{reason}");
}

async fn gemini_side_a_batch_that_has_not_succeeded_yet_is_retried() {
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "batch:early",
        [Answer::Body(Bytes::from(
            json!({"metadata": {"state": "BATCH_STATE_RUNNING"}, "done": false}).to_string(),
        ))],
    );
    let url = gemini.url.clone();
    let app = spawn_app_with(move |f| f.merge(("gemini_base_url", url))).await;
    let id = unique_id();
    let body = json!({"type": "batch.succeeded", "data": {"id": "early"}}).to_string();
    assert_eq!(app.post_signed(&id, &body).await.status(), 200);

    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await, ("retryable".into(), 1, 1));
}
}
