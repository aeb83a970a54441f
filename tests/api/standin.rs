//! A local HTTP server standing in for Gemini's REST API (files, interactions), scripted per
//! resource, recording every request and the API key it carried: for fault answers (statuses,
//! redirects, delays, stalls). Its realistic bodies (Google's error shape, generated JSONL) come
//! from `gemhook dev`'s stand-in, `gemhook::tools::gemini_dev::bodies`, their one home.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gemhook::tools::gemini_dev::bodies;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this body.
    Body(Bytes),
    /// This status (with a Retry-After in seconds, if given) and Google's JSON error body.
    Status(u16, Option<u64>),
    /// 302 to this absolute URL.
    Redirect(String),
    /// Wait this long before answering at all (a read timeout on the client's side).
    Delay(Duration, Bytes),
    /// 200 with `lines` generated JSONL lines of 1 KiB each, streamed, never held whole.
    Generated { lines: u64 },
    /// 200, send these bytes, then hang without ending the body.
    StallAfter(Bytes),
}

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub api_key: Option<String>,
}

#[derive(Default)]
struct Script {
    /// Per file id or interaction id: answers in order; the last one repeats.
    answers: HashMap<String, VecDeque<Answer>>,
    hits: Vec<Hit>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Script>>);

pub struct GeminiStandIn {
    pub url: String,
    script: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GeminiStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GeminiStandIn {
    pub async fn start() -> GeminiStandIn {
        let script = Shared(Arc::new(Mutex::new(Script::default())));
        let router = axum::Router::new()
            .route("/download/v1beta/files/{name}", axum::routing::get(file))
            .route("/v1beta/interactions/{id}", axum::routing::get(interaction))
            .route("/v1beta/batches/{id}", axum::routing::get(batch))
            .route("/elsewhere/{name}", axum::routing::get(elsewhere))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        GeminiStandIn { url, script, task }
    }

    /// Scripts the answers for a file id, an interaction id, `batch:<id>` or an
    /// `/elsewhere/<name>` path.
    pub fn script(&self, id: &str, answers: impl IntoIterator<Item = Answer>) {
        self.script
            .0
            .lock()
            .unwrap()
            .answers
            .insert(id.to_owned(), answers.into_iter().collect());
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.script.0.lock().unwrap().hits.clone()
    }

    /// Requests whose path mentions `id`.
    pub fn hits_for(&self, id: &str) -> usize {
        self.hits().iter().filter(|h| h.path.contains(id)).count()
    }
}

fn next_answer(script: &Shared, id: &str, path: String, headers: &HeaderMap) -> Option<Answer> {
    let mut script = script.0.lock().unwrap();
    script.hits.push(Hit {
        path,
        api_key: headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let queue = script.answers.get_mut(id)?;
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().cloned()
    }
}

async fn file(
    State(script): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = name.trim_end_matches(":download").to_owned();
    let answer = next_answer(
        &script,
        &id,
        format!("/download/v1beta/files/{name}"),
        &headers,
    );
    respond(answer).await
}

async fn interaction(
    State(script): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer = next_answer(&script, &id, format!("/v1beta/interactions/{id}"), &headers);
    respond(answer).await
}

/// Scripted under `batch:<id>`, so a batch and a file of the same name stay apart.
async fn batch(
    State(script): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer = next_answer(
        &script,
        &format!("batch:{id}"),
        format!("/v1beta/batches/{id}"),
        &headers,
    );
    respond(answer).await
}

async fn elsewhere(
    State(script): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer = next_answer(&script, &name, format!("/elsewhere/{name}"), &headers);
    respond(answer).await
}

fn google_error(code: u16) -> Response {
    let body = bodies::google_error(code, bodies::default_message(code));
    (StatusCode::from_u16(code).unwrap(), body.to_string()).into_response()
}

async fn respond(answer: Option<Answer>) -> Response {
    match answer {
        None => google_error(404),
        Some(Answer::Body(bytes)) => bytes.into_response(),
        Some(Answer::Status(code, retry_after)) => {
            let mut response = google_error(code);
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
            }
            response
        }
        Some(Answer::Redirect(location)) => {
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        Some(Answer::Delay(wait, bytes)) => {
            tokio::time::sleep(wait).await;
            bytes.into_response()
        }
        Some(Answer::Generated { lines }) => {
            Body::from_stream(bodies::sized_batch_results("generated", lines)).into_response()
        }
        Some(Answer::StallAfter(bytes)) => {
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) })
                .chain(futures::stream::pending());
            Body::from_stream(stream).into_response()
        }
    }
}

use futures::StreamExt as _;
