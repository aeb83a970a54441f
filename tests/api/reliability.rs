//! The ack path under odd input and a misbehaving database: a verified delivery is never
//! bounced for what its body holds, one refused row never fails its batch, a frozen database
//! gets a 503 within the deadline, slow clients are cut off.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::handoff::{Application, app_with_sinks, event, http_sink, process};
use crate::helpers::*;
use crate::standin::{Answer, GeminiStandIn};

crate::on_both_backends! {

/// Postgres refuses NUL in `text` and `\u0000` in `jsonb`; before the fix this delivery was
/// answered 503 on every retry, for 24 hours.
async fn a_verified_body_with_nul_in_its_type_and_id_is_stored_not_bounced() {
    let app = spawn_app().await;
    let id = unique_id();
    let body = r#"{"type":"batch.succeeded\u0000","data":{"id":"batches/a\u0000b"}}"#;

    let (status, json) = status_and_json(app.post_signed(&id, body).await).await;

    assert_eq!((status, json), (200, json!({"status": "accepted"})));
    let (event_status, event_type, stored) = app.stored_event(&id).await;
    assert_eq!(stored, body.as_bytes(), "the raw body is kept byte for byte");
    assert_eq!(event_status, "ignored", "not a known type once its NUL is kept");
    assert_eq!(event_type.as_deref(), Some("batch.succeeded\\u0000"));
    let (resource, altered): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT resource_id, altered FROM events WHERE webhook_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(resource.as_deref(), Some("batches/a\\u0000b"));
    assert_eq!(
        altered.as_deref(),
        Some("event_type nul escaped; resource_id nul escaped")
    );
}

/// NUL and oversized text in what the worker copies from the body (resource id, metadata) into
/// results and outcomes must not stop the job from completing or its outcome from reaching
/// the application.
async fn nul_in_a_known_event_reaches_the_application_escaped() {
    let gemini = GeminiStandIn::start().await;
    gemini.script("n1", [Answer::Body(Bytes::from("{\"key\":\"1\"}\n"))]);
    let application = Application::default();
    let url = application.start().await;
    let app = app_with_sinks(&gemini, http_sink("app", &url, "")).await;
    let id = unique_id();
    let long_id = format!("batches/{}", "x".repeat(4000));
    let body = event(
        "batch.succeeded",
        json!({"id": long_id, "output_file_uri": "files/n1", "user_metadata": {"note": "a\u{0}b", "k\u{0}": 1}}),
    );
    assert_eq!(app.post_signed(&id, &body).await.status(), 200);

    process(&app).await;

    assert_eq!(app.job_of(&id).await.0, "completed");
    let received = application.received();
    assert_eq!(received.len(), 1, "the outcome was delivered");
    assert_eq!(
        received[0].1["user_metadata"],
        json!({"note": "a\\u0000b", "k\\u0000": 1})
    );
}

async fn repeated_webhook_headers_are_refused_before_verification() {
    let app = spawn_app().await;
    let body = batch_succeeded("batch_r");
    let now = unix_now();
    let first = unique_id();
    let signature = signature(SECRET, &first, now, body.as_bytes());
    for repeated in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut headers = vec![
            ("webhook-id", first.clone()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", signature.clone()),
        ];
        // A second copy with another value: a proxy in front might read that one.
        headers.push((repeated, "v1,other".to_owned()));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();

        let (status, json) =
            status_and_json(app.post_with_headers(&headers, body.clone()).await).await;

        assert_eq!((status, json), (400, json!({"error": "invalid_header"})), "{repeated}");
    }
    assert_eq!(app.count("events").await, 0);
}

async fn a_client_that_sends_its_head_slowly_is_disconnected() {
    let app = spawn_app_with(|f| f.merge(("header_read_timeout_secs", 1))).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&address).await.unwrap();
    let mut idle = TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"POST /webhooks/gemini HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let started = Instant::now();

    for (name, stream) in [("slow", &mut slow), ("idle", &mut idle)] {
        let mut buffer = [0u8; 256];
        // hyper answers 408 or just closes; either way the socket reaches EOF.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the {name} connection is still open after 10 s");
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A well-behaved delivery still gets through.
    let id = unique_id();
    assert_eq!(app.post_signed(&id, &batch_succeeded("b")).await.status(), 200);
}

async fn a_body_that_stops_arriving_is_answered_408() {
    let app = spawn_app_with(|f| f.merge(("body_read_timeout_secs", 1))).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /webhooks/gemini HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\
         webhook-id: {}\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,x\r\n\r\n{{\"type\"",
        unique_id(),
        unix_now()
    );
    stream.write_all(head.as_bytes()).await.unwrap();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;

    assert!(read.is_ok(), "no answer within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"error":"body_timeout"}"#), "{answer}");
}

async fn very_large_or_very_many_headers_get_a_4xx_never_a_5xx() {
    let app = spawn_app().await;
    let big = "x".repeat(100 * 1024);
    let response = app.post_with_headers(&[("x-padding", big.as_str())], "{}").await;
    // hyper answers 431 when its buffer fills before the head ends, or 400 when what it holds
    // so far does not parse; both are the client's fault, neither reaches the handler.
    assert!(
        [400, 431].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );

    let names: Vec<String> = (0..150).map(|n| format!("x-h{n}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let response = app.post_with_headers(&headers, "{}").await;
    assert!(
        [400, 431].contains(&response.status().as_u16()),
        "more than 100 headers: {}",
        response.status()
    );
}

}

/// A row the database refuses (here by a trigger, the stand-in for any per-row failure) fails
/// only its own delivery, never the others sharing its group-commit batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn one_refused_row_does_not_fail_the_deliveries_batched_with_it() {
    crate::require_postgres!();
    let app = spawn_app().await;
    sqlx::query(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.webhook_id LIKE 'poison_%' THEN RAISE EXCEPTION 'poisoned row'; END IF;
           RETURN NEW;
         END $$",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON events
         FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let body = batch_succeeded("batch_p");
    let ids: Vec<String> = (0..96)
        .map(|n| {
            if n % 24 == 5 {
                format!("poison_{}", unique_id())
            } else {
                unique_id()
            }
        })
        .collect();

    let answers = futures::future::join_all(ids.iter().map(|id| app.post_signed(id, &body))).await;

    for (id, answer) in ids.iter().zip(answers) {
        let expected = if id.starts_with("poison_") { 503 } else { 200 };
        assert_eq!(answer.status(), expected, "{id}");
    }
    assert_eq!(app.count("events").await, 92);
}

/// A database that stops answering (a lock held on the table stands in for a frozen server)
/// gets Gemini a 503 within the ack deadline, on the group-commit path and the single one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn a_database_that_stops_answering_gets_a_503_within_the_ack_deadline() {
    crate::require_postgres!();
    for writers in [1, 0] {
        let app = spawn_app_with(|f| {
            f.merge(("ack_deadline_ms", 1000))
                .merge(("group_commit_writers", writers))
        })
        .await;
        // The schema must exist before the lock is taken.
        assert_eq!(app.post_signed(&unique_id(), "{}").await.status(), 200);
        let mut locker = PgConnection::connect(&app.db.url).await.unwrap();
        locker.execute("BEGIN").await.unwrap();
        locker
            .execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();

        let started = Instant::now();
        let answers = futures::future::join_all(
            (0..8).map(|_| async { app.post_signed(&unique_id(), "{}").await.status() }),
        )
        .await;
        let waited = started.elapsed();

        assert!(answers.iter().all(|s| *s == 503), "{answers:?}");
        assert!(
            waited < Duration::from_secs(4),
            "answered after {waited:?} with writers = {writers}"
        );
        locker.execute("ROLLBACK").await.unwrap();
        let id = unique_id();
        assert_eq!(app.post_signed(&id, "{}").await.status(), 200, "recovered");
        drop(locker);
    }
}

/// Three receivers on one database with the same ids arriving at all of them at once, as
/// Gemini's retries of a slow answer do: their batches used to insert shared ids in opposite
/// orders and deadlock, and every delivery of an aborted batch got a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn receivers_sharing_a_database_never_deadlock_on_shared_ids() {
    crate::require_postgres!();
    let db = TestDatabase::create().await;
    let results = std::env::temp_dir().join(format!("gemhook-results-{}", db.name));
    let settings = gemhook::config::Settings::from_figment(test_settings(&db, &results)).unwrap();
    let mut urls = Vec::new();
    for _ in 0..3 {
        let app = gemhook::startup::Application::build(&settings, gemhook::startup::Role::Receiver)
            .await
            .unwrap();
        urls.push(format!("http://127.0.0.1:{}/webhooks/gemini", app.port()));
        tokio::spawn(app.run_until_stopped(std::future::pending()));
    }
    // Widen the window: every row takes 2 ms to insert, so batches of different receivers
    // are certainly in flight together (without this the race needs a larger, slower load).
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    admin
        .execute(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$;
             CREATE TRIGGER slow_insert BEFORE INSERT ON events
             FOR EACH ROW EXECUTE FUNCTION slow_insert();",
        )
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let body = batch_succeeded("shared");
    let mut total = 0;
    for round in 0..6 {
        let ids: Vec<String> = (0..96).map(|_| unique_id()).collect();
        total += ids.len();
        let mut sends = Vec::new();
        for (n, url) in urls.iter().enumerate() {
            // Each receiver sees the ids in another order (ascending, descending, from the
            // middle), so their batches take the same ids in opposite orders.
            let mut order = ids.clone();
            match n {
                0 => {}
                1 => order.reverse(),
                _ => order.rotate_left(ids.len() / 2),
            }
            let _ = round;
            for id in order {
                let (client, url, body) = (client.clone(), url.clone(), body.clone());
                sends.push(async move {
                    signed_request(&client, &url, &id, body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                });
            }
        }
        let statuses = futures::future::join_all(sends).await;
        let refused = statuses.iter().filter(|s| **s != 200).count();
        assert_eq!(refused, 0, "round {round}: {statuses:?}");
    }
    let (events, jobs): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM jobs)")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!((events, jobs), (total as i64, total as i64));
    let _ = std::fs::remove_dir_all(&results);
}
