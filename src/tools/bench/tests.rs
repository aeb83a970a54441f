//! The load generator against a raw TCP receiver that answers, drops or holds requests as told:
//! each kind of answer is sorted where the fault campaign expects it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the raw receiver does with the n-th request (counted from 0 across connections).
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers with this raw HTTP/1.1 response.
    Respond(&'static str),
    /// Answers 200 with the number of bytes the request took, as its body.
    EchoLength,
    /// Reads the whole request, then closes the connection without answering.
    Close,
    /// Reads the whole request and never answers.
    Hold,
}

const ACCEPTED: &str = "HTTP/1.1 200 OK\r\ncontent-length: 21\r\n\r\n{\"status\":\"accepted\"}";
const DUPLICATE: &str = "HTTP/1.1 200 OK\r\ncontent-length: 22\r\n\r\n{\"status\":\"duplicate\"}";
const UNAVAILABLE: &str =
    "HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\ncontent-length: 0\r\n\r\n";
const UNAVAILABLE_BARE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
const UNAUTHORIZED: &str = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";

/// Starts the raw receiver; returns its webhook URL.
async fn raw_receiver(behaviour: impl Fn(u64) -> Behaviour + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/gemini", listener.local_addr().unwrap());
    let behaviour = Arc::new(behaviour);
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, behaviour.clone(), served.clone()));
        }
    });
    url
}

async fn serve_connection(
    mut stream: TcpStream,
    behaviour: Arc<impl Fn(u64) -> Behaviour>,
    served: Arc<AtomicU64>,
) {
    let mut buffer = Vec::new();
    loop {
        let Some(length) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        buffer.drain(..length);
        match behaviour(served.fetch_add(1, Ordering::SeqCst)) {
            Behaviour::Respond(raw) => stream.write_all(raw.as_bytes()).await.unwrap(),
            Behaviour::EchoLength => {
                let body = length.to_string();
                let raw = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(raw.as_bytes()).await.unwrap();
            }
            Behaviour::Close => return,
            Behaviour::Hold => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
        }
    }
}

/// Reads one whole request (head and `content-length` body) into `buffer`; returns its length
/// in bytes, or `None` when the connection ends first.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let body_len: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + body_len;
            if buffer.len() >= total {
                return Some(total);
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn plan(url: &str, requests: u64, record: RecordFiles) -> IngestPlan {
    IngestPlan {
        url: url.to_owned(),
        secret: WebhookSecret::parse(SECRET).unwrap(),
        requests,
        concurrency: 1,
        rate: None,
        duplicate_share: 0.0,
        event_type: "batch.succeeded".into(),
        request_timeout: Duration::from_secs(10),
        record,
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "gemhook-bench-{name}-{:x}",
        rand::thread_rng().r#gen::<u64>()
    ))
}

#[tokio::test]
async fn the_computed_wire_length_is_what_hyper_writes() {
    let url = raw_receiver(|_| Behaviour::EchoLength).await;
    let shared = Shared {
        authority: url["http://".len()..].split('/').next().unwrap().to_owned(),
        path: "/webhooks/gemini".into(),
        run: "bench_test".into(),
        next: AtomicU64::new(0),
        counts: Counts::default(),
        started: Instant::now(),
        plan: plan(&url, 1, RecordFiles::default()),
    };
    let body = r#"{"type":"batch.succeeded","data":{"id":"batches/1"}}"#.to_owned();
    let request = delivery_request(
        &shared,
        "msg_1".into(),
        1_700_000_000,
        "v1,abc=".into(),
        body.clone(),
    )
    .unwrap();
    let expected = wire::request_wire_len(&request, body.len());

    let mut connection = connect(&shared).await.unwrap();
    let response = connection.sender.send_request(request).await.unwrap();
    use http_body_util::BodyExt;
    let echoed = response.into_body().collect().await.unwrap().to_bytes();

    assert_eq!(std::str::from_utf8(&echoed).unwrap(), expected.to_string());
    assert_eq!(connection.written.load(Ordering::Relaxed), expected);
}

#[tokio::test]
async fn every_kind_of_answer_is_counted_and_only_2xx_ids_are_recorded_as_acknowledged() {
    let sequence = [
        ACCEPTED,
        DUPLICATE,
        UNAVAILABLE,
        UNAVAILABLE_BARE,
        UNAUTHORIZED,
    ];
    let url =
        raw_receiver(move |n| Behaviour::Respond(sequence[n as usize % sequence.len()])).await;
    let files = RecordFiles {
        acked_ids: Some(temp_path("acked")),
        answer_log: Some(temp_path("answers")),
    };

    let report = ingest(plan(&url, 5, files.clone())).await.unwrap();

    let counts = (
        report.accepted,
        report.duplicate,
        report.unavailable,
        report.unavailable_without_retry_after,
        report.other_status,
        report.failed,
    );
    assert_eq!(counts, (1, 1, 1, 1, 1, 3));
    let acked = std::fs::read_to_string(files.acked_ids.as_ref().unwrap()).unwrap();
    let log = std::fs::read_to_string(files.answer_log.as_ref().unwrap()).unwrap();
    assert_eq!(acked.lines().count(), 2, "{acked}");
    let answers: Vec<&str> = log
        .lines()
        .map(|line| line.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(
        answers,
        [
            "accepted",
            "duplicate",
            "503",
            "503-no-retry-after",
            "status-401"
        ]
    );
    for line in log
        .lines()
        .filter(|l| l.contains(" accepted ") || l.contains(" duplicate "))
    {
        let id = line.split(' ').nth(3).unwrap();
        assert!(acked.lines().any(|acked| acked == id), "{id} in {acked}");
    }
    for path in [files.acked_ids, files.answer_log].into_iter().flatten() {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test]
async fn a_request_read_in_full_then_dropped_is_reset_after_sent() {
    let url = raw_receiver(|_| Behaviour::Close).await;

    let report = ingest(plan(&url, 2, RecordFiles::default())).await.unwrap();

    assert_eq!((report.reset_after_sent, report.failed), (2, 2));
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_counted_as_timed_out_within_the_timeout() {
    let url = raw_receiver(|_| Behaviour::Hold).await;
    let mut plan = plan(&url, 1, RecordFiles::default());
    plan.request_timeout = Duration::from_millis(300);
    let started = Instant::now();

    let report = ingest(plan).await.unwrap();

    assert_eq!(report.timed_out, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn nothing_listening_is_connect_failed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhooks/gemini", listener.local_addr().unwrap());
    drop(listener);

    let report = ingest(plan(&url, 3, RecordFiles::default())).await.unwrap();

    assert_eq!((report.connect_failed, report.failed), (3, 3));
}
