//! `gemhook bench ingest`: a load generator that signs unique Gemini deliveries (optionally with
//! a share of duplicates) and posts them to a receiver, closed-loop at a concurrency or
//! open-loop at a fixed rate, and reports throughput and latency from an HDR histogram.
//!
//! At a fixed rate each request's latency is measured from the moment it was *due*, not from
//! when it was sent, so a stalled receiver shows up in the percentiles (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;

use crate::verify::{WebhookSecret, sign_v1};

/// What to send.
#[derive(Debug, Clone)]
pub struct IngestPlan {
    pub url: String,
    pub secret: WebhookSecret,
    pub requests: u64,
    /// Requests in flight at once (closed loop), or the cap on them at a fixed rate.
    pub concurrency: usize,
    /// Requests per second, open loop; `None` sends as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Share (0..1) of requests that repeat an earlier `webhook-id`.
    pub duplicate_share: f64,
    /// The `type` of the events sent (`batch.succeeded` by default; `batch.expired` gives jobs
    /// that need no download, for measuring the worker's pickup alone).
    pub event_type: String,
}

/// What came back.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub requests: u64,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub accepted: u64,
    pub duplicate: u64,
    pub failed: u64,
    pub elapsed_secs: f64,
    pub accepted_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.rate {
            Some(rate) => format!(
                "fixed rate {rate:.0}/s (max {} in flight)",
                self.concurrency
            ),
            None => format!("concurrency {}", self.concurrency),
        };
        writeln!(
            f,
            "{} requests, {mode}: {} accepted, {} duplicate, {} failed in {:.2} s",
            self.requests, self.accepted, self.duplicate, self.failed, self.elapsed_secs
        )?;
        writeln!(f, "throughput: {:.0} accepted/s", self.accepted_per_sec)?;
        write!(
            f,
            "latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the URL must be http://host:port/path")]
    Url,
}

struct Shared {
    plan: IngestPlan,
    /// `host:port` to connect to, and the request target.
    authority: String,
    path: String,
    run: String,
    next: AtomicU64,
    accepted: AtomicU64,
    duplicate: AtomicU64,
    failed: AtomicU64,
    started: Instant,
}

/// Runs the plan to completion.
pub async fn ingest(plan: IngestPlan) -> Result<IngestReport, BenchError> {
    let url = url::Url::parse(&plan.url).map_err(|_| BenchError::Url)?;
    if url.scheme() != "http" {
        return Err(BenchError::Url);
    }
    let host = url.host_str().ok_or(BenchError::Url)?;
    let authority = format!("{host}:{}", url.port_or_known_default().unwrap_or(80));
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let shared = Arc::new(Shared {
        run: format!("bench_{:x}", rand::thread_rng().r#gen::<u64>()),
        authority,
        path,
        next: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        duplicate: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        started: Instant::now(),
        plan,
    });
    let tasks: Vec<_> = (0..shared.plan.concurrency.max(1))
        .map(|_| tokio::spawn(sender(shared.clone())))
        .collect();
    let mut histogram = new_histogram();
    for task in tasks {
        if let Ok(partial) = task.await {
            histogram.add(partial).expect("histograms share bounds");
        }
    }
    let elapsed = shared.started.elapsed().as_secs_f64();
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(IngestReport {
        requests: shared.plan.requests,
        concurrency: shared.plan.concurrency,
        rate: shared.plan.rate,
        accepted,
        duplicate: shared.duplicate.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        elapsed_secs: elapsed,
        accepted_per_sec: accepted as f64 / elapsed,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

type Connection = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// One keep-alive HTTP/1.1 connection, opened on first use and again after an error.
async fn connect(shared: &Shared) -> Option<Connection> {
    let stream = tokio::net::TcpStream::connect(&shared.authority)
        .await
        .ok()?;
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// One closed-loop sender on its own connection: takes the next request number until the
/// plan is done.
async fn sender(shared: Arc<Shared>) -> Histogram<u64> {
    let mut histogram = new_histogram();
    let mut connection: Option<Connection> = None;
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= shared.plan.requests {
            return histogram;
        }
        let due = match shared.plan.rate {
            Some(rate) => {
                let due = shared.started + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        send_one(&shared, index, &mut connection).await;
        let micros = due.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        histogram.saturating_record(micros.max(1));
    }
}

async fn send_one(shared: &Shared, index: u64, connection: &mut Option<Connection>) {
    let plan = &shared.plan;
    let reused = index > 0 && rand::thread_rng().gen_bool(plan.duplicate_share.clamp(0.0, 1.0));
    let id_number = if reused {
        rand::thread_rng().gen_range(0..index)
    } else {
        index
    };
    let id = format!("{}_{id_number}", shared.run);
    let body = format!(
        r#"{{"type":"{}","version":"v1","timestamp":"2026-01-22T12:00:00Z","data":{{"id":"batches/{id}","output_file_uri":"files/{id}"}}}}"#,
        plan.event_type
    );
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let signature = sign_v1(&plan.secret, &id, timestamp, body.as_bytes());
    let request = hyper::Request::post(shared.path.as_str())
        .header("host", shared.authority.as_str())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)));
    let counter = match request {
        Ok(request) => match exchange(shared, connection, request).await {
            Some((status, body)) if status.is_success() => match &body[..] {
                br#"{"status":"duplicate"}"# => &shared.duplicate,
                _ => &shared.accepted,
            },
            _ => &shared.failed,
        },
        Err(_) => &shared.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sends one request on the sender's connection (opening it if needed) and reads the whole
/// answer; a broken connection is dropped so the next request opens a new one.
async fn exchange(
    shared: &Shared,
    connection: &mut Option<Connection>,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Option<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = connect(shared).await;
    }
    let sender = connection.as_mut()?;
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        sender.ready().await.ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    })
    .await
    .ok()
    .flatten();
    if answered.is_none() {
        *connection = None;
    }
    answered
}
