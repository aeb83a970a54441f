//! `POST /webhooks/gemini`: every answer the receiver can give, on both backends.

use crate::helpers::*;

crate::on_both_backends! {

async fn a_signed_new_delivery_is_accepted_and_stored_with_its_job() {
    let app = spawn_app().await;
    let id = unique_id();
    let body = batch_succeeded("batch_1");

    let (status, json) = status_and_json(app.post_signed(&id, &body).await).await;

    assert_eq!(
        (status, json),
        (200, serde_json::json!({"status": "accepted"}))
    );
    let (event_status, event_type, stored) = app.stored_event(&id).await;
    assert_eq!(event_status, "accepted");
    assert_eq!(event_type.as_deref(), Some("batch.succeeded"));
    assert_eq!(
        stored,
        body.as_bytes(),
        "the raw body is kept byte for byte"
    );
    let job_state: String = sqlx::query_scalar(
        "SELECT j.state FROM jobs j JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(job_state, "available");
}

async fn a_duplicate_redelivery_with_a_fresh_timestamp_is_acknowledged_and_not_enqueued_again() {
    let app = spawn_app().await;
    let id = unique_id();
    let body = batch_succeeded("batch_2");
    let first = app
        .post_signed_at(&id, unix_now() - 60, SECRET, body.as_bytes())
        .await;
    assert_eq!(first.status(), 200);

    // Gemini's retry: same id, new timestamp, new signature.
    let retry = app
        .post_signed_at(&id, unix_now(), SECRET, body.as_bytes())
        .await;

    let (status, json) = status_and_json(retry).await;
    assert_eq!(
        (status, json),
        (200, serde_json::json!({"status": "duplicate"}))
    );
    assert_eq!(app.count("events").await, 1);
    assert_eq!(app.count("jobs").await, 1);
}

async fn twenty_concurrent_copies_of_one_delivery_give_exactly_one_event_and_one_job() {
    let app = spawn_app().await;
    let id = unique_id();
    let body = batch_succeeded("batch_3");

    let responses = futures::future::join_all((0..20).map(|_| app.post_signed(&id, &body))).await;

    let mut accepted = 0;
    let mut duplicates = 0;
    for response in responses {
        let (status, json) = status_and_json(response).await;
        assert_eq!(status, 200);
        match json["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => duplicates += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!((accepted, duplicates), (1, 19));
    assert_eq!(app.count("events").await, 1);
    assert_eq!(app.count("jobs").await, 1);
}

async fn without_group_commit_concurrent_copies_still_give_one_event_and_one_job() {
    let app = spawn_app_with(|f| f.merge(("group_commit_writers", 0))).await;
    let id = unique_id();
    let body = batch_succeeded("batch_simple");

    let responses = futures::future::join_all((0..20).map(|_| app.post_signed(&id, &body))).await;

    let accepted = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(accepted, 20);
    assert_eq!(app.count("events").await, 1);
    assert_eq!(app.count("jobs").await, 1);
}

/// A burst of 256 at once (issue 14): every one answered 200, none 503, on both backends.
async fn many_distinct_concurrent_deliveries_each_get_their_own_event_and_job() {
    let app = spawn_app().await;
    let deliveries: Vec<(String, String)> = (0..256)
        .map(|_| {
            let id = unique_id();
            let body = batch_succeeded(&id);
            (id, body)
        })
        .collect();

    let responses = futures::future::join_all(
        deliveries
            .iter()
            .map(|(id, body)| app.post_signed(id, body)),
    )
    .await;

    for response in responses {
        assert_eq!(
            status_and_json(response).await,
            (200, serde_json::json!({"status": "accepted"}))
        );
    }
    assert_eq!(app.count("events").await, 256);
    assert_eq!(app.count("jobs").await, 256);
}

async fn a_delivery_signed_with_either_of_two_configured_secrets_is_accepted() {
    let app =
        spawn_app_with(|f| f.merge(("webhook_secrets", format!("{SECRET},{OTHER_SECRET}")))).await;
    let body = batch_succeeded("batch_4");

    let old = app
        .post_signed_at(&unique_id(), unix_now(), SECRET, body.as_bytes())
        .await;
    let new = app
        .post_signed_at(&unique_id(), unix_now(), OTHER_SECRET, body.as_bytes())
        .await;

    assert_eq!(old.status(), 200);
    assert_eq!(new.status(), 200);
    assert_eq!(app.count("events").await, 2);
}

async fn a_body_changed_by_one_byte_is_refused_as_an_invalid_signature() {
    let app = spawn_app().await;
    let id = unique_id();
    let body = batch_succeeded("batch_5");
    let timestamp = unix_now();
    let signature = signature(SECRET, &id, timestamp, body.as_bytes());
    let tampered = body.replace("batch_5", "batch_6");

    let response = app
        .post_with_headers(
            &[
                ("webhook-id", &id),
                ("webhook-timestamp", &timestamp.to_string()),
                ("webhook-signature", &signature),
            ],
            tampered,
        )
        .await;

    let (status, json) = status_and_json(response).await;
    assert_eq!(
        (status, json),
        (401, serde_json::json!({"error": "invalid_signature"}))
    );
    assert_eq!(app.count("events").await, 0);
}

async fn a_reserialised_body_is_refused_because_the_raw_bytes_are_what_is_signed() {
    let app = spawn_app().await;
    let id = unique_id();
    let original = r#"{"type": "batch.expired", "data": {"id": "batch_7"}}"#;
    let reserialised =
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(original).unwrap())
            .unwrap();
    let timestamp = unix_now();
    let signature = signature(SECRET, &id, timestamp, original.as_bytes());

    let response = app
        .post_with_headers(
            &[
                ("webhook-id", &id),
                ("webhook-timestamp", &timestamp.to_string()),
                ("webhook-signature", &signature),
            ],
            reserialised,
        )
        .await;

    assert_eq!(response.status(), 401);
}

async fn a_signature_from_an_unknown_secret_is_refused() {
    let app = spawn_app().await;
    let response = app
        .post_signed_at(&unique_id(), unix_now(), OTHER_SECRET, b"{}")
        .await;
    let (status, json) = status_and_json(response).await;
    assert_eq!(
        (status, json),
        (401, serde_json::json!({"error": "invalid_signature"}))
    );
}

async fn stale_and_future_timestamps_are_refused_even_with_a_valid_signature() {
    let app = spawn_app().await;
    let body = batch_succeeded("batch_8");

    let old = app
        .post_signed_at(&unique_id(), unix_now() - 301 - 5, SECRET, body.as_bytes())
        .await;
    let future = app
        .post_signed_at(&unique_id(), unix_now() + 301 + 5, SECRET, body.as_bytes())
        .await;

    assert_eq!(
        status_and_json(old).await,
        (401, serde_json::json!({"error": "timestamp_too_old"}))
    );
    assert_eq!(
        status_and_json(future).await,
        (401, serde_json::json!({"error": "timestamp_too_new"}))
    );
    assert_eq!(app.count("events").await, 0);
}

async fn each_absent_or_empty_webhook_header_is_a_missing_header() {
    let app = spawn_app().await;
    let id = unique_id();
    let timestamp = unix_now().to_string();
    let signature = signature(SECRET, &id, unix_now(), b"{}");
    let complete = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature.as_str()),
    ];

    for skipped in 0..3 {
        for empty in [false, true] {
            let headers: Vec<(&str, &str)> = complete
                .iter()
                .enumerate()
                .filter_map(|(i, &(name, value))| match (i == skipped, empty) {
                    (false, _) => Some((name, value)),
                    (true, true) => Some((name, "")),
                    (true, false) => None,
                })
                .collect();
            let response = app.post_with_headers(&headers, "{}").await;
            assert_eq!(
                status_and_json(response).await,
                (400, serde_json::json!({"error": "missing_header"})),
                "header {skipped} {}",
                if empty { "empty" } else { "absent" }
            );
        }
    }
}

async fn a_malformed_id_or_timestamp_is_an_invalid_header() {
    let app = spawn_app().await;
    let long_id = "m".repeat(257);
    let cases = [
        (long_id.as_str(), "1700000000"),
        ("msg_1", "not-a-number"),
        ("msg_1", "1.5"),
    ];
    for (id, timestamp) in cases {
        let response = app
            .post_with_headers(
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", timestamp),
                    ("webhook-signature", "v1,AAAA"),
                ],
                "{}",
            )
            .await;
        assert_eq!(
            status_and_json(response).await,
            (400, serde_json::json!({"error": "invalid_header"})),
            "{id:.20} {timestamp}"
        );
    }
}

async fn verified_bodies_that_are_not_known_events_are_accepted_and_kept() {
    let app = spawn_app().await;
    let cases = [
        ("not json at all", "unparseable", None),
        ("[1,2,3]", "unparseable", None),
        (r#"{"data":{"id":"x"}}"#, "unparseable", None),
        (
            r#"{"type":"model.tuned","data":{}}"#,
            "ignored",
            Some("model.tuned"),
        ),
    ];
    for (body, expected_status, expected_type) in cases {
        let id = unique_id();
        let response = app.post_signed(&id, body).await;
        assert_eq!(
            status_and_json(response).await,
            (200, serde_json::json!({"status": "accepted"})),
            "{body}"
        );
        let (status, event_type, stored) = app.stored_event(&id).await;
        assert_eq!(status, expected_status, "{body}");
        assert_eq!(event_type.as_deref(), expected_type, "{body}");
        assert_eq!(stored, body.as_bytes());
    }
    assert_eq!(app.count("jobs").await, 4, "every new event gets its job");
}

async fn a_body_at_the_limit_is_accepted_and_one_byte_more_is_too_large() {
    let app = spawn_app_with(|f| f.merge(("max_body_bytes", 1024))).await;
    let at_limit = format!(
        r#"{{"type":"batch.expired","pad":"{}"}}"#,
        "x".repeat(1024 - 33)
    );
    assert_eq!(at_limit.len(), 1024);
    let over_limit = format!("{at_limit} ");

    let accepted = app.post_signed(&unique_id(), &at_limit).await;
    let refused = app.post_signed(&unique_id(), &over_limit).await;

    assert_eq!(accepted.status(), 200);
    assert_eq!(
        status_and_json(refused).await,
        (413, serde_json::json!({"error": "payload_too_large"}))
    );
}

async fn a_chunked_body_over_the_limit_is_too_large() {
    let app = spawn_app_with(|f| f.merge(("max_body_bytes", 1024))).await;
    // No Content-Length: the limit must hold while the body streams in.
    let chunks = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 512]))),
    );
    let id = unique_id();
    let response = app
        .post_with_headers(
            &[
                ("webhook-id", &id),
                ("webhook-timestamp", &unix_now().to_string()),
                ("webhook-signature", "v1,AAAA"),
            ],
            reqwest::Body::wrap_stream(chunks),
        )
        .await;
    assert_eq!(response.status(), 413);
}

async fn other_methods_on_the_webhook_path_are_not_allowed() {
    let app = spawn_app().await;
    let response = app.client.get(app.webhook_url()).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

async fn header_names_are_case_insensitive_on_the_wire() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app().await;
    let id = unique_id();
    let body = batch_succeeded("batch_9");
    let timestamp = unix_now();
    let signature = signature(SECRET, &id, timestamp, body.as_bytes());
    // reqwest lowercases header names; a raw request keeps Gemini's `Webhook-Id` spelling.
    let request = format!(
        "POST /webhooks/gemini HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Webhook-Id: {id}\r\nWEBHOOK-TIMESTAMP: {timestamp}\r\nWebhook-Signature: {signature}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"accepted"}"#), "{answer}");
}

async fn health_answers_and_readiness_reports_the_migrated_database() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, json) = status_and_json(ready).await;
    assert_eq!(status, 200);
    assert_eq!(json["migrations_applied"], true);
}

async fn readiness_fails_while_migrations_are_not_applied() {
    let app = spawn_app_with(|f| f.merge(("auto_migrate", false))).await;
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    let (status, json) = status_and_json(ready).await;
    assert_eq!(status, 503);
    assert_eq!(json["database"], true);
    assert_eq!(json["migrations_applied"], false);
}
}
