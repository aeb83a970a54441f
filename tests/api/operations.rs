//! What an operator sees and does: metrics, readiness detail, retention, inspection.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::process::{Gemhook, gemhook_command, gemhook_ok};
use crate::standin::{Answer, GeminiStandIn};

/// `name{labels} value` lines of a Prometheus exposition, keyed by `name{labels}`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn metric(metrics: &HashMap<String, f64>, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    timestamp: i64,
    secret: &str,
    body: &str,
) -> u16 {
    client
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(secret, id, timestamp, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn metrics_count_a_known_sequence_of_deliveries_and_jobs() {
    crate::require_postgres!();
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "m1",
        [Answer::Body(Bytes::from_static(b"{\"key\":\"1\"}\n"))],
    );
    let db = TestDatabase::create().await;
    let results = std::env::temp_dir().join(format!("gemhook-metrics-{}", db.name));
    let results_dir = results.to_string_lossy().into_owned();
    let (mut gemhook, address) = Gemhook::serve(&[
        ("GEMHOOK_DATABASE_URL", &db.url),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMHOOK_GEMINI_BASE_URL", &gemini.url),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_RESULTS_DIR", &results_dir),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
    ]);
    let client = reqwest::Client::new();
    let url = format!("{address}/webhooks/gemini");
    let now = unix_now();
    let downloaded =
        r#"{"type":"batch.succeeded","data":{"id":"batches/m1","output_file_uri":"files/m1"}}"#;
    let foreign = r#"{"type":"video.generated","data":{"id":"v","output_file_uri":"https://elsewhere.example/v.mp4"}}"#;

    let first = unique_id();
    let statuses = [
        post(&client, &url, &first, now, SECRET, downloaded).await,
        post(&client, &url, &unique_id(), now, SECRET, foreign).await,
        post(&client, &url, &first, now, SECRET, downloaded).await,
        post(&client, &url, &unique_id(), now, OTHER_SECRET, downloaded).await,
        post(&client, &url, &unique_id(), now - 3600, SECRET, downloaded).await,
        client
            .post(&url)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
    ];
    assert_eq!(statuses, [200, 200, 200, 401, 401, 400]);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for _ in 0..200 {
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state NOT IN ('completed', 'discarded')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if unfinished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let text = client
        .get(format!("{}/metrics", gemhook.console_address()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = parse_exposition(&text);
    gemhook.terminate();
    assert!(gemhook.wait_success());
    pool.close().await;
    let _ = std::fs::remove_dir_all(&results);

    let deliveries = |outcome: &str| {
        metric(
            &metrics,
            &format!("gemhook_deliveries_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(deliveries("accepted"), 2.0, "{text}");
    assert_eq!(deliveries("duplicate"), 1.0);
    assert_eq!(deliveries("invalid_signature"), 1.0);
    assert_eq!(deliveries("stale"), 1.0);
    assert_eq!(deliveries("bad_request"), 1.0);
    assert_eq!(
        metric(&metrics, "gemhook_verified_total{scheme=\"v1\"}"),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gemhook_ack_duration_seconds_count{outcome=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(metric(&metrics, "gemhook_jobs{state=\"completed\"}"), 1.0);
    assert_eq!(metric(&metrics, "gemhook_jobs{state=\"discarded\"}"), 1.0);
    assert_eq!(metric(&metrics, "gemhook_jobs{state=\"available\"}"), 0.0);
    assert_eq!(metric(&metrics, "gemhook_backlog_age_seconds"), 0.0);
    assert_eq!(
        metric(&metrics, "gemhook_job_attempts_total{result=\"completed\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gemhook_jobs_discarded_total{reason=\"not_followable\"}"
        ),
        1.0
    );
    assert_eq!(metric(&metrics, "gemhook_download_bytes_total"), 12.0);
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn readiness_shows_the_backlog_age() {
    crate::require_postgres!();
    let app = spawn_app().await;
    app.post_signed(&unique_id(), &batch_succeeded("ready"))
        .await;
    sqlx::query("UPDATE jobs SET scheduled_at = now() - interval '90 seconds'")
        .execute(&app.pool)
        .await
        .unwrap();

    let ready: Value = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let age = ready["backlog_age_secs"].as_f64().unwrap();
    assert!((89.0..120.0).contains(&age), "{ready}");
}

/// Four old events (completed, discarded, available, completed-but-young) for pruning tests.
async fn events_of_every_age_and_state(app: &TestApp) -> [String; 4] {
    let ids = [unique_id(), unique_id(), unique_id(), unique_id()];
    for id in &ids {
        app.post_signed(id, &batch_succeeded(id)).await;
    }
    let set = |id: &str, state: &str, days: i32| {
        sqlx::query(
            "WITH e AS (UPDATE events SET received_at = now() - make_interval(days => $3)
                        WHERE webhook_id = $1 RETURNING id)
             UPDATE jobs SET state = $2 FROM e WHERE jobs.event_id = e.id",
        )
        .bind(id.to_owned())
        .bind(state.to_owned())
        .bind(days)
        .execute(&app.pool)
    };
    set(&ids[0], "completed", 10).await.unwrap();
    set(&ids[1], "discarded", 10).await.unwrap();
    set(&ids[2], "available", 10).await.unwrap();
    set(&ids[3], "completed", 1).await.unwrap();
    ids
}

async fn remaining(app: &TestApp, ids: &[String]) -> Vec<bool> {
    let mut present = Vec::new();
    for id in ids {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE webhook_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        present.push(count == 1);
    }
    present
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn pruning_deletes_old_finished_events_and_keeps_the_young_the_running_and_the_dead_letters()
{
    crate::require_postgres!();
    let app = spawn_app().await;
    let ids = events_of_every_age_and_state(&app).await;
    let env = [("GEMHOOK_DATABASE_URL", app.db.url.as_str())];

    let dry = gemhook_command(&env)
        .args(["prune", "--older-than", "3d", "--dry-run"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dry.stdout).starts_with("1 event(s)"));
    assert_eq!(remaining(&app, &ids).await, [true, true, true, true]);

    gemhook_ok(&env, &["prune", "--older-than", "3d"]);
    assert_eq!(remaining(&app, &ids).await, [false, true, true, true]);
    assert_eq!(
        app.count("jobs").await,
        3,
        "the pruned event's job went with it"
    );

    let explicit = gemhook_command(&env)
        .args(["prune", "--older-than", "3d", "--include-discarded"])
        .output()
        .unwrap();
    assert!(explicit.status.success());
    assert_eq!(remaining(&app, &ids).await, [false, false, true, true]);
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn retention_shorter_than_two_days_is_refused() {
    crate::require_postgres!();
    let db = TestDatabase::create().await;
    let refused_cli = gemhook_command(&[("GEMHOOK_DATABASE_URL", &db.url)])
        .args(["prune", "--older-than", "36h"])
        .output()
        .unwrap();
    let refused_config = gemhook_command(&[
        ("GEMHOOK_DATABASE_URL", &db.url),
        ("GEMHOOK_RETENTION_DAYS", "1"),
    ])
    .arg("serve")
    .output()
    .unwrap();

    assert!(!refused_cli.status.success());
    assert!(String::from_utf8_lossy(&refused_cli.stderr).contains("below 2 days"));
    assert!(!refused_config.status.success());
    assert!(String::from_utf8_lossy(&refused_config.stderr).contains("below 2 days"));
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn the_background_pruner_removes_old_finished_events() {
    crate::require_postgres!();
    let app = spawn_app_with(|f| f.merge(("prune_interval_secs", 1))).await;
    let ids = events_of_every_age_and_state(&app).await;

    for _ in 0..60 {
        if !remaining(&app, &ids).await[0] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Retention is 7 days: the 10-day-old completed one goes, the rest stays.
    assert_eq!(remaining(&app, &ids).await, [false, true, true, true]);
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn events_jobs_and_stats_can_be_filtered_and_summarised() {
    crate::require_postgres!();
    let app = spawn_app().await;
    let batch = unique_id();
    app.post_signed(&batch, &batch_succeeded("f")).await;
    let odd = unique_id();
    app.post_signed(&odd, r#"{"type":"model.tuned"}"#).await;
    sqlx::query("UPDATE jobs SET state = 'discarded', errors = '[{\"error\":\"the server answered 404\"}]'::jsonb WHERE event_id = (SELECT id FROM events WHERE webhook_id = $1)")
        .bind(&batch)
        .execute(&app.pool)
        .await
        .unwrap();
    let env = [("GEMHOOK_DATABASE_URL", app.db.url.as_str())];
    let json = |args: &[&str]| -> Value {
        let output = gemhook_command(&env).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };

    let by_type = json(&["events", "list", "--json", "--type", "batch.succeeded"]);
    let ignored = json(&[
        "events", "list", "--json", "--status", "ignored", "--since", "1h",
    ]);
    let discarded = json(&["jobs", "list", "--json", "--state", "discarded"]);
    let stats = json(&["stats", "--json"]);

    assert_eq!(by_type.as_array().unwrap().len(), 1);
    assert_eq!(by_type[0]["webhook_id"], batch.as_str());
    assert_eq!(ignored[0]["webhook_id"], odd.as_str());
    assert_eq!(discarded[0]["webhook_id"], batch.as_str());
    assert_eq!(stats["jobs"], json!({"available": 1, "discarded": 1}));
    assert_eq!(
        stats["discard_reasons"],
        json!([{"reason": "the server answered 404", "count": 1}])
    );
}
