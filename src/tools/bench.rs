//! `gemhook bench ingest`: a load generator that signs unique Gemini deliveries (optionally with
//! a share of duplicates) and posts them to a receiver, closed-loop at a concurrency or
//! open-loop at a fixed rate, and reports throughput and latency from an HDR histogram.
//!
//! At a fixed rate each request's latency is measured from the moment it was *due*, not from
//! when it was sent, so a stalled receiver shows up in the percentiles (no coordinated omission).
//!
//! For fault testing it also sorts every answer by what it was (2xx, 503 with or without
//! `Retry-After`, another status, no connection, a connection that ended before or after the
//! request was fully sent, no answer within the per-request timeout), and can write down every
//! `webhook-id` answered 2xx and a line per request as answers arrive ([`record`]).

mod record;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;

pub use record::RecordFiles;
use record::{Record, Recorder};

use crate::verify::{WebhookSecret, sign_v1};

/// How long one request may take, from connecting to reading its answer, unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// After this long without an answer a request counts as timed out and its connection is
    /// dropped: a receiver that hangs is counted, not waited on forever.
    pub request_timeout: Duration,
    /// Files to write the acknowledged ids and the per-request answers to, as they arrive.
    pub record: RecordFiles,
}

/// What one request got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx, `{"status":"duplicate"}`.
    Duplicate,
    /// Any other 2xx: the receiver says it stored the delivery.
    Accepted,
    /// 503, with or without a `Retry-After` header.
    Unavailable { retry_after: bool },
    /// Any other status.
    Status(u16),
    /// No connection could be opened.
    ConnectFailed,
    /// The connection ended before the whole request was written: the receiver cannot have
    /// processed it.
    NotSent,
    /// The whole request was written, then the connection ended without an answer.
    ResetAfterSent,
    /// No answer within the request timeout.
    TimedOut,
}

impl Answer {
    /// Whether the receiver acknowledged the delivery (a 2xx).
    pub fn is_ack(self) -> bool {
        matches!(self, Answer::Accepted | Answer::Duplicate)
    }
}

/// The word written in the answer log.
impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Duplicate => f.write_str("duplicate"),
            Answer::Accepted => f.write_str("accepted"),
            Answer::Unavailable { retry_after: true } => f.write_str("503"),
            Answer::Unavailable { retry_after: false } => f.write_str("503-no-retry-after"),
            Answer::Status(code) => write!(f, "status-{code}"),
            Answer::ConnectFailed => f.write_str("connect-failed"),
            Answer::NotSent => f.write_str("not-sent"),
            Answer::ResetAfterSent => f.write_str("reset-after-sent"),
            Answer::TimedOut => f.write_str("timeout"),
        }
    }
}

/// What came back.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub requests: u64,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub accepted: u64,
    pub duplicate: u64,
    /// Everything that was not a 2xx: the sum of the counts below.
    pub failed: u64,
    /// 503 with `Retry-After` (what the receiver promises when it cannot store).
    pub unavailable: u64,
    pub unavailable_without_retry_after: u64,
    /// Statuses other than 2xx and 503.
    pub other_status: u64,
    /// One of those statuses, to say what they were (401: the secret is not the receiver's).
    pub other_status_seen: Option<u16>,
    pub connect_failed: u64,
    pub not_sent: u64,
    pub reset_after_sent: u64,
    pub timed_out: u64,
    pub request_timeout_ms: u64,
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
        if self.failed > 0 {
            writeln!(
                f,
                "failed: {} 503 with Retry-After, {} 503 without, {} other status{}, \
                 {} connect failed, {} not sent, {} reset after sent, {} timed out (> {} ms)",
                self.unavailable,
                self.unavailable_without_retry_after,
                self.other_status,
                self.other_status_seen
                    .map(|code| format!(" (e.g. {code})"))
                    .unwrap_or_default(),
                self.connect_failed,
                self.not_sent,
                self.reset_after_sent,
                self.timed_out,
                self.request_timeout_ms
            )?;
        }
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
    #[error("cannot create {}", path.display())]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread writing the record files panicked")]
    RecorderPanicked,
}

/// One counter per [`Answer`] kind.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    unavailable: AtomicU64,
    unavailable_without_retry_after: AtomicU64,
    other_status: AtomicU64,
    /// The latest status of that kind (0: none yet), for the report to name.
    other_status_seen: AtomicU64,
    connect_failed: AtomicU64,
    not_sent: AtomicU64,
    reset_after_sent: AtomicU64,
    timed_out: AtomicU64,
}

impl Counts {
    fn of(&self, answer: Answer) -> &AtomicU64 {
        if let Answer::Status(code) = answer {
            self.other_status_seen
                .store(u64::from(code), std::sync::atomic::Ordering::Relaxed);
        }
        match answer {
            Answer::Accepted => &self.accepted,
            Answer::Duplicate => &self.duplicate,
            Answer::Unavailable { retry_after: true } => &self.unavailable,
            Answer::Unavailable { retry_after: false } => &self.unavailable_without_retry_after,
            Answer::Status(_) => &self.other_status,
            Answer::ConnectFailed => &self.connect_failed,
            Answer::NotSent => &self.not_sent,
            Answer::ResetAfterSent => &self.reset_after_sent,
            Answer::TimedOut => &self.timed_out,
        }
    }
}

struct Shared {
    plan: IngestPlan,
    /// `host:port` to connect to, and the request target.
    authority: String,
    path: String,
    run: String,
    next: AtomicU64,
    counts: Counts,
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
    let recorder = if plan.record.any() {
        Some(Recorder::start(&plan.record)?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        run: format!("bench_{:x}", rand::thread_rng().r#gen::<u64>()),
        authority,
        path,
        next: AtomicU64::new(0),
        counts: Counts::default(),
        started: Instant::now(),
        plan,
    });
    let (records, recorder) = recorder.unzip();
    let tasks: Vec<_> = (0..shared.plan.concurrency.max(1))
        .map(|_| tokio::spawn(sender(shared.clone(), records.clone())))
        .collect();
    // Only the senders hold the channel now: the recorder ends when the last of them does.
    drop(records);
    let mut histogram = new_histogram();
    for task in tasks {
        if let Ok(partial) = task.await {
            histogram.add(partial).expect("histograms share bounds");
        }
    }
    let elapsed = shared.started.elapsed().as_secs_f64();
    if let Some(recorder) = recorder {
        recorder.finish().await?;
    }
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let counts = &shared.counts;
    let accepted = count(&counts.accepted);
    let duplicate = count(&counts.duplicate);
    let ms = |micros: u64| micros as f64 / 1000.0;
    let requests = shared.plan.requests;
    Ok(IngestReport {
        requests,
        concurrency: shared.plan.concurrency,
        rate: shared.plan.rate,
        accepted,
        duplicate,
        failed: requests.saturating_sub(accepted + duplicate),
        unavailable: count(&counts.unavailable),
        unavailable_without_retry_after: count(&counts.unavailable_without_retry_after),
        other_status: count(&counts.other_status),
        other_status_seen: match count(&counts.other_status_seen) {
            0 => None,
            code => u16::try_from(code).ok(),
        },
        connect_failed: count(&counts.connect_failed),
        not_sent: count(&counts.not_sent),
        reset_after_sent: count(&counts.reset_after_sent),
        timed_out: count(&counts.timed_out),
        request_timeout_ms: shared.plan.request_timeout.as_millis() as u64,
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

/// One keep-alive HTTP/1.1 connection, with the count of bytes written on it.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    written: Arc<AtomicU64>,
}

/// Opens a connection; `None` when the receiver cannot be reached.
async fn connect(shared: &Shared) -> Option<Connection> {
    let stream = tokio::net::TcpStream::connect(&shared.authority)
        .await
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (stream, written) = wire::CountingStream::new(stream);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(connection);
    Some(Connection { sender, written })
}

/// One closed-loop sender on its own connection: takes the next request number until the
/// plan is done.
async fn sender(
    shared: Arc<Shared>,
    records: Option<std::sync::mpsc::Sender<Record>>,
) -> Histogram<u64> {
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
        send_one(&shared, index, &mut connection, records.as_ref()).await;
        let micros = due.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        histogram.saturating_record(micros.max(1));
    }
}

async fn send_one(
    shared: &Shared,
    index: u64,
    connection: &mut Option<Connection>,
    records: Option<&std::sync::mpsc::Sender<Record>>,
) {
    let plan = &shared.plan;
    let reused = index > 0 && rand::thread_rng().gen_bool(plan.duplicate_share.clamp(0.0, 1.0));
    let id_number = if reused {
        rand::thread_rng().gen_range(0..index)
    } else {
        index
    };
    let id = format!("{}_{id_number}", shared.run);
    // `files/batch-<id>`: the name `gemhook dev`'s stand-in serves batch results under, so a
    // load against a worker on the stand-in downloads a file per delivery.
    let body = format!(
        r#"{{"type":"{}","version":"v1","timestamp":"2026-01-22T12:00:00Z","data":{{"id":"batches/{id}","output_file_uri":"files/batch-{id}"}}}}"#,
        plan.event_type
    );
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let signature = sign_v1(&plan.secret, &id, timestamp, body.as_bytes());
    let body_len = body.len();
    // The id is needed again only when answers are recorded.
    let recorded_id = records.map(|_| id.clone());
    let request = delivery_request(shared, id, timestamp, signature, body);
    let sent_at = Instant::now();
    let sent_unix_ms = records.map(|_| unix_ms());
    let answer = match request {
        Ok(request) => exchange(shared, connection, request, body_len).await,
        // Unreachable with the headers above; counted rather than trusted.
        Err(_) => Answer::NotSent,
    };
    shared.counts.of(answer).fetch_add(1, Ordering::Relaxed);
    if let (Some(records), Some(webhook_id), Some(sent_unix_ms)) =
        (records, recorded_id, sent_unix_ms)
    {
        // The recorder outlives every sender; a send error would mean it failed, and its
        // error is reported when the run ends.
        let _ = records.send(Record {
            sent_unix_ms,
            elapsed_us: sent_at.elapsed().as_micros().min(u128::from(u64::MAX)) as u64,
            answer,
            webhook_id,
        });
    }
}

type Request = hyper::Request<http_body_util::Full<bytes::Bytes>>;

/// A signed delivery as the receiver gets it. An explicit `content-length`: hyper then adds no
/// header of its own, so the size on the wire is known exactly (see `wire::request_wire_len`).
fn delivery_request(
    shared: &Shared,
    id: String,
    timestamp: i64,
    signature: String,
    body: String,
) -> Result<Request, hyper::http::Error> {
    hyper::Request::post(shared.path.as_str())
        .header("host", shared.authority.as_str())
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sends one request on the sender's connection (opening it if needed) and reads the whole
/// answer, all within the request timeout. A connection that failed or timed out is dropped so
/// the next request opens a new one.
async fn exchange(
    shared: &Shared,
    connection: &mut Option<Connection>,
    request: Request,
    body_len: usize,
) -> Answer {
    let attempt = tokio::time::timeout(
        shared.plan.request_timeout,
        attempt(shared, connection, request, body_len),
    )
    .await;
    let (answer, reusable) = attempt.unwrap_or((Answer::TimedOut, false));
    if !reusable {
        *connection = None;
    }
    answer
}

/// The exchange itself: the answer, and whether the connection can carry the next request.
async fn attempt(
    shared: &Shared,
    connection: &mut Option<Connection>,
    request: Request,
    body_len: usize,
) -> (Answer, bool) {
    use http_body_util::BodyExt;
    if connection.as_ref().is_none_or(|c| c.sender.is_closed()) {
        *connection = connect(shared).await;
    }
    let Some(open) = connection.as_mut() else {
        return (Answer::ConnectFailed, false);
    };
    let wire_len = wire::request_wire_len(&request, body_len);
    let written_before = open.written.load(Ordering::Relaxed);
    if open.sender.ready().await.is_err() {
        return (Answer::NotSent, false);
    }
    let response = match open.sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => {
            let written = open.written.load(Ordering::Relaxed) - written_before;
            let answer = if written >= wire_len {
                Answer::ResetAfterSent
            } else {
                Answer::NotSent
            };
            return (answer, false);
        }
    };
    let status = response.status();
    let retry_after = response.headers().contains_key(hyper::header::RETRY_AFTER);
    // The status line is the answer: a 2xx whose body is then cut off was still acknowledged
    // (and must have been stored), so it counts as one; only the connection is given up.
    let body = response.into_body().collect().await.map(|b| b.to_bytes());
    let answer = if status.is_success() {
        match &body {
            Ok(body) if &body[..] == br#"{"status":"duplicate"}"# => Answer::Duplicate,
            _ => Answer::Accepted,
        }
    } else if status == hyper::StatusCode::SERVICE_UNAVAILABLE {
        Answer::Unavailable { retry_after }
    } else {
        Answer::Status(status.as_u16())
    };
    (answer, body.is_ok())
}

#[cfg(test)]
mod tests;
