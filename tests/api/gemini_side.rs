//! Gemini's side of the loop: `gemhook webhooks ...` and the watcher against a local stand-in
//! of the WebhookService, and the pointers that need more than the file API (`gs://`, a
//! `batch.succeeded` without a pointer) end to end through the worker.
//!
//! The stand-in records every request (method, path with query, body, the key it carried) and
//! answers as the API reference describes: resources in snake_case (one in camelCase, to check
//! both spellings are read), pages of two, Google's `{"error": {"code", "message", "status"}}`.

mod commands;
mod pointers;
mod watcher;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use gemhook::tools::gemini_dev::bodies;
use serde_json::{Value, json};

use crate::helpers::*;

/// The secret the stand-in's `create` returns.
pub const CREATED_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The secret the stand-in's `rotateSigningSecret` returns.
pub const ROTATED_SECRET: &str = "whsec_dGhlIHJvdGF0ZWQgc2VjcmV0IG9mIHRoZSB0ZXN0";
/// Items per page the stand-in serves, whatever `page_size` asks: small, to make pages.
const PAGE: usize = 2;

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub body: Value,
    pub api_key: Option<String>,
}

#[derive(Default)]
struct ServiceState {
    webhooks: Vec<Value>,
    requests: Vec<Seen>,
    /// Where `:ping` delivers a signed event, and with which secret.
    ping_target: Option<(String, String)>,
    /// Answer every request with this status (Google's error shape).
    failing: Option<u16>,
    /// Where `GET /v1beta/webhooks/moved` redirects.
    moved_to: Option<String>,
    created: usize,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<ServiceState>>);

/// A local WebhookService.
pub struct WebhookServiceStandIn {
    pub url: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookServiceStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookServiceStandIn {
    pub async fn start() -> WebhookServiceStandIn {
        let state = Shared(Arc::new(Mutex::new(ServiceState::default())));
        let router = axum::Router::new()
            .fallback(serve)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        WebhookServiceStandIn { url, state, task }
    }

    /// Serves these webhooks (as JSON resources).
    pub fn with_webhooks(self, webhooks: impl IntoIterator<Item = Value>) -> Self {
        self.state.0.lock().unwrap().webhooks = webhooks.into_iter().collect();
        self
    }

    pub fn deliver_pings_to(&self, url: &str, secret: &str) {
        self.state.0.lock().unwrap().ping_target = Some((url.to_owned(), secret.to_owned()));
    }

    pub fn fail_with(&self, status: Option<u16>) {
        self.state.0.lock().unwrap().failing = status;
    }

    pub fn redirect_moved_to(&self, url: &str) {
        self.state.0.lock().unwrap().moved_to = Some(url.to_owned());
    }

    pub fn set_state(&self, id: &str, state: &str) {
        let mut shared = self.state.0.lock().unwrap();
        if let Some(webhook) = shared.webhooks.iter_mut().find(|w| w["id"] == id) {
            webhook["state"] = json!(state);
        }
    }

    pub fn remove(&self, id: &str) {
        self.state
            .0
            .lock()
            .unwrap()
            .webhooks
            .retain(|w| w["id"] != id);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.0.lock().unwrap().requests.clone()
    }
}

/// A webhook resource as the API reference describes it.
pub fn webhook(id: &str, state: &str) -> Value {
    json!({
        "id": id,
        "name": format!("label of {id}"),
        "uri": format!("https://hooks.example.com/{id}"),
        "subscribed_events": ["batch.succeeded", "video.generated"],
        "state": state,
        "signing_secrets": [{"expire_time": "2026-12-03T10:00:00Z", "truncated_secret": "whsec_C2F…"}],
        "create_time": "2026-11-30T10:00:00Z",
        "update_time": "2026-12-01T10:00:00Z"
    })
}

/// The same resource in lowerCamelCase, as some Google APIs answer.
pub fn camel_case_webhook(id: &str, state: &str) -> Value {
    json!({
        "id": id,
        "uri": format!("https://hooks.example.com/{id}"),
        "subscribedEvents": ["interaction.completed"],
        "state": state,
        "signingSecrets": [{"expireTime": "2026-12-03T10:00:00Z", "truncatedSecret": "whsec_xyz…"}],
        "createTime": "2026-11-30T10:00:00Z"
    })
}

fn google_error(code: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        bodies::google_error(code, message).to_string(),
    )
        .into_response()
}

fn json_answer(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn serve(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let api_key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let mut state = shared.0.lock().unwrap();
    state.requests.push(Seen {
        method: method.to_string(),
        path: path_and_query,
        body: body_json.clone(),
        api_key: api_key.clone(),
    });
    if api_key.as_deref() != Some(GEMINI_API_KEY) {
        return (
            StatusCode::BAD_REQUEST,
            bodies::api_key_invalid().to_string(),
        )
            .into_response();
    }
    if let Some(code) = state.failing {
        return google_error(code, "The service is currently unavailable.");
    }
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let rest = uri.path().strip_prefix("/v1beta/webhooks").unwrap_or("?");
    match (method, rest) {
        (Method::GET, "") => {
            // Tokens with characters that must be encoded in a query.
            let page: usize = param("page_token")
                .and_then(|t| t.strip_prefix("page/").map(str::to_owned))
                .and_then(|n| n.trim_end_matches("+=").parse().ok())
                .unwrap_or(0);
            let items: Vec<Value> = state
                .webhooks
                .iter()
                .skip(page * PAGE)
                .take(PAGE)
                .cloned()
                .collect();
            let mut answer = json!({"webhooks": items});
            if (page + 1) * PAGE < state.webhooks.len() {
                answer["next_page_token"] = json!(format!("page/{}+=", page + 1));
            }
            json_answer(answer)
        }
        (Method::POST, "") => {
            state.created += 1;
            let id = format!("wh_new{}", state.created);
            let mut resource = json!({
                "id": id,
                "uri": body_json["uri"],
                "subscribed_events": body_json["subscribed_events"],
                "state": "enabled",
                "create_time": "2026-12-02T10:00:00Z",
            });
            if let Some(name) = body_json.get("name") {
                resource["name"] = name.clone();
            }
            state.webhooks.push(resource.clone());
            resource["new_signing_secret"] = json!(CREATED_SECRET);
            json_answer(resource)
        }
        (method, rest) => {
            let Some(segment) = rest.strip_prefix('/') else {
                return google_error(404, "Not found.");
            };
            let (id, verb) = match segment.split_once(':') {
                Some((id, verb)) => (id.to_owned(), Some(verb.to_owned())),
                None => (segment.to_owned(), None),
            };
            if id == "moved" {
                let to = state.moved_to.clone().unwrap_or_default();
                return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
            }
            let Some(index) = state.webhooks.iter().position(|w| w["id"] == id.as_str()) else {
                return google_error(404, &format!("Webhook {id} not found."));
            };
            match (method, verb.as_deref()) {
                (Method::GET, None) => json_answer(state.webhooks[index].clone()),
                (Method::PATCH, None) => {
                    let Some(mask) = param("update_mask") else {
                        return google_error(400, "update_mask is required.");
                    };
                    for field in mask.split(',') {
                        state.webhooks[index][field] = body_json[field].clone();
                    }
                    json_answer(state.webhooks[index].clone())
                }
                (Method::DELETE, None) => {
                    state.webhooks.remove(index);
                    StatusCode::OK.into_response()
                }
                (Method::POST, Some("ping")) => {
                    if let Some((url, secret)) = state.ping_target.clone() {
                        tokio::spawn(deliver_ping(url, secret, id));
                    }
                    json_answer(json!({}))
                }
                (Method::POST, Some("rotateSigningSecret")) => {
                    json_answer(json!({"secret": ROTATED_SECRET}))
                }
                _ => google_error(400, "Unsupported call."),
            }
        }
    }
}

/// What Gemini would do on `:ping`: a signed delivery, a moment later.
async fn deliver_ping(url: String, secret: String, webhook: String) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = unique_id();
    let body =
        json!({"type": "webhook.ping", "version": "v1", "data": {"webhook": webhook}}).to_string();
    let timestamp = unix_now();
    let _ = reqwest::Client::new()
        .post(url)
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&secret, &id, timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .await;
}

/// A finished `gemhook ...` run.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: not JSON: {}\n{}", self.stdout, self.stderr))
    }

    /// Asserts the run never printed the API key.
    pub fn assert_no_key(&self) {
        assert!(
            !self.stdout.contains(GEMINI_API_KEY) && !self.stderr.contains(GEMINI_API_KEY),
            "the API key was printed: {self:?}"
        );
    }
}

/// Runs the real binary with `env` and `args`, off the async runtime's threads.
pub async fn gemhook(env: &[(&str, &str)], args: &[&str]) -> Run {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let output = crate::process::gemhook_command(&env)
            .args(&args)
            .env("GEMHOOK_LOG_FORMAT", "json")
            .output()
            .unwrap();
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}
